"""Models. :mod:`shazam.models.registry` owns every model name and builds any of them (no torch
import until a network is built); :mod:`~shazam.models.abmil` and :mod:`~shazam.models.shazam`
hold the slide-level networks, :mod:`~shazam.models.tile` the tile-level (ROI) ones.

Slide-level input: ``feats`` — {"teacher:level": (M, C)}: the real patches of the batch's bags,
packed bag after bag (no padding, so per-patch layers never compute on padding), and ``mask`` —
(B, N) bool that places the M rows in a padded (B, N) layout (``padded[mask] = rows``). Output:
dict with ``logits`` (B, n_out) and ``attention`` (B, N); optionally ``aux_loss``.
"""
