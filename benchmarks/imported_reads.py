"""Imported-feature benchmark: reading a training batch's rows from a TRIDENT-layout file
against our own layout.

An imported TRIDENT or CLAM ``.h5`` is linked, not copied (`shazam import-features`): training
reads it where it lies. Those tools write ``features`` float32 and chunked (TRIDENT: one row
per chunk; CLAM: 32 rows), so :class:`shazam.mapped.FeatureFileRows` reads it through h5py,
while our files are float16 and contiguous, read by ``mmap`` at the dataset's offset. This
writes one bag of ``--patches`` rows at UNI2-h's width (1,536) in each layout and times the
training read of one bag: ``--rows`` sorted random rows (`training.max_patches`), warm page
cache, ``--repeats`` times each, alternating.

Run: ``python benchmarks/imported_reads.py``. Last line:
``RESULT imported_read_slowdown <TRIDENT layout / ours> x`` (median seconds per bag).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shazam.mapped import FeatureFileRows  # noqa: E402


def write(path: Path, x: np.ndarray, chunk_rows: int | None) -> None:
    coords = np.stack([np.arange(len(x)) * 256, np.zeros(len(x), np.int64)], 1)
    with h5py.File(path, "w") as f:
        chunks = (chunk_rows, x.shape[1]) if chunk_rows else None
        f.create_dataset("features", data=x, chunks=chunks)
        f.create_dataset("coords", data=coords, chunks=(chunk_rows, 2) if chunk_rows else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=15000)
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.patches, a.width)).astype(np.float32)
    layouts = {
        "ours (float16, contiguous, mmap)": (x.astype(np.float16), None),
        "TRIDENT (float32, 1-row chunks, h5py)": (x, 1),
        "CLAM h5 (float32, 32-row chunks, h5py)": (x, 32),
    }
    times: dict[str, list[float]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, (name, (arr, chunk)) in enumerate(layouts.items()):
            files[name] = Path(tmp) / f"{i}.h5"
            write(files[name], arr, chunk)
        readers = {k: FeatureFileRows(p, {"high": "features"}) for k, p in files.items()}
        for _ in range(a.repeats + 1):  # the first round warms the page cache
            rows = np.sort(rng.choice(a.patches, a.rows, replace=False))
            for name, r in readers.items():
                t0 = time.perf_counter()
                out = r.take("high", rows)
                times[name].append(time.perf_counter() - t0)
                assert out.shape == (a.rows, a.width)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:42s} {v * 1e3:8.1f} ms per bag of {a.rows} rows")
    base = med["ours (float16, contiguous, mmap)"]
    print(
        f"RESULT imported_read_slowdown {med['TRIDENT (float32, 1-row chunks, h5py)'] / base:.1f} x"
    )


if __name__ == "__main__":
    main()
