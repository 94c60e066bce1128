"""Case-level feature bags held in memory as float16, batched as packed rows + a mask.

A case's bag is the union of its slides' patches. When several teachers are used together the
bag keeps the patches every teacher has (normally all of them: the teachers read the same
patch file; a patch skipped as unreadable for one teacher is dropped for all).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch

from .extraction import LEVEL_DATASET


class BagStore:
    """``bags[case][teacher]`` = float16 tensor (N, C) of one level, rows aligned across
    teachers."""

    def __init__(
        self,
        sheet,
        teachers: list[str],
        cases,
        level: str = "high",
        root: str | os.PathLike = "results",
    ):
        self.teachers = list(teachers)
        self.level = level
        self.bags: dict[str, dict[str, torch.Tensor]] = {}
        self.dims: dict[str, int] = {}
        wanted = set(cases)
        by_case: dict[str, list[str]] = {}
        for cid, sid in zip(sheet["case_id"], sheet["slide_id"], strict=True):
            if cid in wanted:
                by_case.setdefault(cid, []).append(sid)
        missing = sorted(wanted - set(by_case))
        if missing:
            raise ValueError(f"cases without slides in the sheet: {', '.join(missing[:5])}")
        for cid in sorted(by_case):
            parts: dict[str, list[np.ndarray]] = {t: [] for t in self.teachers}
            for sid in sorted(by_case[cid]):
                per_t = {}
                for t in self.teachers:
                    path = os.path.join(root, "features", t, f"{sid}.h5")
                    with h5py.File(path, "r") as f:
                        per_t[t] = (f[LEVEL_DATASET[level]][:], f["coords"][:])
                        self.dims.setdefault(t, f[LEVEL_DATASET[level]].shape[1])
                for t, rows in _align(per_t).items():
                    parts[t].append(rows)
            self.bags[cid] = {
                t: torch.from_numpy(
                    np.concatenate(p).astype(np.float16)
                    if p
                    else np.zeros((0, self.dims.get(t, 1)), np.float16)
                )
                for t, p in parts.items()
            }

    def size(self, case: str) -> int:
        return int(next(iter(self.bags[case].values())).shape[0])

    def batch(
        self,
        cases: list[str],
        max_patches: int | None = None,
        rng: np.random.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Packed float32 features {teacher: (M, C)} — the real patches of all bags, bag after
        bag, no padding — and the mask (B, N) that places them (row-major) in a padded batch.
        With ``max_patches`` and ``rng``, larger bags are randomly subsampled (training)."""
        rows = []
        for c in cases:
            n = self.size(c)
            if max_patches and n > max_patches and rng is not None:
                rows.append(torch.from_numpy(np.sort(rng.choice(n, max_patches, replace=False))))
            else:
                rows.append(None)
        lens = [len(r) if r is not None else self.size(c) for c, r in zip(cases, rows, strict=True)]
        mask = torch.arange(max(max(lens), 1))[None, :] < torch.tensor(lens)[:, None]
        feats = {}
        for t in self.teachers:
            parts = [
                self.bags[c][t] if r is None else self.bags[c][t][r]
                for c, r in zip(cases, rows, strict=True)
            ]
            feats[t] = torch.cat(parts).to(device, non_blocking=True).float()
        return feats, mask.to(device)


def _align(per_teacher: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of each teacher for the patches all teachers have, in the first teacher's order."""
    teachers = list(per_teacher)
    first = per_teacher[teachers[0]][1]
    if all(np.array_equal(per_teacher[t][1], first) for t in teachers[1:]):
        return {t: per_teacher[t][0] for t in teachers}
    keys = {t: {tuple(xy): i for i, xy in enumerate(per_teacher[t][1].tolist())} for t in teachers}
    common = [tuple(xy) for xy in first.tolist() if all(tuple(xy) in keys[t] for t in teachers)]
    return {t: per_teacher[t][0][[keys[t][k] for k in common]] for t in teachers}
