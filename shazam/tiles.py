"""Tile-level (ROI) datasets: image listing, per-teacher features and an in-memory store.

A tile task is a set of images with one label each (UniToPatho, HunCRC, CRC-100K-style):
either a folder with one subfolder per class, or a CSV ``path,label[,case_id][,split]`` (paths
relative to the CSV's folder). Each teacher gives one vector per image, written to one file
per task and teacher, ``results/tile_features/{task}/{teacher}.h5``:

- ``features`` (+ ``features_low``, ``features_mid``): (N, D) per level, rows in listing order;
- ``labels`` (class index in the task's ``classes``), ``image_ids``, ``case_ids``;
- ``image_size`` (N, 2: height, width in pixels) and ``mpp_effective`` (µm/px the teacher saw);
- attrs: classes, teacher, weights identity, precision, MPP and how images were fitted.

Resolution: images are at the task's ``mpp`` (declared, or assumed to be the target MPP).
``fit: resize`` hands the whole ROI to the teacher (the convention of ROI benchmarks; the
effective MPP is recorded per image), ``fit: crop`` rescales to the target MPP and centre-crops
(pads with white) to the teacher's input, so the teacher sees its training magnification.
The model, device, precision, normalisation and batch loop are slide extraction's
(:mod:`shazam.extraction`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .cohorts import Cohort, check_class_counts, read_checked_table
from .extraction import (
    ExtractParams,
    autocast_dtype,
    embed_batches,
    load_extractor,
    make_loader,
    select_device,
)
from .formats import write_tile_features
from .tasks import LabelError, TaskSpec, join_errors

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
WHITE = 255


# --------------------------------------------------------------------------- listing


def load_tile_dataset(spec: TaskSpec) -> pd.DataFrame:
    """The task's images in a fixed order: ``image_id``, ``path`` (absolute), ``label``, ``y``
    (class index), ``case_id`` (the image itself when none is given) and ``split`` (empty when
    none is given). All problems are reported at once, naming file, line and column."""
    src = Path(spec.images)
    if src.is_dir():
        if spec.splits == "dataset":
            raise LabelError(
                f"task {spec.name}: `splits: dataset` needs a CSV with a split column; "
                f"{src} is a folder"
            )
        return _from_folder(spec, src)
    if src.is_file():
        return _from_csv(spec, src)
    raise LabelError(f"task {spec.name}: images {src} is neither a folder nor a CSV file")


def _from_folder(spec: TaskSpec, root: Path) -> pd.DataFrame:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [d for d in subdirs if d not in spec.classes]
    missing = [c for c in spec.classes if c not in subdirs]
    if unknown or missing:
        raise LabelError(
            f"task {spec.name}: image folder {root} must hold one subfolder per class "
            f"{list(spec.classes)}; "
            + "; ".join(
                x
                for x in (
                    f"missing: {', '.join(missing)}" if missing else "",
                    f"not a class: {', '.join(unknown)}" if unknown else "",
                )
                if x
            )
        )
    rows = []
    for y, c in enumerate(spec.classes):
        files = sorted(
            p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise LabelError(f"task {spec.name}: class folder {root / c} has no images")
        for p in files:
            iid = p.relative_to(root).as_posix()
            rows.append((iid, str(p.resolve()), c, y, iid, ""))
    return pd.DataFrame(rows, columns=["image_id", "path", "label", "y", "case_id", "split"])


def _from_csv(spec: TaskSpec, path: Path) -> pd.DataFrame:
    df = read_checked_table(path, ["path", spec.label_col], "image table", spec.name)
    errors: list[str] = []

    def at(i, col):
        return f"image table {path}, line {i + 2}, column {col}"

    base = path.parent
    ids = df["path"].str.strip()
    seen: dict[str, int] = {}
    abspaths = []
    for i, p in enumerate(ids):
        full = Path(p) if Path(p).is_absolute() else base / p
        abspaths.append(str(full.resolve()))
        if not p:
            errors.append(f"{at(i, 'path')}: empty path")
        elif p in seen:
            errors.append(f"{at(i, 'path')}: duplicate image '{p}' (see line {seen[p] + 2})")
        elif not full.is_file():
            errors.append(f"{at(i, 'path')}: file {full} not found")
        else:
            seen[p] = i
    labels = df[spec.label_col].str.strip()
    errors += spec.class_errors(labels, at)
    cases = df["case_id"].str.strip() if "case_id" in df.columns else ids
    for i, c in enumerate(cases):
        if not c:
            errors.append(f"{at(i, 'case_id')}: empty case id")
    split = (
        df["split"].str.strip().str.lower() if "split" in df.columns else pd.Series([""] * len(df))
    )
    if spec.splits == "dataset":
        if "split" not in df.columns:
            errors.append(f"image table {path}: `splits: dataset` needs a split column")
        else:
            for i, v in enumerate(split):
                if v not in ("train", "val", "test"):
                    errors.append(f"{at(i, 'split')}: '{v}' is not train, val or test")
    if errors:
        raise LabelError(join_errors(errors, f"image table {path} (task {spec.name})"))
    return pd.DataFrame(
        {
            "image_id": ids.to_numpy(),
            "path": abspaths,
            "label": labels.to_numpy(),
            "y": [spec.classes.index(v) for v in labels],
            "case_id": cases.to_numpy(),
            "split": split.to_numpy(),
        }
    )


def tile_cohort(spec: TaskSpec, images: pd.DataFrame) -> Cohort:
    """Cases of a tile task (one per image when the listing has no case ids): ``label``/``y``
    = the case's most frequent class (what folds stratify on), ``n_slides`` = its images."""
    g = images.groupby("case_id", sort=True)
    y = g["y"].agg(lambda v: int(np.bincount(v).argmax()))
    cases = pd.DataFrame({"case_id": y.index, "y": y.to_numpy(), "n_slides": g.size().to_numpy()})
    cases["label"] = [spec.classes[i] for i in cases["y"]]
    cases = cases.reset_index(drop=True)
    if spec.splits != "dataset":
        check_class_counts(spec, cases)
    return Cohort(spec, cases, [], [])


