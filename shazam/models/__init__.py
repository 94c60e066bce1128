"""Slide-level models; every model maps a padded batch of bags to task outputs.

Input: ``feats`` — {teacher: (B, N, C_t) float tensor} (one level), ``mask`` — (B, N) bool
(True = a real patch). Output: dict with ``logits`` (B, n_out) and ``attention`` (B, N).
"""

from .abmil import ABMIL, ConcatABMIL, GatedAttentionPool, build_model

__all__ = ["ABMIL", "ConcatABMIL", "GatedAttentionPool", "build_model"]
