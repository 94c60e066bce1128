"""Label validation, cohorts and case bags (DESIGN §3.1, §3.4).

A slide task's cohort is the set of cases present in both its label file and the slide sheet;
a tile task's cohort is the cases of its image listing (:mod:`shazam.images`), each labelled
with its most frequent class. :func:`build_cohort` builds either. Labels are validated with
messages that name the file, the line and the column. Internally survival is always ``time``
(float > 0) + ``event`` (bool, True = event observed), whatever the file's convention
(``censorship``: 1 = censored, TCGA/CLAM; ``event``: 1 = event, Patho-Bench).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout
from .slides import read_table
from .tasks import LabelError, TaskSpec, join_errors

# why a case of a cohort has no prediction or no score: the ``note`` of a prediction table
# (shazam.predict), which the external report reads without torch
NO_PATCHES = "no patches"
NO_LABEL = "no label"

# --------------------------------------------------------------------------- labels


def read_checked_table(path: Path, need: list[str], what: str, task: str) -> pd.DataFrame:
    """A label or image table that has the ``need`` columns, else a LabelError naming them."""
    df = read_table(path)
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise LabelError(
            f"{what} {path} (task {task}): missing column(s) {', '.join(missing)}; "
            f"found {', '.join(df.columns)}"
        )
    return df


def load_labels(spec: TaskSpec) -> pd.DataFrame:
    """Validated case-level labels: ``case_id`` + ``label`` (classification, as class index in
    ``spec.classes`` order in ``y``) or ``time`` + ``event`` (survival). All problems at once."""
    path = Path(spec.labels)
    if not path.exists():
        raise LabelError(f"task {spec.name}: label file {path} not found")
    need = ["case_id"] + (
        [spec.label_col] if spec.kind == "classification" else [spec.time_col, spec.event_col]
    )
    df = read_checked_table(path, need, "label file", spec.name)
    errors: list[str] = []

    def at(i, col):
        return f"label file {path}, line {i + 2}, column {col}"

    seen: dict[str, int] = {}
    for i, cid in enumerate(df["case_id"].str.strip()):
        if not cid:
            errors.append(f"{at(i, 'case_id')}: empty case id")
        elif cid in seen:
            errors.append(f"{at(i, 'case_id')}: duplicate case '{cid}' (see line {seen[cid] + 2})")
        else:
            seen[cid] = i
    out = pd.DataFrame({"case_id": df["case_id"].str.strip()})
    if spec.kind == "classification":
        labels = df[spec.label_col].str.strip()
        errors += spec.class_errors(labels, at)
        out["label"] = labels
        out["y"] = [spec.classes.index(v) if v in spec.classes else -1 for v in labels]
    else:
        times = pd.to_numeric(df[spec.time_col].str.strip(), errors="coerce").astype(float)
        for i, (raw, t) in enumerate(zip(df[spec.time_col], times, strict=True)):
            if not math.isfinite(t):
                errors.append(f"{at(i, spec.time_col)}: time '{raw}' is not a number")
            elif t <= 0:
                errors.append(f"{at(i, spec.time_col)}: time {raw} must be > 0")
        codes = df[spec.event_col].str.strip()
        flags = []
        for i, c in enumerate(codes):
            if c in ("0", "1", "0.0", "1.0"):
                flags.append(int(float(c)))
            else:
                errors.append(
                    f"{at(i, spec.event_col)}: '{c}' is not 0 or 1 "
                    f"({spec.event_col} uses the {spec.event_convention} convention: "
                    f"{'1 = censored' if spec.event_convention == 'censorship' else '1 = event'})"
                )
                flags.append(0)
        flags = np.asarray(flags, dtype=int)
        out["time"] = times.to_numpy(dtype=float)
        out["event"] = to_event(flags, spec.event_convention)
    if errors:
        raise LabelError(join_errors(errors, f"label file {path} (task {spec.name})"))
    return out


def to_event(flags: np.ndarray, convention: str) -> np.ndarray:
    """Internal event indicator (True = event observed) from a file's 0/1 column."""
    flags = np.asarray(flags).astype(int)
    if convention == "censorship":
        return flags == 0
    if convention == "event":
        return flags == 1
    raise ValueError(f"unknown event convention {convention}")


# --------------------------------------------------------------------------- cohort


@dataclass
class Cohort:
    task: TaskSpec
    cases: pd.DataFrame  # case_id, n_slides, label/y or time/event; sorted by case_id
    only_labels: list[str]
    only_slides: list[str]

    def report(self) -> str:
        lines = [f"task {self.task.name}: {len(self.cases)} cases in the cohort"]
        for what, ids in (
            ("in the label file but without slides", self.only_labels),
            ("with slides but without labels", self.only_slides),
        ):
            if ids:
                lines.append(
                    f"  {len(ids)} case(s) {what}: {', '.join(ids[:5])}"
                    + (" …" if len(ids) > 5 else "")
                )
        return "\n".join(lines)


