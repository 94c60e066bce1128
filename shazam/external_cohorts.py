"""External cohorts (config ``external:``): another hospital's slides, or another set of ROI
images, that every task's trained models are applied to (``shazam predict``), and, where the
cohort brings a task's labels, validated on (``shazam external-report``).

A cohort is a name and what it brings::

    external:
      hospital_b:
        slides: /data/b/slides.tsv            # slide tasks: a slide sheet
        labels: {subtype: /data/b/labels.csv}  # per task, optional: the task's own columns
        images: {tiles: /data/b/rois.csv}      # per tile task: a CSV or a folder of images
        tasks: [subtype]                       # optional; default: every task it can serve

Its slides go through the same tiling and extraction rules as the training sheet's, so slide
ids must be unique across all sheets (:func:`check_cohort_sheets`). A cohort that shares a
case or a slide file with the training sheet is refused: its "external" scores would include
cases the models were trained on.

Pure Python (no torch): the workflow checks cohorts while it parses the DAG.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

COHORT_RE = r"[A-Za-z0-9][A-Za-z0-9_-]*"
KEYS = ("slides", "labels", "images", "tasks")


class CohortError(ValueError):
    """A problem in the ``external`` section or an external cohort's sheet."""


@dataclass(frozen=True)
class ExternalCohort:
    name: str
    slides: str | None  # slide sheet (slide tasks)
    labels: dict[str, str] = field(default_factory=dict)  # slide task -> label file
    images: dict[str, str] = field(default_factory=dict)  # tile task -> CSV or folder
    tasks: tuple[str, ...] = ()  # the tasks whose models are applied to it

    @classmethod
    def from_config(cls, name: str, entry: dict, task_specs: dict) -> ExternalCohort:
        """One entry of ``external``, checked against the tasks (``{name: TaskSpec}``)."""
        where = f"config: external.{name}"
        if not re.fullmatch(COHORT_RE, name) or name == "training":
            raise CohortError(
                f"{where}: a cohort name is letters, digits, _ and - only, and not `training`"
            )
        entry = entry or {}
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise CohortError(f"{where}: unknown key(s) {unknown}; known: {list(KEYS)}")
        slides, labels = entry.get("slides"), dict(entry.get("labels") or {})
        images = dict(entry.get("images") or {})
        kinds = {t: s.family for t, s in task_specs.items()}
        for key, family, what in (("labels", "slide", labels), ("images", "tile", images)):
            bad = [t for t in what if kinds.get(t) != family]
            if bad:
                raise CohortError(
                    f"{where}.{key}: {', '.join(bad)} is not a {family} task; {family} tasks: "
                    f"{', '.join(t for t, k in kinds.items() if k == family) or 'none'}"
                )
        if labels and not slides:
            raise CohortError(f"{where}: labels of slide tasks need the cohort's `slides` sheet")
        served = [t for t, k in kinds.items() if (k == "slide" and slides) or t in images]
        tasks = entry.get("tasks")
        if tasks is None:
            tasks = served
        cannot = [t for t in tasks if t not in served]
        if cannot:
            raise CohortError(
                f"{where}.tasks: {', '.join(cannot)} cannot be predicted: "
                + "; ".join(_why_not(t, kinds) for t in cannot)
            )
        if not tasks:
            raise CohortError(
                f"{where}: no task to predict — give `slides` (slide tasks) or `images` "
                "(per tile task)"
            )
        return cls(name, slides, labels, images, tuple(tasks))

    def labels_for(self, task: str) -> str | None:
        return self.labels.get(task)


def _why_not(task: str, kinds: dict) -> str:
    if task not in kinds:
        return f"{task} is not a task (tasks: {', '.join(kinds) or 'none'})"
    if kinds[task] == "slide":
        return f"slide task {task} needs the cohort's `slides` sheet"
    return f"tile task {task} needs `images: {{{task}: CSV or folder}}`"


def parse_cohorts(section: dict | None, task_specs: dict) -> dict[str, ExternalCohort]:
    """Every cohort of the ``external`` section."""
    return {
        name: ExternalCohort.from_config(name, entry, task_specs)
        for name, entry in (section or {}).items()
    }


def check_cohort_sheets(sheets: dict[str, tuple[str, object]], training: str) -> None:
    """Slide ids unique across every sheet, and no external cohort sharing a case or a slide
    file with the ``training`` sheet. ``sheets``: ``{cohort: (sheet path, frame)}`` with the
    frames of :func:`shazam.slides.load_sheet` (the training sheet under its own key). Every
    problem is listed in one error."""
    from .duplicates import listed_twice

    rows = [
        (name, path, i, sid, case, file)
        for name, (path, df) in sheets.items()
        for i, (sid, case, file) in enumerate(
            zip(df["slide_id"], df["case_id"], df["path"], strict=True)
        )
    ]
    errors = []
    first: dict[str, tuple] = {}
    for r in rows:
        if r[3] in first:
            a = first[r[3]]
            errors.append(
                f"slide id {r[3]} is in {_where(a)} and in {_where(r)}: slide ids name every "
                "output file, so they must be unique across the training and external sheets"
            )
        first.setdefault(r[3], r)
    train_cases = set(sheets[training][1]["case_id"]) if training in sheets else set()
    for r in rows:
        if r[0] != training and r[4] in train_cases:
            errors.append(
                f"case {r[4]} of external cohort {r[0]} ({_where(r)}) is also a case of the "
                "training sheet: the models were trained or selected on it, so its scores "
                "would not be external — rename the case if it is another patient, or drop it"
            )
    stats = [_stat(r[5]) for r in rows]
    errors += listed_twice(
        [r[3] for r in rows], [f"{r[0]}:{r[4]}" for r in rows],
        [os.path.normpath(r[5]) if r[5] else "" for r in rows], stats,
        any(s is not None for s in stats), lambda i, col: _where(rows[i], col),
    )  # fmt: skip
    if errors:
        raise CohortError("external cohorts:\n  " + "\n  ".join(dict.fromkeys(errors)))


def _where(r: tuple, col: str = "slide_id") -> str:
    return f"the {r[0]} sheet {r[1]}, line {r[2] + 2}, column {col}"


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None
