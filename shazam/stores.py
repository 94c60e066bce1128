"""Feature stores: what the training engine reads, row by row, from the feature files.

One store, :class:`FeatureStore`, serves both kinds of task:

* slide tasks (:meth:`FeatureStore.for_slides`) — an item is a case, its bag the union of its
  slides' patches. When several teachers are used together the bag keeps the patches every
  teacher has (normally all of them: the teachers read the same patch file; a patch skipped as
  unreadable for one teacher is dropped for all);
* tile tasks (:meth:`FeatureStore.for_tiles`) — an item is one ROI image, a bag of one row of
  the task's tile feature file.

The store holds no features. It holds where each item's rows are (:mod:`shazam.mapped`: a
memory map of each file, or h5py for files written chunked by other tools), and a batch reads
only the rows it needs: the ``max_patches`` rows sampled from each bag in training, whole bags
(or, for a bag too large for one batch, chunks of it) in evaluation. What a job holds is the
batches in flight, whatever the size of the cohort; the files' pages stay in the OS page cache,
shared by every job on the node that reads them. ``training.cache: memory`` reads the files
into the process once instead (:meth:`FeatureStore.cache`).

Standardisation (:class:`Standardizer`) is applied to each batch as it is gathered — the
float16 rows are centred and scaled in float32 and written once in the engine's dtype — so the
files are never rewritten and the training statistics never see test rows.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import layout
from .device import available_memory
from .formats import LEVEL_DATASET, FeatureFileError, tile_rows
from .mapped import ArrayRows, FeatureFileRows
from .tasks import TaskSpec

# rows read and converted at a time: a piece stays in the CPU's cache between the read, the
# float32 transform and the write (3x faster than 4,096-row pieces, measured)
PIECE_ROWS = 512


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
        # x * scale + shift == (x - mean) / sd, one fused multiply-add per element
        self._affine = {k: (1 / sd, -mean / sd) for k, (mean, sd) in stats.items()}

    @classmethod
    def fit(cls, chunks, keys, ids: list[str]) -> Standardizer:
        """``chunks(ids, key)`` yields the training rows in (n, C) pieces. Each piece's mean
        and sum of squared deviations are computed in float32 and merged in float64 (Chan et
        al.'s pairwise update): one pass, no copy of the data beyond a piece."""
        stats = {}
        for k in keys:
            n, mean, m2 = 0, None, None
            for x in chunks(ids, k):
                if not len(x):
                    continue
                x = x.float()
                b_mean = x.mean(0)
                b_m2 = ((x - b_mean) ** 2).sum(0).double()
                b_mean, b = b_mean.double(), len(x)
                if mean is None:
                    n, mean, m2 = b, b_mean, b_m2
                    continue
                delta = b_mean - mean
                mean = mean + delta * (b / (n + b))
                m2 = m2 + b_m2 + delta * delta * (n * b / (n + b))
                n += b
            if n < 2:
                raise ValueError(
                    f"cannot standardise {k}: {n} training row(s); a fold needs training "
                    "cases with patches (or set training.standardize: false)"
                )
            sd = (m2 / (n - 1)).sqrt()
            # a constant dimension keeps its scale (sd 1) instead of blowing up
            sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
            stats[k] = (mean.float(), sd.float())
        return cls(stats, tuple(sorted(ids)))

    def apply(self, k: str, x: torch.Tensor, out=None) -> torch.Tensor:
        """``(x - mean) / sd`` computed in float32; written into ``out`` (any float dtype, on
        x's device) when given, else returned in x's dtype."""
        scale, shift = (t.to(x.device) for t in self._affine[k])
        if out is None:
            return torch.addcmul(shift, x.float(), scale).to(x.dtype)
        if out.dtype == torch.float32:
            return torch.addcmul(shift, x, scale, out=out)
        return out.copy_(torch.addcmul(shift, x, scale))

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


def standardize_store(store: FeatureStore, ids: list[str]) -> Standardizer:
    """Fit the statistics of ``ids`` (the store's training items) by streaming their rows, and
    have the store apply them to every batch — once: a second call with the same ids returns
    the same transform, other ids are refused (one store per fold)."""
    done = store.standardizer
    if done is not None:
        if done.ids != tuple(sorted(ids)):
            raise ValueError(
                "this feature store was standardised with other training cases; build one "
                "store per fold"
            )
        return done
    store.standardizer = Standardizer.fit(store.chunks, store.keys, list(ids))
    return store.standardizer


# a part of an item: (rows, one source index per teacher, the rows of each source it takes:
# None = all of them, an int = `rows` rows from there, or an index array)
Part = tuple[int, tuple[int, ...], tuple]


class FeatureStore:
    """Items (cases of a slide task, images of a tile task) named by id; per item, where its
    rows are in each teacher's files, aligned across teachers (and across levels, which share
    their teacher's rows).

    Attributes: ``keys`` (every ``teacher:level``, teacher-major), ``teachers``, ``levels``,
    ``dims`` (``key`` → feature width), ``standardizer`` (set once by
    :func:`standardize_store`) and ``cache_mode`` (``disk`` or ``memory``)."""

    standardizer: Standardizer | None = None

    def __init__(self, sources, items: dict[str, list[Part]], teachers, levels, dims):
        self.sources = sources  # ArrayRows / FeatureFileRows, each one teacher's
        self.items = items
        self.teachers, self.levels = list(teachers), tuple(levels)
        self.keys = [key(t, lv) for t in self.teachers for lv in self.levels]
        self.dims = dims
        self._sizes = {i: sum(p[0] for p in parts) for i, parts in items.items()}
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.cache_mode = "disk" if any(s.path for s in sources) else "memory"
        self._ready: dict[tuple[int, str], torch.Tensor] = {}  # see prepare()
        self._ready_dtype: torch.dtype | None = None

    # -- building
    @classmethod
    def for_task(cls, spec: TaskSpec, teachers: list[str], root=layout.RESULTS,
                 levels=("high",), sheet=None, cases=None):  # fmt: skip
        """(the store of ``spec``'s features of ``teachers`` under ``root``, the frame of the
        rows it was built from). Slide tasks need the ``sheet`` and the ``cases`` to load; a
        tile task's store holds every image of the task (``cases`` None)."""
        if spec.family == "tile":
            if cases is not None:
                raise ValueError(f"task {spec.name}: a tile store holds every image of the task")
            files = {t: layout.at(layout.TILE_FEATURES, root, task=spec.name, teacher=t)
                     for t in teachers}  # fmt: skip
            return cls.for_tiles(files, levels)
        if sheet is None or cases is None:
            raise ValueError(f"task {spec.name}: a slide task's store needs the sheet and cases")
        store = cls.for_slides(sheet, teachers, cases, levels, root)
        return store, sheet[sheet["case_id"].isin(set(cases))]

    @classmethod
    def for_slides(cls, sheet, teachers, cases, levels=("high",), root=layout.RESULTS):
        """The bags of ``cases``: the sheet's slides of each, from ``layout.FEATURES`` under
        ``root``. Every file is opened once here (names, shapes, widths and offsets checked);
        no feature is read."""
        datasets = {lv: LEVEL_DATASET[lv] for lv in levels}
        sources, items, dims, first = [], {}, {}, {}
        by_case = _slides_by_case(sheet, cases)
        for cid in sorted(by_case):
            parts = []
            for sid in sorted(by_case[cid]):
                files, coords = {}, {}
                for t in teachers:
                    path = layout.at(layout.FEATURES, root, teacher=t, slide=sid)
                    files[t] = FeatureFileRows(path, datasets, coords="coords")
                    coords[t] = files[t].__dict__.pop("coords")
                    _check_widths(files[t], t, dims, first)
                n, rows = _align(coords)
                srcs = tuple(range(len(sources), len(sources) + len(files)))
                sources.extend(files.values())
                if n:
                    parts.append((n, srcs, rows))
            items[cid] = parts
        return cls(sources, items, teachers, levels, dims)

    @classmethod
    def for_tiles(cls, files: dict[str, str | os.PathLike], levels=("high",)):
        """Store over one tile feature file per teacher, plus the images' frame (``image_id``,
        ``case_id``, ``y``); every file must list the same images."""
        datasets = {lv: LEVEL_DATASET[lv] for lv in levels}
        sources, rows, dims = [], None, {}
        for t, path in files.items():
            sources.append(FeatureFileRows(path, datasets))
            r = tile_rows(path)
            if rows is None:
                rows, first = r, path
            elif not r["image_id"].equals(rows["image_id"]):
                raise ValueError(
                    f"{path} and {first} list different images; re-extract both from the same "
                    "dataset"
                )
            if len(r) != sources[-1].n:
                raise FeatureFileError(os.fspath(path), f"{len(r)} image ids, {sources[-1].n} rows")
            dims.update({key(t, lv): sources[-1].levels[lv].shape[1] for lv in levels})
        srcs = tuple(range(len(sources)))
        items = {i: [(1, srcs, (r,) * len(srcs))] for r, i in enumerate(rows["image_id"])}
        return cls(sources, items, list(files), levels, dims), rows

    @classmethod
    def from_arrays(cls, bags: dict[str, dict[str, np.ndarray | torch.Tensor]]) -> FeatureStore:
        """A store over arrays already in memory: ``bags[item]["teacher:level"]`` = (N, C)
        (synthetic cohorts, benchmarks); the keys must be the same for every item."""
        first = next(iter(bags.values()))
        teachers = list(dict.fromkeys(k.split(":")[0] for k in first))
        levels = tuple(dict.fromkeys(k.split(":")[1] for k in first))
        sources, items = [], {}
        for item, arrays in bags.items():
            srcs = tuple(range(len(sources), len(sources) + len(teachers)))
            for t in teachers:
                sources.append(ArrayRows({lv: np.asarray(arrays[key(t, lv)]) for lv in levels}))
            n = sources[-1].n
            items[item] = [(n, srcs, (0,) * len(teachers))] if n else []
        dims = {k: int(v.shape[1]) for k, v in first.items()}
        return cls(sources, items, teachers, levels, dims)

    # -- what it holds
    def size(self, item: str) -> int:
        """Feature rows of one item (patches of a case's bag; 1 for an image)."""
        return self._sizes[item]

    def nbytes(self) -> int:
        """Bytes of the levels it reads, in every file it refers to."""
        return sum(s.nbytes(self.levels) for s in self.sources)

    def cache(self, mode: str = "auto") -> str:
        """``memory``: read every file into the process now (fastest per batch; memory grows
        with the cohort, and each job holds its own copy); ``disk``: rows read on demand
        through the page cache (flat memory, shared between jobs); ``auto``: memory when the
        store's bytes are at most a quarter of the memory available. Returns a sentence that
        says what was chosen and why."""
        need, why = self.nbytes(), f"training.cache: {mode}"
        if mode == "auto":
            avail = available_memory()
            mode = "memory" if need <= avail / 4 else "disk"
            why = f"training.cache: auto, {avail / 2**30:.1f} GiB available"
        if mode not in ("memory", "disk"):
            raise ValueError(f"training.cache must be auto, memory or disk, not {mode!r}")
        if mode == "memory":
            for s in self.sources:
                s.load()
        self.cache_mode = mode
        size = f"{need / 2**30:.2f} GiB" if need >= 2**30 else f"{need / 2**20:.1f} MiB"
        return f"features: {size} read from {mode} ({why})"

    def prepare(self, dtype: torch.dtype) -> None:
        """For an engine that computes in a 16-bit ``dtype``, on a store held in memory:
        transform every row once — standardised in float32, stored in ``dtype`` in place of
        the raw rows (same memory) — so that batches are plain row gathers. The values are
        those a batch would compute (the same float32 transform and one rounding), so memory
        and disk give the same model bit for bit. A store read from disk, or an fp32 engine,
        keeps transforming batch by batch. Once prepared, batches in another dtype are
        refused (the raw rows are gone)."""
        if self.cache_mode != "memory" or dtype not in (torch.bfloat16, torch.float16):
            return
        if self._ready_dtype is not None:
            if self._ready_dtype != dtype:
                raise ValueError(f"feature store prepared for {self._ready_dtype}, not {dtype}")
            return
        for si, ti in self._teacher_of().items():
            src = self.sources[si]
            for lv in self.levels:
                data = src.levels[lv].data  # in memory (cache: memory): no copy of it
                rows = torch.from_numpy(data if data.flags.writeable else data.copy())
                k, out = key(self.teachers[ti], lv), torch.empty(data.shape, dtype=dtype)
                for s in range(0, len(rows), PIECE_ROWS):
                    self._transform(k, rows[s : s + PIECE_ROWS], out[s : s + PIECE_ROWS])
                self._ready[(si, lv)] = out
                src.levels[lv].data = None
        self._ready_dtype = dtype

    def _teacher_of(self) -> dict[int, int]:
        """{source index: its teacher's index} of every source an item uses."""
        return {s: ti for parts in self.items.values() for _, srcs, _ in parts
                for ti, s in enumerate(srcs)}  # fmt: skip

    # -- reading
    def draw(self, ids, max_patches=None, rng=None) -> list[np.ndarray | None]:
        """Per item: sorted random rows when it is larger than ``max_patches`` (and an ``rng``
        is given), else None (all of it). Draws in item order."""
        picks = []
        for i in ids:
            n = self.size(i)
            if max_patches and n > max_patches and rng is not None:
                picks.append(np.sort(rng.choice(n, max_patches, replace=False)))
            else:
                picks.append(None)
        return picks

    def batch(self, ids, max_patches=None, rng=None, device="cpu", dtype=torch.float32,
              reuse=False):  # fmt: skip
        """Packed features {key: (M, C)} in ``dtype`` on ``device`` — the rows of every item,
        item after item, no padding, standardised when the store has a standardizer — and the
        mask (B, N) that places them (row-major) in a padded batch. ``max_patches`` + ``rng``:
        subsample larger items (training). ``reuse``: the tensors may live in buffers kept by
        the store, overwritten by the next ``reuse`` call."""
        picks = self.draw(ids, max_patches, rng)
        return self.gather(ids, picks, device, dtype, 0 if reuse else None)

    def batches(self, plan, device="cpu", dtype=torch.float32, reuse=True, ahead=None):
        """``batch`` for each (ids, picks) of ``plan``, with a background thread one batch
        ahead. On a GPU it gathers the next batch (two buffers in turn with ``reuse``: a batch
        stays valid until the caller asks for the next but one) while the GPU computes. On the
        CPU, where gathering and the model compete for the same cores, it only asks the OS to
        read the next batch's files (:meth:`readahead`: the I/O overlaps, no second buffer) and
        the batch is gathered when asked for, into one buffer. ``ahead``: force either way."""
        plan, device = list(plan), torch.device(device)
        if not plan:
            return
        ahead = device.type != "cpu" if ahead is None else ahead
        slot = (lambda i: i % 2 if ahead else 0) if reuse else (lambda i: None)

        def work(i):
            if i < len(plan):
                if self.cache_mode == "disk":  # nothing to read ahead from memory
                    self.readahead(*plan[i])
                return self.gather(*plan[i], device, dtype, slot(i)) if ahead else None

        with ThreadPoolExecutor(1, thread_name_prefix="shazam-batch") as pool:
            nxt = pool.submit(work, 0)
            for i in range(len(plan)):
                cur = nxt.result()
                nxt = pool.submit(work, i + 1)
                yield cur if ahead else self.gather(*plan[i], device, dtype, slot(i))

    def readahead(self, ids, picks) -> None:
        """Ask the OS to bring the files of a batch into the page cache (asynchronous; nothing
        is copied into this process)."""
        for ti in range(len(self.teachers)):
            for s in dict.fromkeys(s for s, _ in self._segments(ids, picks, ti)):
                self.sources[s].readahead()

    def bag_chunks(self, item: str, rows: int, device="cpu", dtype=torch.float32):
        """One item as {key: (≤ rows, C)} pieces in row order (a bag too large for one batch,
        for a model's ``forward_chunks``), each prepared while the caller uses the last."""
        n = self.size(item)
        plan = [([item], [np.arange(s, min(s + rows, n))]) for s in range(0, n, rows)]
        for feats, _ in self.batches(plan, device, dtype):  # the caller is done with a chunk
            yield feats  # when it asks for the next: reused buffers

    def gather(self, ids, picks, device="cpu", dtype=torch.float32, slot=None):
        """The batch of ``ids`` with the rows ``picks`` (from :meth:`draw`)."""
        device = torch.device(device)
        lens = [len(p) if p is not None else self.size(i) for i, p in zip(ids, picks, strict=True)]
        mask = torch.arange(max(max(lens, default=0), 1))[None, :] < torch.tensor(lens)[:, None]
        total, feats = sum(lens), {}
        for ti, t in enumerate(self.teachers):
            segs = self._segments(ids, picks, ti)
            for lv in self.levels:
                feats[key(t, lv)] = self._read(key(t, lv), lv, segs, total, device, dtype, slot)
        return feats, mask.to(device)

    def _segments(self, ids, picks, ti: int) -> list[tuple[int, np.ndarray | slice]]:
        """(source, its rows) in batch order for teacher ``ti``; neighbours from one source
        merged (a tile batch is one read)."""
        segs = []
        for item, pick in zip(ids, picks, strict=True):
            pos = 0
            for n, srcs, rows in self.items[item]:
                r, local = rows[ti], None
                if pick is not None:
                    a, b = np.searchsorted(pick, (pos, pos + n))
                    local, pos = pick[a:b] - pos, pos + n
                    if not len(local):
                        continue
                if isinstance(r, np.ndarray):
                    fr = r if local is None else r[local]
                else:
                    fr = slice(r, r + n) if local is None else local + r
                if segs and segs[-1][0] == srcs[ti]:
                    segs[-1] = (srcs[ti], np.concatenate([_index(segs[-1][1]), _index(fr)]))
                else:
                    segs.append((srcs[ti], fr))
        return segs

    def _read(self, k, lv, segs, total, device, dtype, slot) -> torch.Tensor:
        """One key's rows of ``segs`` → (total, C) in ``dtype`` on ``device``, standardised.
        Rows transformed beforehand (:meth:`prepare`) are gathered as they are. Otherwise, on
        the CPU, each piece is converted straight into the output; on a GPU the float16 rows go
        over (pinned) and are converted there."""
        on_cpu = device.type == "cpu"
        if self._ready_dtype is not None:  # rows transformed once (prepare): a plain gather
            if dtype != self._ready_dtype:
                raise ValueError(f"feature store prepared for {self._ready_dtype}, not {dtype}")
            out = self._buffer(k, (total, self.dims[k]), dtype, slot, pin=not on_cpu)
            e = 0
            for s, fr in segs:
                rows = self._ready[(s, lv)]
                n = fr.stop - fr.start if isinstance(fr, slice) else len(fr)
                if isinstance(fr, slice):
                    out[e : e + n] = rows[fr]
                else:
                    torch.index_select(rows, 0, torch.from_numpy(fr), out=out[e : e + n])
                e += n
            return out if on_cpu else out.to(device)  # a synchronous copy: see below
        out = self._buffer(k, (total, self.dims[k]), dtype if on_cpu else torch.float16, slot,
                           pin=not on_cpu)  # fmt: skip
        e = 0
        for s, fr in segs:
            src = self.sources[s]
            for piece in _pieces(fr):
                x = torch.from_numpy(src.take(lv, piece))
                # the file's pages leave this process (not the page cache) as soon as they are
                # read: what it holds is the batch, not the files the batch came from
                src.release()
                if on_cpu:
                    self._transform(k, x, out[e : e + len(x)])
                else:
                    out[e : e + len(x)].copy_(x)
                e += len(x)
        if on_cpu:
            return out
        # synchronous: the pinned buffer is refilled two batches later, and an asynchronous
        # copy could still be queued behind the GPU's work by then (this runs in the
        # background thread, so the wait costs the model nothing)
        x = out.to(device)
        if self.standardizer is None:
            return x.to(dtype)
        y = torch.empty(x.shape, dtype=dtype, device=device)
        self.standardizer.apply(k, x, y)  # float32, then one rounding into dtype
        return y

    def _transform(self, k: str, x: torch.Tensor, dst: torch.Tensor) -> None:
        """Raw rows ``x`` → ``dst`` (its dtype), standardised when the store has statistics."""
        if self.standardizer is not None:
            self.standardizer.apply(k, x, dst)
        else:
            dst.copy_(x)

    def _buffer(self, k, shape, dtype, slot, pin=False) -> torch.Tensor:
        """An uninitialised (rows, C) tensor: new, or the front of a kept buffer per key, dtype
        and slot, grown when a batch needs more rows (a fresh buffer is fresh pages every step,
        whose first touch costs more than the gather)."""
        pin = pin and torch.cuda.is_available()
        if slot is None:
            return torch.empty(shape, dtype=dtype, pin_memory=pin)
        buf = self._buffers.get((k, dtype, slot))
        if buf is None or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=dtype, pin_memory=pin)
            self._buffers[(k, dtype, slot)] = buf
        return buf[: shape[0]]

    def chunks(self, ids: list[str], k: str):
        """The raw rows of ``ids`` for one key, as (≤ PIECE_ROWS, C) tensors (the
        standardisation's input), read piece by piece."""
        t, lv = k.split(":")
        ti = self.teachers.index(t)
        for i in ids:
            for s, fr in self._segments([i], [None], ti):
                for piece in _pieces(fr):
                    x = self.sources[s].take(lv, piece)
                    self.sources[s].release()
                    yield torch.from_numpy(x)


