"""Which slides get an attention heatmap, and the job that draws them with their index
(issue 17; the pictures themselves are :mod:`shazam.heatmaps`').

One job draws the heatmaps of one fold's model (``results/heatmaps/{task}/{model}/fold_{k}/``)
for the slides :func:`select_slides` picks:

* **test** — from the fold file's ``test`` cases only, ``per_class`` cases per group: each of
  the task's classes, or for survival ``event`` and ``censored`` (the label file's event
  column);
* **external:{name}** — from an external cohort's sheet, ``per_class`` cases per group of its
  labels (read with the task's columns: a class the task does not know is the label file's
  usual error), or, without labels, ``per_class × groups`` slides in sheet order;
* **chosen** — slide ids asked for by name, looked up in the sheets given; always drawn.

The draw is deterministic, not random: within a group the cases are taken in ``case_id``
order (an unlabelled cohort's slides in sheet order), those with patches first, so a case
without patches is only taken when its group has too few with patches. A case is shown by its
slide with the most patches (ties: the first in the sheet). The patches are counted as the rows
of the model's first teacher's feature file: the rows the heatmap scores. A slide without
patches (blank, or skipped as unreadable) is kept in the index with the note ``no patches``
and no files.

The job writes each slide's files (:func:`shazam.heatmaps.slide_heatmap`) and, last, its
``index.tsv`` (:data:`INDEX_COLUMNS`), so a folder with an index is a finished job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pandas as pd

from . import layout
from .io import atomic_path
from .tasks import TaskSpec

INDEX = "index.tsv"
INDEX_COLUMNS = ("slide_id", "case_id", "source", "label", "model", "fold", "overlay",
                 "montage", "h5", "geojson", "note")  # fmt: skip
TEST, CHOSEN, EXTERNAL = "test", "chosen", "external:{name}"
NO_PATCHES = "no patches"
FILES = ("overlay", "montage", "h5", "geojson")  # the index's file columns


@dataclass(frozen=True)
class Pick:
    """One selected slide."""

    slide_id: str
    case_id: str
    source: str  # test | external:{name} | chosen
    label: str  # the class, event or censored; "" when unknown
    path: str  # the slide file (the sheet's)
    mpp: float | None  # the sheet's mpp override
    n_patches: int


@dataclass(frozen=True)
class Cohort:
    """A slide sheet (:func:`shazam.slides.load_sheet`'s frame) with its validated labels
    (:func:`shazam.predict.case_labels`; None: unlabelled), and where the sheet came from."""

    source: str  # test | external:{name}
    sheet: pd.DataFrame
    labels: pd.DataFrame | None
    where: str = ""  # the sheet's file, for messages

    def groups(self, spec: TaskSpec) -> dict[str, str]:
        """{case: its group}: the class, or ``event``/``censored``."""
        if self.labels is None:
            return {}
        lab = self.labels
        if spec.kind == "classification":
            return dict(zip(lab["case_id"], lab["label"].astype(str), strict=True))
        ev = lab["event"].astype(int)
        return dict(zip(lab["case_id"], ["event" if e else "censored" for e in ev], strict=True))


def group_names(spec: TaskSpec) -> list[str]:
    """The groups a selection draws ``per_class`` cases from, in order."""
    return list(spec.classes) if spec.kind == "classification" else ["event", "censored"]


def patch_counter(teacher: str, features_root=layout.RESULTS) -> Callable[[str], int]:
    """``count(slide_id)``: the rows of ``teacher``'s feature file of the slide (0 for a slide
    without patches); a missing file is an error naming it."""

    def count(slide_id: str) -> int:
        path = layout.at(layout.FEATURES, features_root, teacher=teacher, slide=slide_id)
        if not os.path.exists(path):
            raise ValueError(
                f"heatmaps: slide {slide_id}: feature file {path} not found — "
                f"extract teacher {teacher}'s features of the slide's cohort first"
            )
        with h5py.File(path, "r") as f:
            return int(f["coords"].shape[0])

    return count


# --------------------------------------------------------------------------- selection


def select_slides(
    spec: TaskSpec,
    count: Callable[[str], int],
    per_class: int,
    test: Cohort | None = None,
    fold: pd.DataFrame | None = None,
    external: Iterable[Cohort] = (),
    slide_ids: Iterable[str] = (),
) -> list[Pick]:
    """The slides to draw: ``test``'s cases in ``fold``'s test split (a fold file's frame:
    ``case_id``, ``split``), each ``external`` cohort's, then ``slide_ids`` (chosen, looked up
    in the sheets given). A slide picked twice is kept once, first come first kept."""
    external = list(external)
    picks: list[Pick] = []
    if test is not None and fold is not None:
        picks += test_slides(spec, test, fold, per_class, count)
    for c in external:
        picks += cohort_slides(spec, c, per_class, count)
    cohorts = [c for c in (test, *external) if c is not None]
    picks += chosen_slides(spec, cohorts, slide_ids, count)
    seen: set[str] = set()
    return [p for p in picks if not (p.slide_id in seen or seen.add(p.slide_id))]


def test_slides(spec, test: Cohort, fold: pd.DataFrame, per_class: int, count) -> list[Pick]:
    """``per_class`` cases per group among the fold's test cases (never train or val)."""
    cases = set(fold.loc[fold["split"].astype(str).str.strip() == "test", "case_id"].astype(str))
    return _by_group(spec, test, cases, per_class, count)


