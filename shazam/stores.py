"""Feature stores: what the training engine reads, held in memory as 16-bit floats.

One interface, :class:`FeatureStore` (eva's idea: one abstract base that owns the contract, one
subclass per kind of data), two stores:

* :class:`BagStore` — slide tasks: a case's bag is the union of its slides' patches, batched
  as packed rows + a mask. When several teachers are used together the bag keeps the patches
  every teacher has (normally all of them: the teachers read the same patch file; a patch
  skipped as unreadable for one teacher is dropped for all).
* :class:`TileStore` — tile tasks: one vector per ROI image; an image is a bag of one.

``Store.for_task`` opens the store of a :class:`~shazam.tasks.TaskSpec` (the paths come from
:mod:`shazam.layout`). Features are read as float16; an engine that computes in bf16 converts
its store to bfloat16 once (same memory) so that batches need no conversion.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np
import pandas as pd
import torch

from . import layout
from .formats import read_bag_part, read_tile_features
from .tasks import TaskSpec


def key(teacher: str, level: str) -> str:
    """Name of one teacher's level in batches and dims: ``teacher:level``."""
    return f"{teacher}:{level}"


class Standardizer:
    """Per-dimension z-scoring of each ``teacher:level`` with the mean and SD of the **training**
    rows only (every patch of every training bag; every training image of a tile task).

    Foundation-model embeddings carry a large offset shared by every patch (on the demo's
    teachers the mean vector's norm is 4-10x the spread around it). Raw, that offset dominates
    every projection unit's pre-activation, so with Adam whole ReLU layers go silent within a
    few epochs on a small cohort and the model never learns; centred and scaled, the signal is
    what the units see. The statistics travel with the weights (``input_scaler.*`` tensors in
    ``model.safetensors``) so the same transform applies to any new slide."""

    def __init__(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]], ids: tuple = ()):
        self.stats = stats  # key -> (mean, sd), float32 (C,)
        self.ids = ids  # the training ids the statistics come from

    @classmethod
    def fit(cls, chunks, keys, ids: list[str]) -> Standardizer:
        """``chunks(ids, key)`` yields the training rows in (n, C) pieces; moments accumulate
        in float64 piece by piece (no second copy of the data)."""
        stats = {}
        for k in keys:
            n, s, ss = 0, None, None
            for x in chunks(ids, k):
                x = x.double()
                if not len(x):
                    continue
                s = x.sum(0) if s is None else s + x.sum(0)
                ss = (x * x).sum(0) if ss is None else ss + (x * x).sum(0)
                n += len(x)
            if n < 2:
                raise ValueError(
                    f"cannot standardise {k}: {n} training row(s); a fold needs training "
                    "cases with patches (or set training.standardize: false)"
                )
            mean = s / n
            var = (ss / n - mean * mean).clamp_min(0) * (n / (n - 1))
            # a constant dimension keeps its scale (sd 1) instead of blowing up
            sd = torch.where(var.sqrt() > 1e-6, var.sqrt(), torch.ones_like(var))
            stats[k] = (mean.float(), sd.float())
        return cls(stats, tuple(sorted(ids)))

    def apply(self, k: str, x: torch.Tensor) -> torch.Tensor:
        mean, sd = self.stats[k]
        return ((x.float() - mean) / sd).to(x.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """For ``model.safetensors``: ``input_scaler.{key}.mean`` / ``.sd``."""
        out = {}
        for k, (mean, sd) in self.stats.items():
            out[f"{SCALER_PREFIX}{k}.mean"] = mean.contiguous()
            out[f"{SCALER_PREFIX}{k}.sd"] = sd.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Standardizer | None:
        keys = sorted(
            {
                n[len(SCALER_PREFIX) :].rsplit(".", 1)[0]
                for n in tensors
                if n.startswith(SCALER_PREFIX)
            }
        )
        if not keys:
            return None
        return cls(
            {
                k: (tensors[f"{SCALER_PREFIX}{k}.mean"], tensors[f"{SCALER_PREFIX}{k}.sd"])
                for k in keys
            }
        )


SCALER_PREFIX = "input_scaler."


def split_checkpoint(tensors: dict[str, torch.Tensor]):
    """``model.safetensors`` → (the model's state dict, its :class:`Standardizer` or None)."""
    state = {n: v for n, v in tensors.items() if not n.startswith(SCALER_PREFIX)}
    return state, Standardizer.from_tensors(tensors)


def standardize_store(store, ids: list[str]) -> Standardizer:
    """Z-score a store's features in place with the statistics of ``ids`` (its training items)
    — once: a second call with the same ids returns the same transform, other ids are refused
    (the store would be standardised twice)."""
    done = getattr(store, "standardizer", None)
    if done is not None:
        if done.ids != tuple(sorted(ids)):
            raise ValueError(
                "this feature store was standardised with other training cases; build one "
                "store per fold"
            )
        return done
    sc = Standardizer.fit(store.chunks, store.keys, list(ids))
    store.apply_standardizer(sc)
    store.standardizer = sc
    return sc


class FeatureStore(ABC):
    """What the training engine (and the standardisation) needs of a store of features.

    Items (cases of a slide task, images of a tile task) are named by id. Features are kept per
    ``teacher:level`` key (:func:`key`), 16-bit, rows aligned across keys.

    Attributes: ``keys`` (every ``teacher:level``, teacher-major), ``teachers``, ``levels``,
    ``dims`` (``key`` → feature width) and ``standardizer`` (set once by
    :func:`standardize_store`)."""

    keys: list[str]
    teachers: list[str]
    levels: tuple[str, ...]
    dims: dict[str, int]
    standardizer: Standardizer | None = None

    def _set_keys(self, keys) -> None:
        """``keys`` and the ``teachers`` and ``levels`` they name, in first-seen order."""
        self.keys = list(keys)
        self.teachers = list(dict.fromkeys(k.split(":")[0] for k in self.keys))
        self.levels = tuple(dict.fromkeys(k.split(":")[1] for k in self.keys))

    @classmethod
    @abstractmethod
    def for_task(
        cls,
        spec: TaskSpec,
        teachers: list[str],
        root: str | os.PathLike = layout.RESULTS,
        levels=("high",),
        sheet: pd.DataFrame | None = None,
        cases=None,
    ) -> tuple[FeatureStore, pd.DataFrame]:
        """(the store of ``spec``'s features of ``teachers`` under ``root``, the frame of the
        rows it was built from). Slide tasks need the ``sheet`` and the ``cases`` to load."""

    @abstractmethod
    def size(self, item: str) -> int:
        """Feature rows of one item (patches of a case's bag; 1 for an image)."""

    @abstractmethod
    def chunks(self, ids: list[str], k: str):
        """The rows of ``ids`` for one key, as (n, C) pieces (the standardisation's input)."""

    @abstractmethod
    def apply_standardizer(self, sc: Standardizer) -> None:
        """Transform every row in place (computed in float32, kept in the store's dtype)."""

    @abstractmethod
    def to_dtype(self, dtype: torch.dtype) -> FeatureStore:
        """Convert the features in place, e.g. to bfloat16 once for an engine that computes in
        bf16, instead of once per batch; returns the store."""

    @abstractmethod
    def batch(
        self,
        ids: list[str],
        max_patches: int | None = None,
        rng: np.random.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        reuse: bool = False,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Packed features {key: (M, C)} in ``dtype`` on ``device`` — the rows of every item,
        item after item, no padding — and the mask (B, N) that places them (row-major) in a
        padded batch. ``max_patches`` + ``rng``: subsample larger items (training). ``reuse``:
        the returned tensors may live in buffers kept by the store, overwritten by the next
        ``reuse`` call (a training loop that finishes each step before asking for the next)."""

    def _deliver(self, k: str, rows: torch.Tensor, device, dtype: torch.dtype, reuse: bool):
        """One key's gathered rows on ``device`` in ``dtype``; with ``reuse`` a conversion on
        the CPU goes into a kept buffer too (e.g. float16 rows for an fp32 step: 200 MB fresh
        pages per step otherwise)."""
        rows = rows.to(device, non_blocking=True)
        if reuse and rows.dtype != dtype and rows.device.type == "cpu":
            return self._buffer(k, tuple(rows.shape), dtype, True).copy_(rows)
        return rows.to(dtype)

    def _buffer(self, k: str, shape: tuple[int, int], dtype: torch.dtype, reuse: bool):
        """An uninitialised (rows, C) tensor: new, or the front of a kept buffer per key and
        dtype, grown when a batch needs more rows."""
        if not reuse:
            return torch.empty(shape, dtype=dtype)
        bufs = self.__dict__.setdefault("_buffers", {})
        buf = bufs.get((k, dtype))
        if buf is None or buf.shape[0] < shape[0]:
            buf = bufs[(k, dtype)] = torch.empty(shape, dtype=dtype)
        return buf[: shape[0]]


class BagStore(FeatureStore):
    """``bags[case]["teacher:level"]`` = 16-bit tensor (N, C), rows aligned across teachers
    (and levels, which share their teacher's rows)."""

    def __init__(
        self,
        sheet,
        teachers: list[str],
        cases,
        levels=("high",),
        root: str | os.PathLike = "results",
    ):
        self.teachers = list(teachers)
        self.levels = tuple(levels)
        self.keys = [key(t, lv) for t in self.teachers for lv in self.levels]
        self.bags: dict[str, dict[str, torch.Tensor]] = {}
        self.dims: dict[str, int] = {}
        by_case = _slides_by_case(sheet, cases)
        for cid in sorted(by_case):
            parts: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}
            for sid in sorted(by_case[cid]):
                for t, rows in _align(self._read_slide(sid, root)).items():
                    for lv in self.levels:
                        parts[key(t, lv)].append(rows[lv])
            self.bags[cid] = {
                k: torch.from_numpy(
                    np.concatenate(p).astype(np.float16)
                    if p
                    else np.zeros((0, self.dims.get(k, 1)), np.float16)
                )
                for k, p in parts.items()
            }

    def _read_slide(self, slide: str, root) -> dict[str, tuple[dict, np.ndarray]]:
        """{teacher: ({level: features}, coords)} of one slide; notes each key's width."""
        per_t = {}
        for t in self.teachers:
            path = layout.at(layout.FEATURES, root, teacher=t, slide=slide)
            feats, coords = read_bag_part(path, self.levels)
            per_t[t] = (feats, coords)
            for lv in self.levels:
                self.dims.setdefault(key(t, lv), feats[lv].shape[1])
        return per_t

    @classmethod
    def for_task(cls, spec, teachers, root=layout.RESULTS, levels=("high",), sheet=None,
                 cases=None):  # fmt: skip
        """The bags of ``cases`` (the sheet's slides of each, from ``layout.FEATURES``) and the
        sheet's rows of those cases."""
        if sheet is None or cases is None:
            raise ValueError(f"task {spec.name}: a slide task's store needs the sheet and cases")
        store = cls(sheet, teachers, cases, levels, root)
        return store, sheet[sheet["case_id"].isin(set(cases))]

    @classmethod
    def from_arrays(cls, bags: dict[str, dict[str, torch.Tensor]]) -> BagStore:
        """A store over bags already in memory: ``bags[case]["teacher:level"]`` = (N, C)
        float16 tensors (synthetic cohorts, benchmarks); keys must be the same for every case."""
        store = cls.__new__(cls)
        first = next(iter(bags.values()))
        store._set_keys(first)
        store.dims = {k: int(v.shape[1]) for k, v in first.items()}
        store.bags = bags
        return store

    def to_dtype(self, dtype: torch.dtype) -> BagStore:
        """One bag at a time: no second copy of the store."""
        for bag in self.bags.values():
            for k, v in bag.items():
                if v.dtype != dtype:
                    bag[k] = v.to(dtype)
        return self

    def size(self, case: str) -> int:
        return int(next(iter(self.bags[case].values())).shape[0])

    def chunks(self, cases: list[str], k: str):
        """Bag by bag."""
        for c in cases:
            yield self.bags[c][k]

    def apply_standardizer(self, sc: Standardizer) -> None:
        """Bag by bag."""
        for bag in self.bags.values():
            for k, v in bag.items():
                bag[k] = sc.apply(k, v)

    def batch(self, cases, max_patches=None, rng=None, device="cpu", dtype=torch.float32,
              reuse=False):  # fmt: skip
        """Rows are gathered straight into one 16-bit buffer per key and converted once, on
        ``device``. ``reuse`` gathers into a buffer kept by the store (grown when needed): a
        batch of 8 bags × 4,096 patches × 1,536 dims is 100 MB, and a fresh buffer is fresh
        pages from the OS every step, whose first touch cost more than the gather itself."""
        rows = self._subsample(cases, max_patches, rng)
        lens = [len(r) if r is not None else self.size(c) for c, r in zip(cases, rows, strict=True)]
        mask = torch.arange(max(max(lens), 1))[None, :] < torch.tensor(lens)[:, None]
        ends = np.cumsum(lens).tolist()
        feats = {}
        for k in self.keys:
            first = self.bags[cases[0]][k]
            packed = self._buffer(k, (ends[-1], first.shape[1]), first.dtype, reuse)
            for c, r, e, n in zip(cases, rows, ends, lens, strict=True):
                if r is None:
                    packed[e - n : e] = self.bags[c][k]
                else:
                    torch.index_select(self.bags[c][k], 0, r, out=packed[e - n : e])
            feats[k] = self._deliver(k, packed, device, dtype, reuse)
        return feats, mask.to(device)

    def _subsample(self, cases, max_patches, rng) -> list[torch.Tensor | None]:
        """Per case: sorted random rows when its bag is larger than ``max_patches`` (and an
        ``rng`` is given), else None (the whole bag). Draws in case order."""
        rows = []
        for c in cases:
            n = self.size(c)
            if max_patches and n > max_patches and rng is not None:
                rows.append(torch.from_numpy(np.sort(rng.choice(n, max_patches, replace=False))))
            else:
                rows.append(None)
        return rows


def _slides_by_case(sheet, cases) -> dict[str, list[str]]:
    """{case: its slide ids} for ``cases``; every case must have a slide in the sheet."""
    wanted = set(cases)
    by_case: dict[str, list[str]] = {}
    for cid, sid in zip(sheet["case_id"], sheet["slide_id"], strict=True):
        if cid in wanted:
            by_case.setdefault(cid, []).append(sid)
    missing = sorted(wanted - set(by_case))
    if missing:
        raise ValueError(f"cases without slides in the sheet: {', '.join(missing[:5])}")
    return by_case


def _align(per_teacher: dict[str, tuple[dict, np.ndarray]]) -> dict[str, dict]:
    """Each teacher's level arrays restricted to the patches all teachers have, in the first
    teacher's order."""
    teachers = list(per_teacher)
    first = per_teacher[teachers[0]][1]
    if all(np.array_equal(per_teacher[t][1], first) for t in teachers[1:]):
        return {t: per_teacher[t][0] for t in teachers}
    index = {t: {tuple(xy): i for i, xy in enumerate(per_teacher[t][1].tolist())} for t in teachers}
    common = [tuple(xy) for xy in first.tolist() if all(tuple(xy) in index[t] for t in teachers)]
    out = {}
    for t in teachers:
        rows = [index[t][k] for k in common]
        out[t] = {lv: a[rows] for lv, a in per_teacher[t][0].items()}
    return out


class TileStore(FeatureStore):
    """One vector per image and teacher level, kept as one float16 (N, C) tensor per
    ``teacher:level`` key; an image is a bag of one (mask (B, 1) all true)."""

    def __init__(self, arrays: dict[str, np.ndarray | torch.Tensor], ids: list[str]):
        self._set_keys(arrays)
        self.data = {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float16) for k, v in arrays.items()
        }
        self.dims = {k: int(v.shape[1]) for k, v in self.data.items()}
        self.index = {i: r for r, i in enumerate(ids)}

    @classmethod
    def for_task(cls, spec, teachers, root=layout.RESULTS, levels=("high",), sheet=None,
                 cases=None):  # fmt: skip
        """Every image of the task, from its ``layout.TILE_FEATURES`` file per teacher (a tile
        task has no sheet; ``cases`` must be None: the store holds all images)."""
        if cases is not None:
            raise ValueError(f"task {spec.name}: a tile store holds every image of the task")
        files = {
            t: layout.at(layout.TILE_FEATURES, root, task=spec.name, teacher=t) for t in teachers
        }
        return cls.from_files(files, levels)

    @classmethod
    def from_files(cls, files: dict[str, str | os.PathLike], levels=("high",)):
        """Store over one tile feature file per teacher, plus the images' frame
        (``image_id``, ``case_id``, ``y``); every file must list the same images."""
        arrays, rows = {}, None
        for t, path in files.items():
            feats, r, _ = read_tile_features(path, levels)
            if rows is None:
                rows, first = r, path
            elif not r["image_id"].equals(rows["image_id"]):
                raise ValueError(
                    f"{path} and {first} list different images; re-extract both from the same "
                    "dataset"
                )
            for lv in levels:
                arrays[key(t, lv)] = feats[lv]
        return cls(arrays, list(rows["image_id"])), rows

    def size(self, _image: str) -> int:
        return 1

    def _rows(self, images: list[str]) -> torch.Tensor:
        return torch.as_tensor([self.index[i] for i in images], dtype=torch.long)

    def chunks(self, images: list[str], k: str):
        """In pieces of up to 65,536 images."""
        rows = self._rows(images)
        for s in range(0, len(rows), 65536):
            yield self.data[k].index_select(0, rows[s : s + 65536])

    def apply_standardizer(self, sc: Standardizer) -> None:
        self.data = {k: sc.apply(k, v) for k, v in self.data.items()}

    def to_dtype(self, dtype: torch.dtype) -> TileStore:
        self.data = {k: v.to(dtype) for k, v in self.data.items()}
        return self

    def batch(self, ids, max_patches=None, rng=None, device="cpu", dtype=torch.float32,
              reuse=False):  # fmt: skip
        """An all-true mask (B, 1); ``max_patches`` and ``rng`` do nothing (one row per image)
        and ``reuse`` keeps no buffer (nothing large to keep)."""
        rows = self._rows(ids)
        feats = {
            k: self._deliver(k, v.index_select(0, rows), device, dtype, False)
            for k, v in self.data.items()
        }
        return feats, torch.ones(len(ids), 1, dtype=torch.bool, device=device)