def tile_splits(spec: TaskSpec) -> tuple[Cohort, list[pd.DataFrame]]:
    """Folds of a tile task: the dataset's own split (``splits: dataset``), imported split files
    (ids are case or image ids), or case-level stratified folds from the shared splitter."""
    from .splits import dataset_split, import_splits, make_splits

    images = load_tile_dataset(spec)
    cohort = tile_cohort(spec, images)
    if spec.splits == "dataset":
        per_case = images.groupby("case_id")["split"].agg(lambda v: sorted(set(v)))
        mixed = [f"{c} ({', '.join(v)})" for c, v in per_case.items() if len(v) > 1]
        if mixed:
            raise LabelError(
                f"task {spec.name}: case(s) with images in several splits of {spec.images}: "
                f"{', '.join(mixed[:5])} — a case must stay in one split"
            )
        return cohort, dataset_split(cohort, {c: v[0] for c, v in per_case.items()})
    if spec.splits:
        sheet = pd.DataFrame({"slide_id": images["image_id"], "case_id": images["case_id"]})
        return cohort, import_splits(spec.splits, cohort, sheet)
    return cohort, make_splits(cohort)


# --------------------------------------------------------------------------- loading


def fit_image(img, side: int, fit: str, scale: float):
    """PIL image → uint8 (side, side, 3). ``resize``: the whole image to side × side;
    ``crop``: rescale by ``scale`` (= image MPP / target MPP), then centre-crop, padding with
    white where the image is smaller."""
    from PIL import Image

    img = img.convert("RGB")
    if fit == "resize":
        if img.size != (side, side):
            img = img.resize((side, side), Image.BILINEAR)
        return np.asarray(img)
    w, h = img.size
    if scale != 1:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((w, h), Image.BILINEAR)
    a = np.asarray(img)
    out = np.full((side, side, 3), WHITE, dtype=np.uint8)
    # centre of the image on the centre of the output, each axis cropped or padded
    sy, sx = max(0, (h - side) // 2), max(0, (w - side) // 2)
    dy, dx = max(0, (side - h) // 2), max(0, (side - w) // 2)
    ch, cw = min(h, side), min(w, side)
    out[dy : dy + ch, dx : dx + cw] = a[sy : sy + ch, sx : sx + cw]
    return out


class ImageBatches(torch.utils.data.Dataset):
    """Item i = batch i of the listing as uint8 (B, side, side, 3), its row indices and read
    errors (returned, not raised, as :class:`~shazam.extraction.PatchBatches` does)."""

    def __init__(self, paths: list[str], batch_size: int, side: int, fit: str, scale: float):
        self.paths, self.batch_size, self.side = list(paths), batch_size, side
        self.fit, self.scale = fit, scale

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, b: int):
        from PIL import Image

        lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(self.paths))
        out = np.full((hi - lo, self.side, self.side, 3), WHITE, dtype=np.uint8)
        errors = []
        for k in range(lo, hi):
            try:
                with Image.open(self.paths[k]) as img:
                    out[k - lo] = fit_image(img, self.side, self.fit, self.scale)
            except Exception as e:
                errors.append((k, str(e).splitlines()[0] if str(e) else repr(e)))
        return torch.from_numpy(out), torch.arange(lo, hi), errors