def check_class_counts(spec: TaskSpec, cases: pd.DataFrame) -> None:
    """Every class needs at least one case per fold (stratified folds), else a clear stop."""
    counts = cases["label"].value_counts()
    small = [
        f"{c} ({int(counts.get(c, 0))})" for c in spec.classes if counts.get(c, 0) < spec.folds
    ]
    if small:
        raise LabelError(
            f"task {spec.name}: class(es) with fewer cases than folds ({spec.folds}): "
            f"{', '.join(small)}; lower `folds` or merge classes"
        )


def build_cohort(
    spec: TaskSpec,
    sheet: pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    images: pd.DataFrame | None = None,
) -> Cohort:
    """The cohort of any task, from its listing: the slide ``sheet`` of a slide task (with
    its ``labels``, read from the task's label file when not given), or the ``images`` of a
    tile task (:func:`shazam.images.load_images`)."""
    if spec.is_tile:
        if images is None:
            raise ValueError(f"task {spec.name}: a tile task's cohort needs its image listing")
        return image_cohort(spec, images)
    if sheet is None:
        raise ValueError(f"task {spec.name}: --slides is needed for slide-level tasks")
    return slide_cohort(spec, sheet, labels)


def image_cohort(spec: TaskSpec, images: pd.DataFrame) -> Cohort:
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


def slide_cohort(spec: TaskSpec, sheet: pd.DataFrame, labels: pd.DataFrame | None = None) -> Cohort:
    """Cases present in both the label file and the slide sheet, with class/event checks."""
    labels = load_labels(spec) if labels is None else labels
    n_slides = sheet.groupby("case_id").size()
    in_sheet = set(n_slides.index)
    in_labels = set(labels["case_id"])
    only_labels = sorted(in_labels - in_sheet)
    only_slides = sorted(in_sheet - in_labels)
    cases = labels[labels["case_id"].isin(in_sheet)].copy()
    cases["n_slides"] = cases["case_id"].map(n_slides).astype(int)
    cases = cases.sort_values("case_id").reset_index(drop=True)
    cohort = Cohort(spec, cases, only_labels, only_slides)
    if cases.empty:
        raise LabelError(
            f"task {spec.name}: empty cohort — none of the {len(in_labels)} case(s) of label "
            f"file {spec.labels} has a slide in the slide sheet ({len(in_sheet)} case(s)); "
            f"label case ids look like {', '.join(sorted(in_labels)[:3]) or 'nothing'}, sheet "
            f"case ids like {', '.join(sorted(in_sheet)[:3]) or 'nothing'} — check the case_id "
            "columns, or remove the task from `tasks`"
        )
    if spec.unmatched == "error" and (only_labels or only_slides):
        raise LabelError(cohort.report() + "\n  (set unmatched: drop to leave them out)")
    if spec.kind == "classification":
        check_class_counts(spec, cases)
    else:
        if not cases["event"].any():
            raise LabelError(
                f"task {spec.name}: no events among {len(cases)} cases in {spec.labels} — check "
                f"event_col ({spec.event_col}) and event_convention ({spec.event_convention})"
            )
        if cases["event"].sum() < spec.folds:
            raise LabelError(
                f"task {spec.name}: {int(cases['event'].sum())} events for {spec.folds} folds; "
                "every test fold needs at least one event — lower `folds`"
            )
    if len(cases) < spec.folds:
        raise LabelError(f"task {spec.name}: {len(cases)} cases for {spec.folds} folds")
    return cohort


def strata(cases: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """Stratum label per case: the class (classification), or event × time quantile
    (survival; as many time bins per event group as keep every stratum at least ``folds``
    cases, at most 4)."""
    if spec.kind == "classification":
        return cases["y"].to_numpy().astype(int)
    ev = cases["event"].to_numpy().astype(bool)
    t = cases["time"].to_numpy()
    out = np.zeros(len(cases), dtype=int)
    for g, mask in ((0, ~ev), (1, ev)):
        n = int(mask.sum())
        q = max(1, min(4, n // max(spec.folds, 1)))
        if n:
            ranks = t[mask].argsort(kind="stable").argsort(kind="stable")
            out[mask] = g * 10 + (ranks * q // n)
    return out


# --------------------------------------------------------------------------- case bags


def case_bags(
    sheet: pd.DataFrame, teacher: str, cases=None, root: str | os.PathLike = "results"
) -> dict[str, list[str]]:
    """Per case, its slides' feature files for ``teacher`` (the case's bag is their union)."""
    df = sheet if cases is None else sheet[sheet["case_id"].isin(set(cases))]
    bags: dict[str, list[str]] = {}
    for cid, sid in zip(df["case_id"], df["slide_id"], strict=True):
        bags.setdefault(cid, []).append(
            layout.at(layout.FEATURES, root, teacher=teacher, slide=sid)
        )
    return {c: sorted(v) for c, v in sorted(bags.items())}
