"""The reports' gallery of attention heatmaps, "Where the models look": the overlays and the
student's montage that the heatmap jobs listed in their ``index.tsv``
(:mod:`shazam.heatmap_select`), as blocks of a :class:`~.document.Doc`.

A slide is shown once per model: by the lowest fold whose job drew it (a chosen slide is
drawn by every fold's model; a test slide by its own fold's only). The slides of a source
(``test``, ``chosen``, ``external:{name}``) are taken in turn from each label, so a capped
group still shows every class; at most ``per_group`` slides of a source are embedded (the
HTML embeds every picture), and the text says how many more the folders hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..heatmap_select import FILES, read_index
from ..models import registry
from .document import Doc

PER_GROUP = 8  # slides embedded per source
EMBED_PX = 960  # the HTML embeds each heatmap as a JPEG this wide at most; the PNG stays whole
TITLE = "Where the models look"
SCORE = (
    "Each overlay colours a slide's patches by the model's attention × N (N: the slide's "
    "patches; 1 = uniform attention, above 1 the model weighs the patch more than the "
    "average one), on the slide's thumbnail. For a single-teacher ABMIL or early fusion it "
    "is the gated-attention softmax over the patches; for the Shazam student it is the "
    "gate-weighted mean of the teachers' attention at the top level: a summary of where the "
    "student reads, not an exact attribution through its self-attention blocks. The "
    "student's montage shows the patches it weighs most (first row) and least (second row)."
)
STUDENT_NOTE = "gate-weighted mean of the teachers' top-level attention, a summary"


def read_indexes(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The rows of every ``index.tsv``, each with its folder in ``dir``; a file an index
    names but its folder lacks is an error naming both."""
    frames = []
    for p in paths:
        if not Path(p).exists():
            raise ValueError(f"heatmap index {p} not found — run the heatmap job first")
        df = read_index(p)
        for col in FILES:
            for f in df[col][df[col] != ""]:
                if not (Path(p).parent / f).exists():
                    raise ValueError(f"heatmap index {p} names {f}, which its folder lacks — "
                                     "rerun the heatmap job")  # fmt: skip
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def heatmap_gallery(
    doc: Doc,
    indexes: Iterable[str | os.PathLike],
    sources: Iterable[str] | None = ("test", "chosen"),
    rel_to: str | os.PathLike | None = None,
    per_group: int = PER_GROUP,
    level: int = 2,
) -> int:
    """Add the gallery of the heatmap ``indexes``' slides of ``sources`` (None: every source)
    to ``doc``; returns the number of slides shown (none: nothing added). ``rel_to``: the
    report's folder, which the Markdown's picture links are relative to (None: the paths as
    the indexes give them); ``level``: the section heading's."""
    df = read_indexes(indexes)
    if not len(df):
        return 0
    if sources is not None:
        df = df[df["source"].isin(list(sources))]
    if not len(df):
        return 0
    doc.h(level, TITLE)
    doc.p(SCORE)
    shown = 0
    for source, rows in df.groupby("source", sort=False):
        doc.h(level + 1, _heading(source))
        shown += _group(doc, rows, rel_to, per_group)
    return shown


def _group(doc: Doc, rows: pd.DataFrame, rel_to, per_group: int) -> int:
    drawn = rows[rows["note"] == ""]
    empty = sorted(set(rows["slide_id"]) - set(drawn["slide_id"]))
    slides = _in_turn(drawn)
    for sid in slides[:per_group]:
        _slide(doc, drawn[drawn["slide_id"] == sid], rel_to)
    more = len(slides) - per_group
    if more > 0:
        top = _rel(os.path.commonpath([os.path.abspath(d) for d in rows["dir"]]), rel_to)
        doc.p(f"{more} more slide(s) of this group are drawn under `{top}` (a folder per "
              "model and fold, each listing its slides in index.tsv).")  # fmt: skip
    if empty:
        doc.p(f"Without patches (nothing to draw): {', '.join(empty)}.")
    return min(len(slides), per_group)


def _slide(doc: Doc, rows: pd.DataFrame, rel_to) -> None:
    """One slide: each model's overlay (its lowest fold), the student first, then its
    montage."""
    rows = rows.assign(_fold=pd.to_numeric(rows["fold"], errors="coerce")).sort_values(
        ["_fold", "fold"], kind="stable"
    )
    first = rows.drop_duplicates("model")
    order = sorted(range(len(first)), key=lambda i: not _is_student(first["model"].iloc[i]))
    first = first.iloc[order]
    for r in first.itertuples():
        what = _about(r)
        note = f" ({STUDENT_NOTE})" if _is_student(r.model) else ""
        doc.img(Path(r.dir) / r.overlay, _rel(Path(r.dir) / r.overlay, rel_to),
                f"{what}: attention × N, 1 = uniform{note}.", EMBED_PX)  # fmt: skip
    for r in first.itertuples():
        if _is_student(r.model) and r.montage:
            doc.img(Path(r.dir) / r.montage, _rel(Path(r.dir) / r.montage, rel_to),
                    f"{_about(r)}: the patches with the highest (first row) and lowest "
                    "(second row) attention, labelled with attention × N.", EMBED_PX)  # fmt: skip


def _about(r) -> str:
    label = f", {r.label}" if r.label else ""
    return f"Slide {r.slide_id} (case {r.case_id}{label}) under {r.model}, fold {r.fold}"


def _in_turn(rows: pd.DataFrame) -> list[str]:
    """The slides in first-seen order, taken in turn from each label."""
    slides = rows.drop_duplicates("slide_id")
    labels = list(dict.fromkeys(slides["label"]))
    rank = slides.groupby("label", sort=False).cumcount()
    key = list(zip(rank, [labels.index(v) for v in slides["label"]], strict=True))
    return [s for _, s in sorted(zip(key, slides["slide_id"], strict=True), key=lambda t: t[0])]


def _is_student(model: str) -> bool:
    try:
        m = registry.parse(model)
    except ValueError:
        return False
    return m.role == "student" and m.ablation is None


def _heading(source: str) -> str:
    if source == "test":
        return "Test slides (each under its own fold's models)"
    if source == "chosen":
        return "Chosen slides"
    if source.startswith("external:"):
        return f"External cohort {source.split(':', 1)[1]}"
    return source


def _rel(path, rel_to) -> str:
    return os.path.relpath(path, rel_to) if rel_to is not None else os.fspath(path)
