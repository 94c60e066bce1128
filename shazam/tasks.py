"""Task definitions (DESIGN §3.0): one :class:`TaskSpec` per configured task, and one
:class:`TaskKind` record per kind of task that says everything the stages branch on — what the
engine optimises, the prediction unit, the primary metric, the report's scalars — so that no
stage keeps its own table of "classification → balanced accuracy".

Pure Python (no torch, no pandas): the workflow checks every task while it parses the DAG.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass


class LabelError(ValueError):
    """A problem in a task's label file or definition; names file, line and column."""


CLASSIFICATION_SCALARS = ("balanced_accuracy", "auc_macro", "f1_weighted", "f1_macro", "accuracy")
SURVIVAL_SCALARS = ("c_index", "c_index_ipcw", "ibs", "td_auc_mean", "logrank_p")


@dataclass(frozen=True)
class TaskKind:
    """What a kind of task means to every stage."""

    objective: str  # what the engine optimises: classification | survival
    unit: str  # one prediction per: case_id (slide tasks) | image_id (tile tasks)
    primary: str  # the metric that selects checkpoints and baselines and answers the report
    scalars: tuple[str, ...]  # the report's per-model metrics, in column order
    # metrics with a pooled bootstrap CI; the others need per-fold training data (IPCW
    # weights, time grids, the training median risk) that has no pooled equivalent
    ci_metrics: tuple[str, ...]
    # the models' family (shazam.models.registry.FAMILY): slide bags, or ROI images (one
    # vector per image, listed by the task itself: no slide sheet)
    family: str = "slide"


