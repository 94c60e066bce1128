"""Every HDF5 layout the pipeline reads and writes, in one place (TRIDENT keeps its I/O in one
module the same way):

- patch files ``results/patches/{slide}.h5`` (CLAM-compatible ``coords`` + attrs, DESIGN §3.2);
- slide feature files ``results/features/{teacher}/{slide}.h5`` (DESIGN §3.3);
- tile feature files ``results/tile_features/{task}/{teacher}.h5`` (one vector per ROI image)
  and their optional ``.pt`` export in the seed's ``(features, labels)`` format.

Every writer is atomic (temporary name, then rename). Readers that training depends on raise
:class:`FeatureFileError`, whose message names the file and how to regenerate it.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd

from .io import atomic_path

# dataset name of each teacher level in a feature file (``features`` is the canonical embedding)
LEVEL_DATASET = {"high": "features", "low": "features_low", "mid": "features_mid"}


def write_feature_file(path, coords, coord_attrs: dict, feats: dict, meta: dict, bad, all_coords):
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
            for k, v in coord_attrs.items():
                d.attrs[k] = v
            for k, v in meta.items():
                d.attrs[k] = v
                f.attrs[k] = v
            for lv, arr in feats.items():
                f.create_dataset(LEVEL_DATASET[lv], data=arr)
            if bad:
                f.create_dataset(
                    "skipped_coords",
                    data=np.asarray([all_coords[r] for r, _ in bad], dtype=np.int64),
                )


def read_feature_file(path, level: str = "high") -> tuple[np.ndarray, np.ndarray, dict]:
    """(features, coords, attrs) of one level."""
    with h5py.File(path, "r") as f:
        attrs = {
            k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["coords"].attrs.items()
        }
        return f[LEVEL_DATASET[level]][:], f["coords"][:], attrs


def levels_in(path) -> set[str] | None:
    """The levels a feature file holds (None: no readable file, left to the reader to name)."""
    try:
        with h5py.File(path, "r") as f:
            return {lv for lv, name in LEVEL_DATASET.items() if name in f}
    except OSError:
        return None


# --------------------------------------------------------------------------- patch files


def write_patch_file(path, coords, fractions, attrs: dict) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
            for k, v in attrs.items():
                d.attrs[k] = h5_attr(v)
            f.create_dataset(
                "tissue_fraction", data=np.asarray(fractions, dtype=np.float32).reshape(-1)
            )
            for k in ("name", "status", "reason", "shazam_version"):
                if k in attrs:
                    f.attrs[k] = h5_attr(attrs[k])


def h5_attr(v):
    if v is None:
        return "none"
    if isinstance(v, (tuple, list)):
        return np.asarray(v)
    return v


def read_patch_file(path) -> tuple[np.ndarray, dict]:
    """Coordinates and the attrs of ``coords`` of a patch file (ours or CLAM's)."""
    with h5py.File(path, "r") as f:
        d = f["coords"]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in d.attrs.items()}
        return d[:], attrs


# --------------------------------------------------------------------------- training reads


class FeatureFileError(ValueError):
    """A feature file that training cannot read; the message names it and how to redo it."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(
            f"feature file {path}: {reason} — regenerate it with "
            f"`snakemake --forcerun {path}` (which also redoes the jobs that use it), "
            "or delete it and run snakemake again"
        )


# --------------------------------------------------------------------------- tile features


def write_tile_features(path, images: pd.DataFrame, feats, sizes, eff, meta: dict) -> None:
    strings = h5py.string_dtype()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for lv, arr in feats.items():
                f.create_dataset(LEVEL_DATASET[lv], data=arr)
            f.create_dataset("labels", data=images["y"].to_numpy(dtype=np.int64))
            f.create_dataset("image_ids", data=list(images["image_id"]), dtype=strings)
            f.create_dataset("case_ids", data=list(images["case_id"]), dtype=strings)
            f.create_dataset("image_size", data=sizes)
            f.create_dataset("mpp_effective", data=eff)
            for k, v in meta.items():
                f.attrs[k] = v


def export_pt(features_h5: str | os.PathLike, out_pt: str | os.PathLike) -> tuple[int, int]:
    """The seed's tile format from a tile feature file: ``torch.save`` of the tuple
    ``(features, labels)`` — the canonical embedding as float32 ``[N, C]`` and class indices
    as int64 ``[N]``, in the feature file's image order — tensors only, so it loads with
    ``torch.load(path, weights_only=True)``. Written atomically; returns (N, C)."""
    import torch

    feats, rows, _ = read_tile_features(features_h5)
    x = torch.from_numpy(np.ascontiguousarray(feats["high"], dtype=np.float32))
    y = torch.from_numpy(rows["y"].to_numpy(dtype=np.int64))
    with atomic_path(out_pt) as tmp, open(tmp, "wb") as f:
        # a file object, not the path: torch names the archive's records after a path (here
        # the random temporary name), so the same features would give different bytes
        torch.save((x, y), f)
    return tuple(x.shape)


def read_tile_features(path, levels=("high",)) -> tuple[dict, pd.DataFrame, dict]:
    """({level: (N, D)}, frame image_id/case_id/y, attrs) of one task and teacher."""
    with h5py.File(path, "r") as f:
        missing = [lv for lv in levels if LEVEL_DATASET[lv] not in f]
        if missing:
            raise ValueError(
                f"{path} has no {', '.join(missing)} level(s); extract with extraction.levels "
                "including them"
            )
        feats = {lv: f[LEVEL_DATASET[lv]][:] for lv in levels}
        attrs = dict(f.attrs)
    return feats, tile_rows(path), attrs


def tile_classes(path) -> list[str] | None:
    """The task classes a tile feature file was extracted with (its ``classes`` attr; None when
    the file does not record them)."""
    import json

    with h5py.File(path, "r") as f:
        v = f.attrs.get("classes")
    return None if v is None else json.loads(v.decode() if isinstance(v, bytes) else v)


def tile_rows(path) -> pd.DataFrame:
    """The frame (``image_id``, ``case_id``, ``y``) of a tile feature file."""
    try:
        with h5py.File(path, "r") as f:
            ids, cases = f["image_ids"].asstr()[:], f["case_ids"].asstr()[:]
            return pd.DataFrame({"image_id": ids, "case_id": cases, "y": f["labels"][:]})
    except (OSError, KeyError) as e:
        raise FeatureFileError(os.fspath(path), f"not a readable tile feature file ({e})") from None
