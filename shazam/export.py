"""Our feature files in TRIDENT's and CLAM's layouts, for their training code (`shazam export`).

A feature file ``results/features/{teacher}/{slide}.h5`` already holds what both tools read
from an ``.h5``: ``features`` (N, D), the teacher's canonical embedding, and ``coords`` (N, 2),
level-0 top-left corners, with CLAM's and TRIDENT's attrs on ``coords`` (``patch_size``,
``patch_level``, ``downsample``, …; ``patch_size_level0``, ``target_magnification``,
``level0_magnification``, ``overlap``, …). What differs is where the files sit and, for CLAM's
training, the format:

- TRIDENT reads ``<job_dir>/features_<encoder>/<slide>.h5``;
- CLAM's training reads ``<data_dir>/pt_files/<slide>.pt`` (``torch.load`` of the (N, D)
  tensor) and, with ``load_from_h5``, ``<data_dir>/h5_files/<slide>.h5``.

Both feed the features straight into float32 models, while our files store float16 by
default, so the export converts to ``dtype`` (float32 unless told otherwise). A file already
in that dtype is linked, not copied (``link``: a hard link, else a symbolic one). The low and
mid levels (``features_low``, ``features_mid``) stay out: neither tool knows them; ``level``
exports one of them as ``features`` instead. Every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from . import layout
from .formats import LEVEL_DATASET, FeatureFileError
from .io import atomic_path

LAYOUTS = ("trident", "clam")


def export_features(
    teacher: str,
    slides: list[str],
    layout_name: str,
    out: str | os.PathLike,
    root: str | os.PathLike = layout.RESULTS,
    level: str = "high",
    dtype: str = "float32",
) -> list[Path]:
    """Write ``slides``' feature files of ``teacher`` (under ``root``) into ``out`` in
    ``layout_name``'s layout; returns the files written."""
    if layout_name not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout_name}")
    out = Path(out)
    written = []
    for sid in slides:
        src = Path(layout.at(layout.FEATURES, root, teacher=teacher, slide=sid))
        if not src.exists():
            raise FeatureFileError(str(src), f"missing: extract it first (snakemake {src})")
        h5_dir = f"features_{teacher}" if layout_name == "trident" else "h5_files"
        written.append(_export_h5(src, out / h5_dir / f"{sid}.h5", level, dtype))
        if layout_name == "clam":
            written.append(_export_pt(src, out / "pt_files" / f"{sid}.pt", level, dtype))
    return written


def _read(src: Path, level: str, dtype: str):
    with h5py.File(src, "r") as f:
        name = LEVEL_DATASET[level]
        if name not in f:
            raise FeatureFileError(str(src), f"has no {level} level ({name})")
        feats = f[name][:]
        return (
            feats.astype(dtype, copy=False),
            f["coords"][:],
            dict(f["coords"].attrs),
            dict(f.attrs),
        )


def _export_h5(src: Path, dst: Path, level: str, dtype: str) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(src, "r") as f:
        as_is = level == "high" and f["features"].dtype == np.dtype(dtype)
    if as_is and _link(src, dst):
        return dst
    feats, coords, coord_attrs, file_attrs = _read(src, level, dtype)
    with atomic_path(dst) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("coords", data=coords)
        d.attrs.update(coord_attrs)
        f.attrs.update(file_attrs)
        f.attrs["exported_level"] = level
        f.create_dataset("features", data=feats)
    return dst


def _export_pt(src: Path, dst: Path, level: str, dtype: str) -> Path:
    import torch

    dst.parent.mkdir(parents=True, exist_ok=True)
    feats = torch.from_numpy(np.ascontiguousarray(_read(src, level, dtype)[0]))
    with atomic_path(dst) as tmp, open(tmp, "wb") as f:
        torch.save(feats, f)  # a bare tensor: loads with torch.load(..., weights_only=True)
    return dst


def _link(src: Path, dst: Path) -> bool:
    """``dst`` → the same bytes as ``src``: a hard link, else a symbolic link to its absolute
    path; False when neither can be made (the caller then copies)."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    for make in (os.link, lambda a, b: os.symlink(os.path.abspath(a), b)):
        try:
            make(src, tmp)
        except OSError:
            continue
        os.replace(tmp, dst)
        return True
    return False
