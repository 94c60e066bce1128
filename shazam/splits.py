"""Patient-level, stratified, seeded k-fold splits with a validation part (DESIGN §3.4).

Generation deals cases to test folds in one round-robin pass over the cohort sorted by
stratum (class; or event × time quantile), after a seeded shuffle within strata. Because
every stratum is a contiguous block of that order and the dealing never restarts, each
stratum's count per fold is within one case of ideal, and so is any union of neighbouring
strata (all events, all censored) and the fold size. ``StratifiedKFold`` guarantees the first
only. The validation part of a fold is a systematic sample of the same strata-sorted order
of its training cases, so it is stratified too, and it is disjoint from test by construction.

Imported splits (CLAM ``splits_{k}.csv`` or one table with ``fold_k`` columns, ids as case,
slide or image ids) are checked by :func:`check_splits`: the seed's val/test overlap is an
error naming the case. A tile dataset may bring its own split (``splits: dataset``): one fold.
:func:`task_folds` is the one entry for every kind of task.

Repeated cross-validation (``training.seeds`` with several seeds): repetition ``r`` deals the
task's folds again with split seed ``seed + r`` (repetition 0 is the plain split, so adding
seeds never changes existing folds) and its fold files continue the numbering: fold file
``r · k + j`` is fold ``j`` of repetition ``r``. Imported or dataset splits cannot be dealt
again: every repetition reuses them (only the training seed differs).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .cohorts import Cohort, build_cohort, strata
from .images import load_images
from .io import atomic_path
from .slides import read_table
from .tasks import LabelError, TaskSpec

SPLITS = ("train", "val", "test")


def task_folds(
    spec: TaskSpec, sheet: pd.DataFrame | None = None
) -> tuple[Cohort, list[pd.DataFrame]]:
    """The cohort and folds of any task: a slide task's cohort comes from its label file and
    the slide ``sheet`` (required), a tile task's from its image listing. Folds are the tile
    dataset's own split (``splits: dataset``), imported split files (``splits: <path>``; ids
    are case ids, or slide/image ids mapped to their cases), or generated (:func:`make_splits`).
    """
    if spec.is_tile:  # the listing comes from the task itself, not from a slide sheet
        images = load_images(spec)
        cohort = build_cohort(spec, images=images)
        if spec.splits == "dataset":
            return cohort, dataset_split(cohort, _case_split(spec, images))
        sheet = pd.DataFrame({"slide_id": images["image_id"], "case_id": images["case_id"]})
    else:
        cohort = build_cohort(spec, sheet)
    if spec.splits:
        return cohort, import_splits(spec.splits, cohort, sheet)
    return cohort, make_splits(cohort)


def repeat_folds(
    spec: TaskSpec, sheet: pd.DataFrame | None = None, repeat: int = 0
) -> tuple[Cohort, list[pd.DataFrame]]:
    """The folds of repetition ``repeat`` of a task's cross-validation: generated folds are
    dealt again with split seed ``spec.seed + repeat``; imported and dataset splits are the
    same in every repetition."""
    if repeat < 0:
        raise ValueError(f"task {spec.name}: repeat must be >= 0, got {repeat}")
    if repeat and not spec.splits:
        spec = replace(spec, seed=spec.seed + repeat)
    return task_folds(spec, sheet)


def _case_split(spec: TaskSpec, images: pd.DataFrame) -> dict[str, str]:
    """Each case's split from its images' split column; a case in several splits is an error."""
    per_case = images.groupby("case_id")["split"].agg(lambda v: sorted(set(v)))
    mixed = [f"{c} ({', '.join(v)})" for c, v in per_case.items() if len(v) > 1]
    if mixed:
        raise LabelError(
            f"task {spec.name}: case(s) with images in several splits of {spec.images}: "
            f"{', '.join(mixed[:5])} — a case must stay in one split"
        )
    return {c: v[0] for c, v in per_case.items()}


def make_splits(cohort: Cohort) -> list[pd.DataFrame]:
    """k folds, each a frame (case_id, split) over every cohort case, sorted by case_id."""
    spec = cohort.task
    cases = cohort.cases
    k = spec.folds
    rng = np.random.default_rng(spec.seed)
    s = strata(cases, spec)
    # strata-sorted order with a seeded shuffle inside each stratum
    order = np.lexsort((rng.permutation(len(cases)), s))
    offset = int(rng.integers(k))
    test_fold = np.empty(len(cases), dtype=int)
    test_fold[order] = (offset + np.arange(len(cases))) % k
    folds = []
    for f in range(k):
        split = np.full(len(cases), "train", dtype=object)
        split[test_fold == f] = "test"
        train_idx = [i for i in order if test_fold[i] != f]  # strata-sorted
        split[carve_val(train_idx, spec.val_fraction, rng)] = "val"
        folds.append(pd.DataFrame({"case_id": cases["case_id"].to_numpy(), "split": split}))
    check_splits(folds, cohort, source="generated splits")
    return folds


def carve_val(train_idx, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Validation rows: a systematic sample (random start) of ``fraction`` of the training
    rows, which are given in strata-sorted order, so the sample is stratified too."""
    n_val = max(1, int(round(fraction * len(train_idx))))
    u = rng.random()
    pick = np.floor((np.arange(n_val) + u) * len(train_idx) / n_val).astype(int)
    return np.asarray(train_idx)[pick]


