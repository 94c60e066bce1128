"""Slide-level models; every model maps a padded batch of bags to task outputs. Tile-level
(ROI) models, whose bags are single images, live in :mod:`shazam.models.tile`.

Input: ``feats`` — {teacher: (M, C_t)}: the real patches of the batch's bags, packed bag after
bag (no padding, so per-patch layers never compute on padding), and ``mask`` — (B, N) bool that
places the M rows in a padded (B, N) layout (``padded[mask] = rows``). Output: dict with
``logits`` (B, n_out) and ``attention`` (B, N); optionally ``aux_loss``.
"""

from .abmil import ABMIL, ConcatABMIL, GatedAttentionPool, build_model
from .shazam import ABLATIONS, Shazam, shazam_settings
from .tile import ConcatMLP, ShazamV1, TileMLP, build_tile_model, tile_model_names

__all__ = [
    "ABLATIONS",
    "ABMIL",
    "ConcatABMIL",
    "ConcatMLP",
    "GatedAttentionPool",
    "Shazam",
    "ShazamV1",
    "TileMLP",
    "build_model",
    "build_tile_model",
    "shazam_settings",
    "tile_model_names",
]
