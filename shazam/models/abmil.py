"""Gated attention-MIL (Ilse et al. 2018) and the early-fusion (concat) baseline."""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionPool(nn.Module):
    """score = w · (tanh(V h) ⊙ sigmoid(U h)); softmax over the bag's real patches; Σ a h."""

    def __init__(self, d: int, d_att: int | None = None, dropout: float = 0.0):
        super().__init__()
        d_att = d_att or d
        self.V = nn.Linear(d, d_att)
        self.U = nn.Linear(d, d_att)
        self.w = nn.Linear(d_att, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.w(self.drop(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))).squeeze(-1)
        a = a.float().masked_fill(~mask, float("-inf"))
        a = torch.softmax(a, dim=1)
        a = torch.nan_to_num(a)  # an empty bag (all masked) pools to zeros
        return torch.einsum("bn,bnd->bd", a.to(h.dtype), h), a


def unpack(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Packed per-patch rows (M, d) → padded (B, N, d) with zeros where ``mask`` is False."""
    if rows.shape[0] == mask.numel():  # no padding (e.g. equal subsampled bags): a view
        return rows.view(*mask.shape, rows.shape[-1])
    out = rows.new_zeros(*mask.shape, rows.shape[-1])
    out[mask] = rows
    return out


class ABMIL(nn.Module):
    """projection Linear(C → d) + ReLU + dropout → gated attention pooling → head."""

    def __init__(
        self, in_dim: int, n_out: int, d: int = 128, dropout: float = 0.25, key: str | None = None
    ):
        super().__init__()
        self.key = key  # which "teacher:level" of a batch to read (None: the only one)
        self.proj = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(), nn.Dropout(dropout))
        self.pool = GatedAttentionPool(d, d, dropout)
        self.head = nn.Linear(d, n_out)

    def embed(self, x: torch.Tensor, mask: torch.Tensor):
        # project the packed rows, then pad the d-wide result (cheap) for pooling
        return self.pool(unpack(self.proj(x), mask), mask)

    def forward(self, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> dict:
        if self.key is not None:
            x = feats[self.key]
        else:
            (x,) = feats.values()
        v, a = self.embed(x, mask)
        return {"logits": self.head(v), "attention": a, "slide": v}


class ConcatABMIL(ABMIL):
    """Early fusion: each teacher's patch features normalised (LayerNorm), concatenated per
    patch, then one ABMIL."""

    def __init__(self, dims: dict[str, int], n_out: int, d: int = 128, dropout: float = 0.25):
        super().__init__(sum(dims.values()), n_out, d, dropout)
        self.keys = list(dims)
        # one LayerNorm per teacher, in the order of `keys` (ModuleDict keys cannot hold '.')
        self.norms = nn.ModuleList([nn.LayerNorm(c) for c in dims.values()])

    def forward(self, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> dict:
        x = torch.cat([n(feats[k]) for n, k in zip(self.norms, self.keys, strict=True)], dim=-1)
        v, a = self.embed(x, mask)
        return {"logits": self.head(v), "attention": a, "slide": v}


def build_model(name: str, dims: dict[str, int], n_out: int, d: int = 128, dropout: float = 0.25):
    """``abmil-{teacher}`` or ``concat`` from dims keyed ``teacher:high``."""
    high = {k: v for k, v in dims.items() if k.endswith(":high")}
    if name.startswith("abmil-"):
        k = f"{name[len('abmil-') :]}:high"
        return ABMIL(high[k], n_out, d, dropout, key=k)
    if name == "concat":
        return ConcatABMIL(high, n_out, d, dropout)
    raise ValueError(f"unknown model '{name}' (abmil-<teacher> or concat)")
