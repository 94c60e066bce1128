"""Slide-level models; every model maps a padded batch of bags to task outputs.

Input: ``feats`` — {teacher: (M, C_t)}: the real patches of the batch's bags, packed bag after
bag (no padding, so per-patch layers never compute on padding), and ``mask`` — (B, N) bool that
places the M rows in a padded (B, N) layout (``padded[mask] = rows``). Output: dict with
``logits`` (B, n_out) and ``attention`` (B, N); optionally ``aux_loss``.
"""

from .abmil import ABMIL, ConcatABMIL, GatedAttentionPool, build_model
from .shazam import ABLATIONS, Shazam, shazam_settings

__all__ = [
    "ABLATIONS",
    "ABMIL",
    "ConcatABMIL",
    "GatedAttentionPool",
    "Shazam",
    "build_model",
    "shazam_settings",
]