def _index(rows) -> np.ndarray:
    return np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows


def _pieces(rows):
    """``rows`` (a slice or an index array) in pieces of at most ``PIECE_ROWS``."""
    n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
    for s in range(0, n, PIECE_ROWS):
        if isinstance(rows, slice):
            yield slice(rows.start + s, min(rows.start + s + PIECE_ROWS, rows.stop))
        else:
            yield rows[s : s + PIECE_ROWS]


def _check_widths(src: FeatureFileRows, teacher: str, dims: dict, first: dict) -> None:
    """Every file of a teacher has the same width per level."""
    for lv, level in src.levels.items():
        k, c = key(teacher, lv), level.shape[1]
        if dims.setdefault(k, c) != c:
            raise FeatureFileError(
                src.path, f"its {lv} features are {c} wide, {first[k]} is {dims[k]} wide; "
                f"every file of teacher {teacher} must come from the same extraction",
            )  # fmt: skip
        first.setdefault(k, src.path)


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


def _align(coords: dict[str, np.ndarray]) -> tuple[int, tuple]:
    """(rows, per teacher: 0 — all its rows — or the index array of the patches every teacher
    has, in the first teacher's order)."""
    teachers = list(coords)
    first = coords[teachers[0]]
    if all(np.array_equal(coords[t], first) for t in teachers[1:]):
        return len(first), (0,) * len(teachers)
    index = {t: {tuple(xy): i for i, xy in enumerate(coords[t].tolist())} for t in teachers}
    common = [tuple(xy) for xy in first.tolist() if all(tuple(xy) in index[t] for t in teachers)]
    rows = tuple(np.asarray([index[t][c] for c in common], dtype=np.int64) for t in teachers)
    return len(common), rows
