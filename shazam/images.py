"""ROI image datasets: the listing and reader of tile tasks (what :mod:`shazam.slides` is to
slide tasks).

A tile task is a set of images with one label each (UniToPatho, HunCRC, CRC-100K-style):
either a folder with one subfolder per class, or a CSV ``path,label[,case_id][,split]`` (paths
relative to the CSV's folder). :func:`load_images` lists them in a fixed order, checking the
whole listing at once; :func:`fit_image` brings one image to a teacher's input side.

Folds keep a case's images together, so the listing must say which images share a case: a
``case_id`` column, or the task's ``case_pattern`` found in each image's path. A listing with
neither is refused unless the task opts in to one case per image (``image_level_splits``):
crops of one slide on both sides of a fold would make every score optimistic.

Another image set listed with a task's settings (an external cohort to predict: its own CSV
or folder in place of the task's, :func:`load_images`'s ``images``) needs neither labels nor
case ids: it is never split. A CSV may lack the label column (or leave a cell empty), a folder
may hold its images without class subfolders; such an image has label ``""`` and class index
``-1``. A label that is given must still be one of the task's classes. Without a ``case_id``
column or a ``case_pattern``, each image is its own case.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .cohorts import read_checked_table
from .tasks import LabelError, TaskSpec, join_errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
WHITE = 255
COLUMNS = ["image_id", "path", "label", "y", "case_id", "split"]


# --------------------------------------------------------------------------- listing


def load_images(spec: TaskSpec, images: str | os.PathLike | None = None) -> pd.DataFrame:
    """The task's images in a fixed order: ``image_id``, ``path`` (absolute), ``label``, ``y``
    (class index), ``case_id`` (the table's column, or what ``case_pattern`` finds in the image's
    path; the image itself under ``image_level_splits``) and ``split`` (empty when none is
    given). All problems are reported at once, naming file, line and column.

    ``images``: another image set (a CSV or a folder) listed with the task's classes and
    ``case_pattern`` instead of the task's own, for prediction: labels and case ids optional
    (see the module's docstring), ``split`` always empty."""
    external = images is not None
    src = Path(images) if external else Path(spec.images)
    if src.is_dir():
        if spec.splits == "dataset" and not external:
            raise LabelError(
                f"task {spec.name}: `splits: dataset` needs a CSV with a split column; "
                f"{src} is a folder"
            )
        return _from_folder(spec, src, external)
    if src.is_file():
        return _from_csv(spec, src, external)
    raise LabelError(f"task {spec.name}: images {src} is neither a folder nor a CSV file")


def _case_source(spec: TaskSpec, has_column: bool, listing: str, external: bool = False) -> str:
    """Where the listing's cases come from: ``column``, ``pattern`` or ``image`` (one case per
    image, only on the task's explicit opt-in); a listing that gives no cases is refused.
    An external set (never split) takes its column, else the pattern, else one case per
    image."""
    if external:
        return "column" if has_column else "pattern" if spec.case_pattern is not None else "image"
    if has_column:
        other = (
            f"case_pattern '{spec.case_pattern}'"
            if spec.case_pattern is not None
            else "`image_level_splits: true`"
            if spec.image_level_splits
            else None
        )
        if other:
            raise LabelError(
                f"task {spec.name}: {listing} has a case_id column and the task also sets "
                f"{other}; which one defines the cases is ambiguous: remove that key to use "
                "the column, or drop the column"
            )
        return "column"
    if spec.case_pattern is not None:
        return "pattern"
    if spec.image_level_splits:
        return "image"
    raise LabelError(
        f"task {spec.name}: {listing} gives no case ids, so every image would be its own case "
        "and crops of one slide or patient would sit on both sides of a fold (train, val and "
        "test; under `splits: dataset`, train and the val part carved from it), which makes "
        "every score optimistic. Fix it in one of three ways: add a case_id column to an "
        "image table (a CSV path,label,case_id); or set the task's case_pattern, a regular "
        "expression searched in each image's path whose first group (else the whole match) is "
        r"the case id, e.g. case_pattern: '(TCGA-\w\w-\w{4})' for a TCGA patient barcode; or, "
        "if every image really comes from a different slide and patient, opt in with "
        "`image_level_splits: true` (the report then says its splits are by image)"
    )


def _pattern_cases(spec: TaskSpec, names, at=None) -> tuple[list[str], list[str]]:
    """The case id ``case_pattern`` finds in each name (``re.search``: the first group when
    the pattern has one, else the whole match), and one error per name it finds none in;
    ``at(i)``, when given, says where name ``i`` is (a table's line and column)."""
    rx = re.compile(spec.case_pattern)
    cases: list[str] = []
    errors: list[str] = []
    for i, name in enumerate(names):
        m = rx.search(name)
        case = (m.group(1) if rx.groups else m.group(0)) if m else None
        where = f"{at(i)}: " if at else ""
        if m is None:
            errors.append(
                f"{where}image '{name}' does not match case_pattern '{spec.case_pattern}'"
            )
        elif not case:
            errors.append(
                f"{where}case_pattern '{spec.case_pattern}' finds an empty case id in '{name}'"
            )
        cases.append(case or "")
    return cases, errors


def _from_folder(spec: TaskSpec, root: Path, external: bool = False) -> pd.DataFrame:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [d for d in subdirs if d not in spec.classes]
    # an external set may lack classes, or (no subfolder at all) be unlabelled
    missing = [] if external else [c for c in spec.classes if c not in subdirs]
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
    source = _case_source(spec, False, f"image folder {root}", external)
    if external:
        groups = [(c, y) for y, c in enumerate(spec.classes) if c in subdirs] or [("", -1)]
        _check_loose_images(spec, root, subdirs)
    else:
        groups = list(zip(spec.classes, range(len(spec.classes)), strict=True))
    rows = []
    for c, y in groups:
        files = sorted(
            p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files and not external:
            raise LabelError(f"task {spec.name}: class folder {root / c} has no images")
        for p in files:
            iid = p.relative_to(root).as_posix()
            rows.append((iid, str(p.resolve()), c, y, iid, ""))
    if not rows:
        raise LabelError(f"task {spec.name}: image folder {root} has no images")
    out = pd.DataFrame(rows, columns=COLUMNS)
    if source == "pattern":
        cases, errors = _pattern_cases(spec, out["image_id"])
        if errors:
            raise LabelError(join_errors(errors, f"image folder {root} (task {spec.name})"))
        out["case_id"] = cases
    return out


def _check_loose_images(spec: TaskSpec, root: Path, subdirs: list[str]) -> None:
    """An external folder holds its images either in class subfolders or loose, not both."""
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in
                   IMAGE_SUFFIXES)  # fmt: skip
    if subdirs and loose:
        raise LabelError(
            f"task {spec.name}: image folder {root} holds images ({loose[0]}, …) beside its "
            f"class subfolders ({', '.join(subdirs)}); move them into their class's folder, "
            "or list the images in a CSV (path[,label])"
        )


def _from_csv(spec: TaskSpec, path: Path, external: bool = False) -> pd.DataFrame:
    need = ["path"] if external else ["path", spec.label_col]
    df = read_checked_table(path, need, "image table", spec.name)
    source = _case_source(spec, "case_id" in df.columns, f"image table {path}", external)
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
    if spec.label_col in df.columns:
        labels = df[spec.label_col].str.strip()
    else:
        labels = pd.Series([""] * len(df), dtype=str)
    given = [i for i, v in enumerate(labels) if v or not external]  # external: labels optional
    errors += spec.class_errors(labels.iloc[given], lambda j, col: at(given[j], col))
    if source == "column":
        cases = df["case_id"].str.strip()
        errors += [f"{at(i, 'case_id')}: empty case id" for i, c in enumerate(cases) if not c]
    elif source == "pattern":
        found, bad = _pattern_cases(spec, ids, lambda i: at(i, "path"))
        cases, errors = pd.Series(found, dtype=str), errors + bad
    else:
        cases = ids
    split = (
        df["split"].str.strip().str.lower()
        if "split" in df.columns and not external
        else pd.Series([""] * len(df))
    )
    if spec.splits == "dataset" and not external:
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
            "y": [spec.classes.index(v) if v else -1 for v in labels],
            "case_id": cases.to_numpy(),
            "split": split.to_numpy(),
        }
    )


# --------------------------------------------------------------------------- reading


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