def dataset_split(cohort: Cohort, case_split: dict[str, str]) -> list[pd.DataFrame]:
    """The one fold of a dataset that brings its own split (``split`` column of a tile CSV):
    train/test as given; when the dataset has no val part, it is carved from train, stratified,
    seeded, as for generated folds."""
    spec = cohort.task
    cases = cohort.cases
    split = np.array([case_split[c] for c in cases["case_id"]], dtype=object)
    if not (split == "val").any():
        rng = np.random.default_rng(spec.seed)
        s = strata(cases, spec)
        order = np.lexsort((rng.permutation(len(cases)), s))
        train_idx = [i for i in order if split[i] == "train"]
        if train_idx:
            split[carve_val(train_idx, spec.val_fraction, rng)] = "val"
    folds = [pd.DataFrame({"case_id": cases["case_id"].to_numpy(), "split": split})]
    check_splits(folds, cohort, source=f"the split column of {spec.images}", partition=False)
    return folds


def check_splits(folds: list[pd.DataFrame], cohort: Cohort, source: str, partition=True) -> None:
    """Every fold: exactly the cohort's cases, one split each, non-empty train/val/test;
    test folds partition the cohort (each case tested exactly once)."""
    ids = set(cohort.cases["case_id"])
    errors = []
    tested: dict[str, int] = {}
    for f, df in enumerate(folds):
        dup = df["case_id"][df["case_id"].duplicated()].unique()
        for cid in dup[:10]:
            where = sorted(set(df.loc[df["case_id"] == cid, "split"]))
            errors.append(
                f"fold {f}: case '{cid}' is in {' and '.join(where)}"
                + (" (validation and test overlap)" if {"val", "test"} <= set(where) else "")
            )
        unknown = sorted(set(df["case_id"]) - ids)
        if unknown:
            errors.append(
                f"fold {f}: {len(unknown)} case(s) not in the cohort: {', '.join(unknown[:5])}"
            )
        absent = sorted(ids - set(df["case_id"]))
        if absent:
            errors.append(
                f"fold {f}: {len(absent)} cohort case(s) missing: {', '.join(absent[:5])}"
            )
        bad = sorted(set(df["split"]) - set(SPLITS))
        if bad:
            errors.append(f"fold {f}: unknown split name(s) {bad} (expected train, val, test)")
        for sp in SPLITS:
            if not (df["split"] == sp).any():
                errors.append(f"fold {f}: no {sp} cases")
        for cid in df.loc[df["split"] == "test", "case_id"].unique():
            tested[cid] = tested.get(cid, 0) + 1
    if partition and not errors:
        twice = sorted(c for c, n in tested.items() if n > 1)
        never = sorted(ids - set(tested))
        if twice:
            errors.append(
                f"{len(twice)} case(s) in more than one test fold: {', '.join(twice[:5])}"
            )
        if never:
            errors.append(f"{len(never)} case(s) never tested: {', '.join(never[:5])}")
    if errors:
        raise LabelError(f"{source} for task {cohort.task.name}:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------- import


def import_splits(
    path: str | os.PathLike, cohort: Cohort, sheet: pd.DataFrame
) -> list[pd.DataFrame]:
    """Read existing splits: a folder (or file glob base) of CLAM ``splits_{k}.csv`` files, or
    one table with a case/slide id column and ``fold_0..fold_{k-1}`` columns of split names.
    Slide ids are mapped to their cases; a case whose slides land in different splits of a
    fold is an error."""
    path = Path(path)
    slide_to_case = dict(zip(sheet["slide_id"], sheet["case_id"], strict=True))
    case_ids = set(cohort.cases["case_id"])

    def to_case(i: str, where: str) -> str:
        if i in case_ids:
            return i
        if i in slide_to_case:
            return slide_to_case[i]
        raise LabelError(f"{where}: id '{i}' is neither a cohort case nor a slide in the sheet")

    folds: list[pd.DataFrame] = []
    if path.is_dir():
        files = sorted(path.glob("splits_*.csv"), key=lambda p: int(p.stem.split("_")[-1]))
        if not files:
            raise LabelError(f"task {cohort.task.name}: no splits_<k>.csv in {path}")
        for fp in files:
            df = pd.read_csv(fp, dtype=str, keep_default_na=True)
            missing = [c for c in SPLITS if c not in df.columns]
            if missing:
                raise LabelError(f"split file {fp}: missing column(s) {', '.join(missing)}")
            rows = []
            for sp in SPLITS:
                for line, v in df[sp].items():
                    if isinstance(v, str) and v.strip():
                        rows.append(
                            (
                                to_case(
                                    v.strip(), f"split file {fp}, line {line + 2}, column {sp}"
                                ),
                                sp,
                            )
                        )
            folds.append(_collapse(rows, f"split file {fp}"))
    else:
        df = read_table(path)
        id_col = next((c for c in ("case_id", "slide_id") if c in df.columns), None)
        fold_cols = sorted(
            (c for c in df.columns if c.startswith("fold_")), key=lambda c: int(c[5:])
        )
        if id_col is None or not fold_cols:
            raise LabelError(
                f"split table {path}: needs a case_id or slide_id column and fold_0..fold_k "
                f"columns; found {', '.join(df.columns)}"
            )
        for c in fold_cols:
            rows = [
                (
                    to_case(i.strip(), f"split table {path}, line {n + 2}, column {id_col}"),
                    v.strip(),
                )
                for n, (i, v) in enumerate(zip(df[id_col], df[c], strict=True))
                if v.strip()
            ]
            folds.append(_collapse(rows, f"split table {path}, column {c}"))
    if len(folds) != cohort.task.folds:
        raise LabelError(
            f"task {cohort.task.name}: {path} has {len(folds)} folds but the task says "
            f"folds: {cohort.task.folds}"
        )
    check_splits(folds, cohort, source=f"imported splits {path}")
    return folds


def _collapse(rows: list[tuple[str, str]], where: str) -> pd.DataFrame:
    """Case-level rows; several slides of one case in the same split collapse to one row, in
    different splits they stay duplicated so :func:`check_splits` names the case."""
    df = pd.DataFrame(rows, columns=["case_id", "split"]).drop_duplicates()
    return df.sort_values(["case_id", "split"]).reset_index(drop=True)


# --------------------------------------------------------------------------- outputs


def summarize(folds: list[pd.DataFrame], cohort: Cohort) -> pd.DataFrame:
    spec = cohort.task
    cases = cohort.cases.set_index("case_id")
    rows = []
    for f, df in enumerate(folds):
        for sp in SPLITS:
            ids = df.loc[df["split"] == sp, "case_id"]
            sub = cases.loc[ids]
            row = {"fold": f, "split": sp, "cases": len(sub)}
            row["images" if spec.is_tile else "slides"] = int(sub["n_slides"].sum())
            if spec.kind == "classification":
                for c in spec.classes:
                    row[f"n_{c}"] = int((sub["label"] == c).sum())
            else:
                row["events"] = int(sub["event"].sum())
                row["censored"] = int((~sub["event"]).sum())
                row[f"median_time_{spec.time_unit}"] = round(float(sub["time"].median()), 3)
            rows.append(row)
    return pd.DataFrame(rows)


def summary_name(repeat: int = 0) -> str:
    """The splits summary of a repetition: ``summary.tsv`` (repetition 0), then
    ``summary_repeat{r}.tsv``."""
    return "summary.tsv" if repeat == 0 else f"summary_repeat{repeat}.tsv"


def write_splits(
    folds: list[pd.DataFrame], cohort: Cohort, out_dir: str | os.PathLike, repeat: int = 0
) -> list[Path]:
    """``fold_{r·k + j}.csv`` for the folds ``j`` of repetition ``r``, and its summary."""
    out = Path(out_dir)
    paths = []
    for f, df in enumerate(folds):
        p = out / f"fold_{repeat * len(folds) + f}.csv"
        with atomic_path(p) as tmp:
            df.sort_values("case_id").to_csv(tmp, index=False)
        paths.append(p)
    with atomic_path(out / summary_name(repeat)) as tmp:
        summarize(folds, cohort).to_csv(tmp, sep="\t", index=False)
    return paths


def read_fold(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str)
