"""The Shazam student: multi-teacher, multi-level fusion with a gate and feature distillation.

Per teacher t and level l: projection + gated ABMIL → slide vector v[t, l] ∈ R^d. Per level, a
gate (MLP over the concatenated teacher vectors → softmax over teachers) scales each teacher's
token by T·w_t (uniform weights = 1), and the scaled tokens go straight into post-norm
self-attention blocks, so the weights change what attention sees. (The seed multiplied by the
weight and then applied a LayerNorm, which removes any positive scale: its gate had no
effect. ``gate_arrangement="seed_layernorm"`` reproduces that for the test that proves it.)
Mean over tokens gives s[l]; hierarchical residual low → mid → high with learned α, β; the head
reads the top level.

Distillation, per level and teacher: (1 − cos) + Huber between a learned projection of the
student's fused vector at that level and a fixed target — the teacher's own mean-pooled patch
features for the bag, L2-normalised and detached (``distill_target="teacher"``), or the seed's
agreement term: the per-teacher student vectors v[t, l], not detached (``"agreement"``).

``forward_chunks`` runs one bag given as row chunks (evaluation of very large bags): every
per-patch part streams (projection + pooling by the online softmax, the teacher targets' float32
row sums), and the code after pooling, shared with ``forward``, runs once on the pooled vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import cosine_huber
from .abmil import Dropout, GatedAttentionPool, unpack
from .registry import StudentSettings as S  # the student's defaults, written once

LEVEL_ORDER = ("low", "mid", "high")


def bag_means(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per bag, the float32 mean of its packed rows (M, C) → (B, C): bag b's rows are contiguous,
    as many as ``mask[b]`` holds, and are converted to float32 one bag at a time."""
    n = mask.sum(1)
    sums = [row_sum(r) for r in rows.split(n.tolist())]
    return torch.stack(sums) / n.clamp_min(1).unsqueeze(1)


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """(C,) float32 sum of the rows of x (n, C), 256 rows at a time: on the CPU one column
    reduction over a tall matrix runs 5x slower than pieces that stay in cache (measured on
    4,096 × 2,560 bf16: 30 ms vs 5.7 ms, the same float32 sums)."""
    total = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    for piece in x.split(256):
        total += piece.float().sum(0)
    return total


