"""Tile-level (ROI) models: one feature vector per image and teacher (DESIGN §5, tile level).

Input as for slide models, with every bag one image: ``feats`` {``teacher:level``: (B, C_t)}
and ``mask`` (B, 1), which these models ignore. Names: ``mlp-{teacher}`` (single-teacher
baseline), ``concat-mlp`` (early fusion), ``shazam-v1`` (the seed's v1 classifier) and
``shazam-v1-nodistill``.

``shazam-v1``, as in the seed's tutorial::

    [B, C_i] ─mapper_i→ [B, d]  (×T)  ─stack→ [B, T, d] ─attention blocks→ mean → [B, d]
            ─head→ [B, classes]

mapper = Linear → LN → ReLU → Linear → LN → ReLU; head = Linear → ReLU → LN → Linear.
Distillation, per teacher: (1 − cos) + Huber between a projection of the fused vector and the
teacher's own feature vector, L2-normalised and detached (a fixed target, as in the slide
model), weight λ = ``distill_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import cosine_huber
from .registry import StudentSettings as S  # the student's defaults, written once


def mapper(c: int, d: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(c, d), nn.LayerNorm(d), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(d, d), nn.LayerNorm(d), nn.ReLU(), nn.Dropout(dropout),
    )  # fmt: skip


def head(d: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d), nn.Linear(d, n_out))


class TileMLP(nn.Module):
    """Single-teacher baseline: mapper → head on one ``teacher:level`` key."""

    def __init__(self, in_dim: int, n_out: int, key: str, d: int = 128, dropout: float = 0.25):
        super().__init__()
        self.key = key
        self.mapper = mapper(in_dim, d, dropout)
        self.head = head(d, n_out)

    def forward(self, feats: dict[str, torch.Tensor], mask=None) -> dict:
        v = self.mapper(feats[self.key])
        return {"logits": self.head(v), "fused": v}


class ConcatMLP(nn.Module):
    """Early fusion: each teacher's vector layer-normalised, concatenated, mapper → head."""

    def __init__(self, dims: dict[str, int], n_out: int, d: int = 128, dropout: float = 0.25):
        super().__init__()
        self.keys = list(dims)
        self.norms = nn.ModuleList([nn.LayerNorm(c) for c in dims.values()])
        self.mapper = mapper(sum(dims.values()), d, dropout)
        self.head = head(d, n_out)

    def forward(self, feats: dict[str, torch.Tensor], mask=None) -> dict:
        x = torch.cat([n(feats[k]) for n, k in zip(self.norms, self.keys, strict=True)], dim=-1)
        v = self.mapper(x)
        return {"logits": self.head(v), "fused": v}


class ShazamV1(nn.Module):
    """Teachers as tokens: per-teacher mapper, self-attention blocks, mean, head."""

    def __init__(
        self,
        dims: dict[str, int],  # "teacher:level" -> C, one key per teacher
        n_out: int,
        d: int = 128,
        layers: int = S.layers,
        heads: int = S.heads,
        feed_forward: bool = S.feed_forward,
        dropout: float = 0.25,
        distill_weight: float = S.distill_weight,
    ):
        super().__init__()
        self.keys = list(dims)
        self.distill_weight = distill_weight
        self.mappers = nn.ModuleList([mapper(c, d, dropout) for c in dims.values()])
        self.blocks = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                d, heads, 2 * d if feed_forward else d, dropout, batch_first=True
            ),
            layers,
            enable_nested_tensor=False,
        )
        self.head = head(d, n_out)
        # fused vector -> each teacher's own feature space (distillation)
        self.distill = nn.ModuleList([nn.Linear(d, c) for c in dims.values()])

    def forward(self, feats: dict[str, torch.Tensor], mask=None) -> dict:
        tokens = torch.stack(
            [m(feats[k]) for m, k in zip(self.mappers, self.keys, strict=True)], dim=1
        )  # (B, T, d)
        fused = self.blocks(tokens).mean(dim=1)  # (B, d)
        out = {"logits": self.head(fused), "tokens": tokens, "fused": fused}
        if self.distill_weight > 0:
            losses = [
                cosine_huber(p(fused), F.normalize(feats[k].float(), dim=-1).detach())
                for p, k in zip(self.distill, self.keys, strict=True)
            ]
            out["aux_loss"] = self.distill_weight * torch.stack(losses).mean()
        return out
