"""Task losses and survival bins."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def survival_bins(train_time, train_event, n_bins: int) -> np.ndarray:
    """Bin edges (n_bins + 1) from quantiles of the **training** cases' uncensored times;
    the outer edges are 0 and +inf so every val/test time falls in a bin."""
    t = np.asarray(train_time, float)[np.asarray(train_event, bool)]
    if len(t) == 0:
        raise ValueError("no uncensored training times to place survival bins")
    inner = np.quantile(t, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.concatenate([[0.0], inner, [np.inf]])


def bin_index(time, edges: np.ndarray) -> np.ndarray:
    """Discrete time label of each case: index of its bin (0 … n_bins − 1)."""
    return np.clip(
        np.searchsorted(edges[1:-1], np.asarray(time, float), side="right"), 0, len(edges) - 2
    )


def nll_survival(logits: torch.Tensor, y: torch.Tensor, event: torch.Tensor, alpha: float = 0.4):
    """Discrete-time survival negative log-likelihood (Zadeh & Shmoys 2020, as in the seed):
    hazards h = σ(logits), S_k = Π_{j≤k} (1 − h_j); an event in bin y contributes
    −log S_{y−1} − log h_y, a case censored in bin y contributes −log S_y; the uncensored part
    is up-weighted by α: loss = (1 − α) · nll + α · nll_uncensored."""
    eps = 1e-7
    h = torch.sigmoid(logits.float())
    s = torch.cumprod(1 - h, dim=1)
    s_pad = torch.cat([torch.ones_like(s[:, :1]), s], dim=1)  # S_{-1} = 1
    y = y.long().view(-1, 1)
    c = (~event.bool()).float().view(-1, 1)  # 1 = censored
    s_prev = s_pad.gather(1, y).clamp_min(eps)
    h_y = h.gather(1, y).clamp_min(eps)
    s_y = s_pad.gather(1, y + 1).clamp_min(eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_y))
    censored = -c * torch.log(s_y)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def survival_from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hazards, survival per bin, risk = −Σ S)."""
    h = torch.sigmoid(logits.float())
    s = torch.cumprod(1 - h, dim=1)
    return h, s, -s.sum(dim=1)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
    return F.cross_entropy(logits.float(), y.long(), weight=weight)


def cosine_huber(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 − cos) + Huber between the L2-normalised prediction and an L2-normalised target
    (fixed, i.e. detached, unless the caller means otherwise); both (B, C)."""
    p = F.normalize(pred.float(), dim=-1)
    cos = F.cosine_similarity(p, target, dim=-1)
    return (1 - cos).mean() + F.huber_loss(p, target)