TASK_KINDS = {
    "classification": TaskKind(
        "classification",
        "case_id",
        "balanced_accuracy",
        CLASSIFICATION_SCALARS,
        ("balanced_accuracy", "auc_macro"),
    ),
    "survival": TaskKind("survival", "case_id", "c_index", SURVIVAL_SCALARS, ("c_index",)),
    "tile_classification": TaskKind(
        "classification",
        "image_id",
        "balanced_accuracy",
        CLASSIFICATION_SCALARS,
        ("balanced_accuracy", "auc_macro"),
        family="tile",
    ),
}
TASK_TYPES = tuple(TASK_KINDS)
TILE_FITS = ("resize", "crop")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str  # a key of TASK_KINDS
    labels: str | None = None  # slide tasks: case-level label file
    label_col: str = "label"
    classes: tuple[str, ...] = ()
    time_col: str | None = None
    event_col: str | None = None
    event_convention: str = "censorship"  # censorship (1 = censored) | event (1 = event)
    time_unit: str = "months"
    n_bins: int = 4
    folds: int = 5
    val_fraction: float = 0.15
    splits: str | None = None
    seed: int = 42
    unmatched: str = "drop"  # cases in only one of labels/sheet: drop (reported) | error
    # tile_classification: a folder with one subfolder per class, or a CSV path,label[,case_id]
    # [,split]; images are at `mpp` µm/px (None: assumed to be the target MPP) and reach the
    # teacher whole (`fit: resize`) or rescaled to the target MPP and centre-cropped (`crop`)
    images: str | None = None
    mpp: float | None = None
    fit: str = "resize"
    export_pt: bool = False  # also a `.pt` (features, labels) per teacher, the seed's format
    # where a tile task's cases come from when the listing has no case_id column: a regular
    # expression searched in each image's relative path (first group, else the whole match),
    # or the explicit opt-in to one case per image (optimistic splits; the report says so)
    case_pattern: str | None = None
    image_level_splits: bool = False

    @property
    def record(self) -> TaskKind:
        return TASK_KINDS[self.type]

    @property
    def kind(self) -> str:
        """What the engine optimises: ``classification`` (slide or tile) or ``survival``."""
        return self.record.objective

    @property
    def family(self) -> str:
        """``slide`` or ``tile``: which models the task trains (see the model registry)."""
        return self.record.family

    @property
    def is_tile(self) -> bool:
        return self.family == "tile"

    @property
    def primary_metric(self) -> str:
        return self.record.primary

    @property
    def n_out(self) -> int:
        """Outputs of a model's head: class logits, or hazard logits (one per time bin)."""
        return len(self.classes) if self.kind == "classification" else self.n_bins

    @property
    def n_folds(self) -> int:
        """Fold files the task has: 1 when a tile dataset brings its own split."""
        return 1 if self.is_tile and self.splits == "dataset" else self.folds

    @property
    def source(self) -> str:
        """The file or folder that lists the task's data: its label table, or its images."""
        return self.images if self.is_tile else self.labels

    @classmethod
    def from_config(cls, name: str, cfg: dict) -> TaskSpec:
        known = {f for f in cls.__dataclass_fields__ if f != "name"}
        kw = {k: v for k, v in cfg.items() if k in known}
        if "classes" in kw and kw["classes"] is not None:
            kw["classes"] = tuple(str(c) for c in kw["classes"])
        spec = cls(name=name, **kw)
        spec.check()
        return spec

    def check(self) -> None:
        where = f"task {self.name}"
        if self.type not in TASK_KINDS:
            raise LabelError(
                f"{where}: type must be one of {', '.join(TASK_TYPES)}, got {self.type}"
            )
        if self.is_tile:
            self._check_tile(where)
        elif not self.labels:
            raise LabelError(f"{where}: give `labels` (the case-level label file)")
        elif self.case_pattern is not None or self.image_level_splits:
            raise LabelError(
                f"{where}: case_pattern and image_level_splits are keys of tile_classification "
                "tasks (a slide task's cases are the slide sheet's case_id column)"
            )
        if self.kind == "classification" and len(self.classes) < 2:
            raise LabelError(f"{where}: give `classes` (at least 2, in order)")
        if self.type == "survival" and not (self.time_col and self.event_col):
            raise LabelError(f"{where}: survival needs `time_col` and `event_col`")
        if self.event_convention not in ("censorship", "event"):
            raise LabelError(f"{where}: event_convention must be censorship or event")
        if self.folds < 2:
            raise LabelError(f"{where}: folds must be at least 2")
        if not 0 < self.val_fraction < 1:
            raise LabelError(f"{where}: val_fraction must be in (0, 1)")
        if self.unmatched not in ("drop", "error"):
            raise LabelError(f"{where}: unmatched must be drop or error")

    def _check_tile(self, where: str) -> None:
        if not self.images:
            raise LabelError(
                f"{where}: tile_classification needs `images` (a folder with one subfolder "
                "per class, or a CSV with path,label[,case_id][,split])"
            )
        if self.fit not in TILE_FITS:
            raise LabelError(f"{where}: fit must be resize or crop, got {self.fit}")
        if self.mpp is not None and not self.mpp > 0:
            raise LabelError(f"{where}: mpp must be > 0 (or null), got {self.mpp}")
        if self.case_pattern is None:
            return
        if self.image_level_splits:
            raise LabelError(
                f"{where}: give case_pattern (cases found in the image paths) or "
                "`image_level_splits: true` (one case per image), not both"
            )
        if not isinstance(self.case_pattern, str) or not self.case_pattern:
            raise LabelError(f"{where}: case_pattern must be a non-empty regular expression")
        try:
            re.compile(self.case_pattern)
        except re.error as e:
            raise LabelError(
                f"{where}: case_pattern '{self.case_pattern}' is not a valid regular "
                f"expression: {e}"
            ) from None

    def class_errors(self, labels: Iterable[str], at: Callable[[int, str], str]) -> list[str]:
        """One message per label that is not one of the task's classes; ``at(row, column)``
        says where (file, line, column). The one class check of label files and image tables."""
        return [
            f"{at(i, self.label_col)}: label '{v}' is not one of the task's classes "
            f"{list(self.classes)}"
            for i, v in enumerate(labels)
            if v not in self.classes
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> TaskSpec:
        d = json.loads(s)
        d["classes"] = tuple(d.get("classes") or ())
        spec = cls(**d)
        spec.check()
        return spec


def join_errors(errors: list[str], what: str) -> str:
    """All problems of one file in one message (the first 20, then a count)."""
    more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
    return f"{len(errors)} problem(s) in {what}:\n  " + "\n  ".join(errors[:20]) + more