def cohort_slides(spec, cohort: Cohort, per_class: int, count) -> list[Pick]:
    """A cohort's ``per_class`` cases per group of its labels; unlabelled, its first
    ``per_class × groups`` slides in sheet order (with patches first)."""
    if cohort.labels is not None:
        return _by_group(spec, cohort, set(cohort.sheet["case_id"]), per_class, count)
    want = per_class * len(group_names(spec))
    got, empty = [], []
    for row in cohort.sheet.itertuples():
        if len(got) == want:
            break
        pick = _pick(row, cohort.source, "", count)
        (got if pick.n_patches else empty).append(pick)
    return got + empty[: want - len(got)]


def chosen_slides(spec, cohorts: list[Cohort], slide_ids: Iterable[str], count) -> list[Pick]:
    """The slides asked for by id, each from the first sheet that has it (its label from that
    cohort's labels, when it has them); an id in no sheet is an error naming the sheets."""
    out = []
    for sid in slide_ids:
        for c in cohorts:
            rows = c.sheet[c.sheet["slide_id"] == sid]
            if len(rows):
                row = next(rows.itertuples())
                label = c.groups(spec).get(str(row.case_id), "")
                out.append(_pick(row, CHOSEN, label, count))
                break
        else:
            where = ", ".join(c.where or c.source for c in cohorts) or "none given"
            raise ValueError(
                f"heatmaps: slide {sid} is in none of the slide sheets given "
                f"({where}) — check the slide id or give its cohort's sheet"
            )
    return out


def _by_group(spec, cohort: Cohort, cases: set[str], per_class: int, count) -> list[Pick]:
    groups = cohort.groups(spec)
    slides = {c: df for c, df in cohort.sheet.groupby("case_id", sort=False)}
    out = []
    for g in group_names(spec):
        got, empty = [], []
        for case in sorted(c for c in cases if groups.get(c) == g and c in slides):
            if len(got) == per_class:
                break
            best = max((_pick(r, cohort.source, g, count) for r in slides[case].itertuples()),
                       key=lambda p: p.n_patches)  # fmt: skip
            (got if best.n_patches else empty).append(best)
        out += got + empty[: per_class - len(got)]
    return out


def _pick(row, source: str, label: str, count) -> Pick:
    mpp = getattr(row, "mpp", None)
    mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
    return Pick(str(row.slide_id), str(row.case_id), source, label, str(row.path), mpp,
                count(str(row.slide_id)))  # fmt: skip


# --------------------------------------------------------------------------- the job


def draw_selected(
    fold_dir: str | os.PathLike,
    picks: list[Pick],
    out_dir: str | os.PathLike,
    features_root=layout.RESULTS,
    patches: str | None = None,
    top_k: int = 8,
    geojson: bool = False,
    rows: int | None = None,
    device: str = "cpu",
    fold_model=None,
    log: Callable[[str], None] = lambda s: None,
) -> pd.DataFrame:
    """Draw every pick's heatmap with the model of ``fold_dir`` into ``out_dir`` and write
    ``index.tsv`` there, last; returns the index. ``patches``: the patch file's path with
    ``{slide}`` (the patch geometry; default: the feature files' attrs)."""
    from .heatmaps import SCORE_ROWS, load_fold_model, slide_heatmap

    fm = fold_model or load_fold_model(fold_dir, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for p in picks:
        row = {"slide_id": p.slide_id, "case_id": p.case_id, "source": p.source,
               "label": p.label, "model": fm.name, "fold": fm.fold, **dict.fromkeys(FILES, ""),
               "note": ""}  # fmt: skip
        if not p.n_patches:
            row["note"] = NO_PATCHES
        else:
            hm = slide_heatmap(
                fold_dir, p.slide_id, out, slide_path=p.path, features_root=features_root,
                patches_h5=patches.format(slide=p.slide_id) if patches else None, top_k=top_k,
                geojson=geojson, rows=rows or SCORE_ROWS, device=device, mpp=p.mpp,
                fold_model=fm,
            )  # fmt: skip
            row.update({k: Path(f).name for k, f in hm.files.items()})
        log(f"{p.source} slide {p.slide_id} ({p.label or 'no label'}): {row['note'] or 'drawn'}")
        index.append(row)
    df = pd.DataFrame(index, columns=list(INDEX_COLUMNS))
    with atomic_path(out / INDEX) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return df


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """An ``index.tsv`` with its folder in ``dir`` (file columns: names in that folder)."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"heatmap index {path}: missing column(s) {', '.join(missing)} — "
                         "redraw the heatmaps with this version of shazam")  # fmt: skip
    df["dir"] = str(Path(path).parent)
    return df