class Shazam(nn.Module):
    def __init__(
        self,
        dims: dict[str, int],  # "teacher:level" -> C
        teachers: list[str],
        levels: list[str],
        n_out: int,
        d: int = 128,
        layers: int = S.layers,
        heads: int = S.heads,
        feed_forward: bool = S.feed_forward,
        dropout: float = 0.25,
        gate: bool = S.gate,
        distill_weight: float = S.distill_weight,
        distill_target: str = S.distill_target,
        gate_arrangement: str = "pre_attention",
    ):
        super().__init__()
        if distill_target not in ("teacher", "agreement"):
            raise ValueError(f"distill_target must be teacher or agreement: {distill_target}")
        self.teachers = list(teachers)
        self.levels = [lv for lv in LEVEL_ORDER if lv in levels]
        self.gate_on, self.distill_weight = gate, distill_weight
        self.distill_target, self.gate_arrangement = distill_target, gate_arrangement
        T = len(self.teachers)
        self.keys = [f"{t}:{lv}" for lv in self.levels for t in self.teachers]  # _idx order
        self.proj = nn.ModuleList()
        self.pool = nn.ModuleList()
        for lv in self.levels:
            for t in self.teachers:
                c = dims[f"{t}:{lv}"]
                self.proj.append(nn.Sequential(nn.Linear(c, d), nn.ReLU(), Dropout(dropout)))
                self.pool.append(GatedAttentionPool(d, d, dropout))
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(T * d, d), nn.ReLU(), nn.Linear(d, T)) for _ in self.levels
        )
        self.seed_norm = nn.LayerNorm(d)  # only used by the seed's arrangement
        ff = 2 * d if feed_forward else d
        self.attn = nn.ModuleList(
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    d, heads, ff, dropout, batch_first=True, norm_first=False
                ),
                layers,
                enable_nested_tensor=False,
            )
            for _ in self.levels
        )
        self.res_norm = nn.ModuleList(nn.LayerNorm(d) for _ in self.levels[1:])
        self.res_coef = nn.Parameter(torch.full((max(len(self.levels) - 1, 1),), 0.5))
        self.head = nn.Linear(d, n_out)
        # distillation heads: student fused vector at level l -> target space of teacher t
        self.distill = nn.ModuleList()
        for lv in self.levels:
            for t in self.teachers:
                out = dims[f"{t}:{lv}"] if distill_target == "teacher" else d
                self.distill.append(nn.Linear(d, out))
        self._dims = dims

    def _idx(self, li: int, ti: int) -> int:
        return li * len(self.teachers) + ti

    def forward(self, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> dict:
        vecs, attention = self._pool(feats, mask)
        return self._outputs(vecs, attention, lambda k: bag_means(feats[k], mask))

    @torch.no_grad()
    def forward_chunks(self, chunks: Iterable[dict[str, torch.Tensor]]) -> dict:
        """``forward`` of one bag (B = 1) given as row chunks (consumed once), holding no (N, d)
        or (N, C) tensor of the whole bag. For evaluation (``eval()``: dropout off); no autograd."""
        streams = [p.stream() for p in self.pool]
        summed = self.distill_weight > 0 and self.distill_target == "teacher"
        w = self.head.weight
        sums = {k: w.new_zeros(self._dims[k], dtype=torch.float32) for k in self.keys if summed}
        n = 0
        for chunk in chunks:
            for i, k in enumerate(self.keys):
                streams[i].update(self.proj[i](chunk[k]))
                if summed:
                    sums[k] += row_sum(chunk[k])
            n += len(chunk[self.keys[0]])
        vecs, attention = self._levels([s.end() for s in streams])
        return self._outputs(vecs, attention, lambda k: (sums[k] / max(n, 1)).unsqueeze(0))

    def _pool(self, feats, mask):
        pooled = [
            self.pool[i](unpack(self.proj[i](feats[k]), mask), mask)
            for i, k in enumerate(self.keys)
        ]
        return self._levels(pooled)

    def _levels(self, pooled):
        """(v, a) per (level, teacher) → per level the (B, T, d) slide vectors v[t, l], and the
        first teacher's top-level attention map."""
        T = len(self.teachers)
        vecs = [torch.stack([v for v, _ in pooled[i : i + T]], 1) for i in range(0, len(pooled), T)]
        return vecs, pooled[-T][1]

    def _outputs(self, vecs, attention, mean: Callable) -> dict:
        """Everything after pooling (``forward``'s and ``forward_chunks``'s); ``mean(key)``: the
        (B, C) float32 mean of a teacher's patch features per bag (teacher targets)."""
        fused, gates = self._fuse(vecs)
        out = {"logits": self.head(fused[-1]), "attention": attention, "gate": gates[-1]}
        if self.distill_weight > 0:
            out["aux_loss"] = self.distill_weight * self.distillation(fused, vecs, mean)
        return out

    def _fuse(self, vecs):
        """Per level, from the (B, T, d) slide vectors: the fused vectors s[l] (after the
        residual) and the gate weights."""
        T = len(self.teachers)
        fused, gates = [], []
        for li, v in enumerate(vecs):
            if self.gate_on:
                w = torch.softmax(self.gates[li](v.flatten(1)).float(), dim=-1)
            else:
                w = torch.full(v.shape[:2], 1.0 / T, device=v.device)
            gates.append(w)  # reported in float32, whatever the autocast dtype
            tokens = v * (w * T).unsqueeze(-1).to(v.dtype)
            if self.gate_arrangement == "seed_layernorm":
                tokens = self.seed_norm(tokens)  # the seed's defect: cancels the gate's scale
            s = self.attn[li](tokens).mean(dim=1)
            if fused:
                s = self.res_norm[li - 1](s + self.res_coef[li - 1] * fused[-1])
            fused.append(s)
        return fused, gates

    def distillation_targets(self, feats, mask, vecs, li: int, ti: int) -> torch.Tensor:
        return self._target(vecs, li, ti, lambda k: bag_means(feats[k], mask))

    def _target(self, vecs, li: int, ti: int, mean: Callable) -> torch.Tensor:
        """The distillation target of level li, teacher ti; ``mean(key)``: the (B, C) float32
        mean of that teacher's patch features per bag."""
        if self.distill_target == "agreement":
            return vecs[li][:, ti]  # the seed's: the student's own trainable vector
        return F.normalize(mean(self.keys[self._idx(li, ti)]), dim=-1).detach()

    def _distill_pairs(self, fused, vecs, mean: Callable):
        """(level index, teacher index, projected student vector, normalised target); the loss
        (``cosine_huber``) normalises the projection."""
        for li in range(len(self.levels)):
            for ti in range(len(self.teachers)):
                p = self.distill[self._idx(li, ti)](fused[li])
                tgt = self._target(vecs, li, ti, mean).float()
                if self.distill_target == "agreement":
                    tgt = F.normalize(tgt, dim=-1)
                yield li, ti, p, tgt

    def distillation(self, fused, vecs, mean: Callable) -> torch.Tensor:
        pairs = self._distill_pairs(fused, vecs, mean)
        losses = [cosine_huber(p, tgt) for _, _, p, tgt in pairs]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def distill_cosine(self, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(levels, teachers): mean over the batch of the cosine between each distillation
        target and the student's projection of its fused vector — what the distillation term
        raises (computed whatever ``distill_weight`` is, to show that it does)."""
        vecs, _ = self._pool(feats, mask)
        fused, _ = self._fuse(vecs)
        out = torch.zeros(len(self.levels), len(self.teachers))
        pairs = self._distill_pairs(fused, vecs, lambda k: bag_means(feats[k], mask))
        for li, ti, p, tgt in pairs:
            out[li, ti] = F.cosine_similarity(p, tgt, dim=-1).mean()
        return out