def image_sizes(images: pd.DataFrame) -> np.ndarray:
    """(N, 2) height, width from the image headers; unreadable images are reported at once."""
    from PIL import Image

    sizes = np.zeros((len(images), 2), dtype=np.int32)
    errors = []
    for i, (iid, p) in enumerate(zip(images["image_id"], images["path"], strict=True)):
        try:
            with Image.open(p) as img:
                sizes[i] = img.size[1], img.size[0]
        except Exception as e:
            errors.append(f"image {iid} ({p}): cannot open: {str(e).splitlines()[0]}")
    if errors:
        raise LabelError(join_errors(errors, "the task's images") + "\n  (replace or remove them)")
    return sizes


# --------------------------------------------------------------------------- extraction


def extract_tiles(
    spec: TaskSpec,
    teacher: str,
    out_h5: str | os.PathLike,
    params: ExtractParams | None = None,
    weights: str | os.PathLike | None = None,
    target_mpp: float = 0.5,
    progress: bool = True,
) -> dict:
    """Every level of one teacher for every image of a tile task, in listing order, written
    atomically to one file."""
    from tqdm import tqdm

    from .teachers import get_spec

    t0 = time.perf_counter()
    params = params or ExtractParams()
    tspec = get_spec(teacher)
    images = load_tile_dataset(spec)
    sizes = image_sizes(images)
    levels = tuple(lv for lv in params.levels if lv in tspec.dims)
    device, lock = select_device(params.device)
    ext, identity = load_extractor(tspec, weights, levels, device)
    amp = autocast_dtype(params.precision, device, tspec.precision)
    mpp = spec.mpp if spec.mpp is not None else target_mpp
    if spec.fit == "crop":
        # the teacher's input at the target MPP; the resize_to → crop step does not apply
        side, resize_to = tspec.input_size, None
        eff = np.full(len(images), target_mpp, dtype=np.float32)
    else:
        side = tspec.resize_to or tspec.input_size
        resize_to = tspec.resize_to
        eff = (mpp * np.sqrt(sizes[:, 0].astype(float) * sizes[:, 1]) / side).astype(np.float32)
    dtype = np.float16 if params.dtype == "float16" else np.float32
    feats = {lv: np.zeros((len(images), tspec.dims[lv]), dtype=dtype) for lv in levels}
    ds = ImageBatches(list(images["path"]), params.batch_size, side, spec.fit, mpp / target_mpp)
    loader = make_loader(ds, min(params.num_workers, len(ds)), pin_memory=device.type == "cuda")

    def on_errors(errors):
        row, reason = errors[0]
        raise LabelError(
            f"task {spec.name}: image {images['image_id'].iloc[row]} "
            f"({images['path'].iloc[row]}): cannot decode: {reason}"
        )

    bar = tqdm(
        total=len(images), desc=f"{teacher}/{spec.name}", unit="image", file=sys.stderr,
        disable=not progress, mininterval=5.0,
    )  # fmt: skip
    embed_batches(loader, ext, device, amp, feats, resize_to, on_errors, bar)
    bar.close()
    off = np.abs(np.log2(eff / target_mpp)) > 0.5
    if off.any():
        log.warning(
            "task %s: %d of %d images reach %s at an MPP more than 1.4x away from the target "
            "%.2f (e.g. %s at %.2f µm/px); fit: crop keeps the target MPP",
            spec.name, int(off.sum()), len(images), teacher, target_mpp,
            images["image_id"].iloc[int(np.argmax(off))], float(eff[np.argmax(off)]),
        )  # fmt: skip
    meta = {
        "task": spec.name,
        "classes": json.dumps(list(spec.classes)),
        "teacher": teacher,
        "teacher_arch": tspec.arch,
        "weights": identity,
        "embedding": tspec.embedding,
        "levels": ",".join(levels),
        "precision": str(amp).replace("torch.", "") if amp is not None else "float32",
        "device": device.type,
        "dtype": params.dtype,
        "input_size": tspec.input_size,
        "fit": spec.fit,
        "mpp": mpp,
        "mpp_source": "declared" if spec.mpp is not None else "assumed (target_mpp)",
        "target_mpp": target_mpp,
        "shazam_version": __version__,
    }
    write_tile_features(out_h5, images, feats, sizes, eff, meta)
    if lock is not None:
        lock.close()
    seconds = time.perf_counter() - t0
    return {"task": spec.name, "teacher": teacher, "n_images": len(images),
            "seconds": round(seconds, 3), "device": str(device)}  # fmt: skip
