"""Gated attention-MIL (Ilse et al. 2018) and the early-fusion (concat) baseline.

``forward`` pools padded batches; ``forward_chunks`` runs one bag given as row chunks, for
evaluation over bags too large to hold: :class:`PoolStream` pools by the online (streaming)
softmax, so no (N, d) tensor of the whole bag exists — only its N attention scores."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``, with a cheaper mask on CPU.

    PyTorch's CPU dropout draws one Bernoulli variable per element (``bernoulli_``, ~6 ns
    each): on a batch of 8 bags × 4,096 patches that was 40% of an ABMIL training step. Here
    each element gets 16 uniform random bits instead (four per 64-bit draw of the same
    generator, seeded by ``torch.manual_seed``) and is kept when they are ≥ p·2¹⁶: the keep
    probability is 1 − p to within 2⁻¹⁶ (exact for p = 0.25, 0.5, …), kept elements are scaled
    by 1 / (1 − p). On CUDA, and in eval mode, it is ``F.dropout``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        u16 = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-2^15, 2^15)
        keep = u16 >= round(self.p * 65536) - 32768
        # bool -> float conversion is slow on CPU, uint8 -> float is not (same bytes)
        return x * keep.view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GatedAttentionPool(nn.Module):
    """score = w · (tanh(V h) ⊙ sigmoid(U h)); softmax over the bag's real patches; Σ a h."""

    def __init__(self, d: int, d_att: int | None = None, dropout: float = 0.0):
        super().__init__()
        d_att = d_att or d
        self.V = nn.Linear(d, d_att)
        self.U = nn.Linear(d, d_att)
        self.w = nn.Linear(d_att, 1)
        self.drop = Dropout(dropout)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """The attention score of each row of h (..., d) → (...,), float32."""
        g = torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))
        return self.w(self.drop(g)).squeeze(-1).float()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.score(h).masked_fill(~mask, float("-inf"))
        a = torch.softmax(a, dim=1)
        a = torch.nan_to_num(a)  # an empty bag (all masked) pools to zeros
        return torch.einsum("bn,bnd->bd", a.to(h.dtype), h), a

    def stream(self) -> PoolStream:
        """An accumulator pooling one bag chunk by chunk, as ``forward`` pools it."""
        return PoolStream(self)


class PoolStream:
    """One bag's gated attention pooling over row chunks by the online softmax: the running max
    m of the scores, s = Σ exp(a − m) and Σ exp(a − m)·h in float32 (both rescaled when m
    grows), and the raw score of every row (N floats) for the normalised attention at the end.
    ``update`` each chunk's projected rows h (n, d), then ``end``."""

    def __init__(self, pool: GatedAttentionPool):
        self.pool, self.scores = pool, []
        self.m = self.s = self.acc = self.dtype = None

    def update(self, h: torch.Tensor) -> None:
        a = self.pool.score(h)
        self.scores.append(a)
        self.dtype = h.dtype
        if not len(a):
            return
        m = a.max() if self.m is None else torch.maximum(self.m, a.max())
        e = torch.exp(a - m)
        part = (e.unsqueeze(1) * h).sum(0)  # float32 (e is), whatever h's dtype
        if self.m is None:
            self.s, self.acc = e.sum(), part
        else:
            r = torch.exp(self.m - m)
            self.s, self.acc = self.s * r + e.sum(), self.acc * r + part
        self.m = m

    def end(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled vector (1, d) in h's dtype — zeros for an empty bag, attention (1, N)
        float32), as ``GatedAttentionPool.forward`` gives for a one-bag batch."""
        w = self.pool.V.weight
        if self.acc is None:  # no rows
            v = w.new_zeros(1, w.shape[1], dtype=self.dtype or w.dtype)
        else:
            v = (self.acc / self.s).to(self.dtype).unsqueeze(0)
        a = torch.cat(self.scores) if self.scores else w.new_zeros(0, dtype=torch.float32)
        return v, torch.softmax(a, dim=0).unsqueeze(0)


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
        self.proj = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(), Dropout(dropout))
        self.pool = GatedAttentionPool(d, d, dropout)
        self.head = nn.Linear(d, n_out)

    def rows(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-patch input rows of a batch's (or a chunk's) features."""
        if self.key is not None:
            return feats[self.key]
        (x,) = feats.values()
        return x

    def forward(self, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> dict:
        # project the packed rows, then pad the d-wide result (cheap) for pooling
        v, a = self.pool(unpack(self.proj(self.rows(feats)), mask), mask)
        return {"logits": self.head(v), "attention": a, "slide": v}

    @torch.no_grad()
    def forward_chunks(self, chunks: Iterable[dict[str, torch.Tensor]]) -> dict:
        """``forward`` of one bag (B = 1) given as row chunks (consumed once), holding no
        (N, d) tensor of the whole bag. For evaluation (``eval()``: dropout off); no autograd."""
        stream = self.pool.stream()
        for chunk in chunks:
            stream.update(self.proj(self.rows(chunk)))
        v, a = stream.end()
        return {"logits": self.head(v), "attention": a, "slide": v}


class ConcatABMIL(ABMIL):
    """Early fusion: each teacher's patch features normalised (LayerNorm), concatenated per
    patch, then one ABMIL."""

    def __init__(self, dims: dict[str, int], n_out: int, d: int = 128, dropout: float = 0.25):
        super().__init__(sum(dims.values()), n_out, d, dropout)
        self.keys = list(dims)
        # one LayerNorm per teacher, in the order of `keys` (ModuleDict keys cannot hold '.')
        self.norms = nn.ModuleList([nn.LayerNorm(c) for c in dims.values()])

    def rows(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([n(feats[k]) for n, k in zip(self.norms, self.keys, strict=True)], -1)
