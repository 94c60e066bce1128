"""Row reads from feature files, without loading them (what :mod:`shazam.stores` reads).

A feature file's datasets are written contiguous and uncompressed (:mod:`shazam.formats`), so a
level is a plain (N, C) array at a byte offset that h5py reports: :class:`FeatureFileRows` maps
the file read-only (``mmap``) and numpy reads exactly the rows asked for. The pages come from
the OS page cache, so every job on a node that reads the same file shares one copy, and a job's
own memory is what it copies out. As soon as rows are read, :meth:`FeatureFileRows.release`
drops the job's page-table entries of the file (``MADV_DONTNEED``: the page cache keeps the
pages, the job's RSS stops counting them), so a process that reads a 290 GB cohort does not
appear to hold it. A dataset that is chunked or compressed (files written by other tools) is
read through h5py instead, with the same interface; :meth:`load` reads the levels into memory
(``training.cache: memory``).

Open mappings are kept in one least-recently-used table (:class:`_Maps`) whose size stays far
below the process's open-file limit: Python's ``mmap`` holds a file descriptor per mapping.
"""

from __future__ import annotations

import mmap
import os
import resource
import threading
from collections import OrderedDict

import h5py
import numpy as np

from .formats import FeatureFileError


class _Maps:
    """path → read-only ``mmap`` of the whole file, least recently used first; at most
    ``limit`` open (a quarter of the soft open-file limit, at most 1,024)."""

    def __init__(self):
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.limit = max(16, min(1024, (soft if soft > 0 else 1024) // 4))
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self.lock = threading.RLock()

    def get(self, path: str) -> mmap.mmap:
        with self.lock:
            mm = self._maps.get(path)
            if mm is not None:
                self._maps.move_to_end(path)
                return mm
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = mm
            while len(self._maps) > self.limit:
                _, old = self._maps.popitem(last=False)
                old.close()
            return mm

    def release(self, path: str) -> None:
        """Drop this process's resident pages of ``path`` (the page cache keeps them)."""
        with self.lock:
            mm = self._maps.get(path)
            if mm is not None and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED)

    def willneed(self, path: str, spans) -> None:
        """Read-ahead of (offset, length) byte spans of ``path``."""
        page = mmap.PAGESIZE
        with self.lock:
            mm = self.get(path)
            for off, n in spans:
                start = off - off % page
                mm.madvise(mmap.MADV_WILLNEED, start, min(off + n, len(mm)) - start)

    def close(self, path: str) -> None:
        with self.lock:
            mm = self._maps.pop(path, None)
            if mm is not None:
                mm.close()


MAPS = _Maps()


class Level:
    """One (N, C) dataset of a file: where it lies, or its rows in memory."""

    __slots__ = ("name", "shape", "dtype", "offset", "data")

    def __init__(self, name: str, shape, dtype, offset: int | None, data=None):
        self.name, self.shape, self.dtype = name, tuple(int(s) for s in shape), np.dtype(dtype)
        self.offset, self.data = offset, data

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize


class ArrayRows:
    """The same interface over arrays already in memory (synthetic cohorts, benchmarks)."""

    path = None

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.levels = {lv: Level(lv, a.shape, a.dtype, None, np.asarray(a)) for lv, a in
                       arrays.items()}  # fmt: skip
        self.n = int(next(iter(arrays.values())).shape[0])

    def take(self, level: str, rows) -> np.ndarray:
        return _take(self.levels[level].data, rows)

    def nbytes(self, levels) -> int:
        return sum(self.levels[lv].nbytes for lv in levels)

    def load(self) -> None:
        pass

    def release(self) -> None:
        pass

    def readahead(self) -> None:
        pass


class FeatureFileRows(ArrayRows):
    """One HDF5 feature file opened for row reads of some of its datasets.

    ``datasets``: level → dataset name. Every dataset must be 2-D, floating point, with
    as many rows as the ``coords`` dataset when one is named (read into ``self.coords``, the
    caller's to keep or drop). Errors name the file and how to regenerate it
    (:class:`~shazam.formats.FeatureFileError`)."""

    def __init__(self, path: str | os.PathLike, datasets: dict[str, str], coords: str = ""):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FeatureFileError(self.path, "not found")
        size = os.path.getsize(self.path)
        self.levels = {}
        try:
            with h5py.File(self.path, "r") as f:
                for lv, name in datasets.items():
                    if name not in f:
                        raise FeatureFileError(
                            self.path, f"no `{name}` dataset ({lv} level); extract with "
                            "extraction.levels including it",
                        )  # fmt: skip
                    self.levels[lv] = _level(self.path, f[name], size)
                if coords:
                    if coords not in f:
                        raise FeatureFileError(self.path, f"no `{coords}` (not a feature file?)")
                    self.coords = f[coords][:]
        except OSError as e:
            raise FeatureFileError(
                self.path, f"unreadable, probably truncated or corrupt ({e})"
            ) from None
        shapes = {lv: v.shape for lv, v in self.levels.items()}
        self.n = len(self.coords) if coords else next(iter(shapes.values()))[0]
        bad = [f"{lv} {s}" for lv, s in shapes.items() if s[0] != self.n]
        if bad:
            raise FeatureFileError(
                self.path, f"{', '.join(bad)} features do not match its {self.n} rows"
            )

    def take(self, level: str, rows) -> np.ndarray:
        """The rows ``rows`` (an index array or a slice) of one level, as a new array."""
        lv = self.levels[level]
        if lv.data is not None:
            return _take(lv.data, rows)
        if lv.offset is None:  # chunked or compressed: h5py reads (increasing rows only)
            return _h5_take(self.path, lv.name, rows)
        with MAPS.lock:
            mm = MAPS.get(self.path)
            view = np.frombuffer(mm, lv.dtype, lv.shape[0] * lv.shape[1], lv.offset)
            out = _take(view.reshape(lv.shape), rows)
            del view
        return out

    def load(self) -> None:
        """Every level into memory (one read each); later ``take`` calls index the copy."""
        with h5py.File(self.path, "r") as f:
            for lv in self.levels.values():
                if lv.data is None:
                    lv.data = f[lv.name][()]
        MAPS.close(self.path)

    def release(self) -> None:
        """Drop this process's pages of the file (whole: the kernel maps pages around each
        fault, beyond the rows read, so releasing only their span leaves some behind)."""
        MAPS.release(self.path)

    def readahead(self) -> None:
        """Start reading the mapped levels' bytes into the page cache (``MADV_WILLNEED``)."""
        spans = [(lv.offset, lv.nbytes) for lv in self.levels.values()
                 if lv.data is None and lv.offset is not None]  # fmt: skip
        if spans and hasattr(mmap, "MADV_WILLNEED"):
            MAPS.willneed(self.path, spans)


def _take(a: np.ndarray, rows) -> np.ndarray:
    """``a[rows]`` as a new array, never a view of ``a`` (a mapped file's pages)."""
    return a[rows].copy() if isinstance(rows, slice) else np.take(a, rows, axis=0)


def _level(path: str, d: h5py.Dataset, size: int) -> Level:
    if d.ndim != 2 or d.dtype.kind != "f":
        raise FeatureFileError(path, f"`{d.name}` is {d.dtype} {d.shape}, not 2-D floats")
    offset = None
    if d.chunks is None and d.compression is None and d.size:
        offset = d.id.get_offset()
        if offset is not None and offset + d.size * d.dtype.itemsize > size:
            raise FeatureFileError(
                path, f"truncated: `{d.name}` ends at byte {offset + d.nbytes:,} of a "
                f"{size:,}-byte file",
            )  # fmt: skip
    return Level(d.name, d.shape, d.dtype, offset)


def _h5_take(path: str, name: str, rows) -> np.ndarray:
    with h5py.File(path, "r") as f:
        d = f[name]
        if isinstance(rows, slice):
            return d[rows]
        uniq, inverse = np.unique(rows, return_inverse=True)
        return d[uniq][inverse] if len(uniq) else np.zeros((0, d.shape[1]), d.dtype)
