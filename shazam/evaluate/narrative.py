"""The report's text: one function per section, each reading one :class:`ReportContext`.

What differs between kinds of task is said in two small tables: :data:`WORDING` (per family of
models: slide bags or ROI images) and :data:`OUTCOME` (per objective: classification or
survival); the sections read those instead of branching on the kind of task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import __version__
from ..models import registry
from ..tasks import TaskSpec
from .document import METRIC_LABELS, Doc, _ci, _fmt, _none, _signed
from .figures import FIGURE_CAPTIONS
from .pooled import NOT_AVERAGED
from .runs import ModelRun
from .stats import EvalConfig, Paired
from .tables import LOWER_IS_BETTER, fold_notes


@dataclass(frozen=True)
class Wording:
    """How the report speaks of one family of task."""

    items: str  # what a case's data are (and the dataset table's column of their count)
    what: str  # the question's task; {predicting}: the objective's phrase, {classes}
    student_is: str
    baseline_is: str
    student_shown: str  # the student in the answer
    per_step: str  # what training's `accumulate` counts
    split_level: str  # the unit the folds keep together
    split_note: str  # ends the sentence on the folds
    draw_note: str  # how the results' bootstrap draws (after the seed)
    uncertainty_note: str  # the same, in the protocol
    class_counts: str  # before the dataset's counts per class


WORDING = {
    "slide": Wording(
        items="slides",
        what="{predicting} from the slides",
        student_is="the Shazam student",
        baseline_is="an attention-MIL model",
        student_shown="Shazam",
        per_step="bags per step",
        split_level="patient",
        split_note=".",
        draw_note="",
        uncertainty_note="",
        class_counts="",
    ),
    "tile": Wording(
        items="images",
        what="classifying region-of-interest images as {classes}",
        student_is="the Shazam v1 classifier",
        baseline_is="an MLP",
        student_shown="Shazam v1",
        per_step="images per step",
        split_level="case",
        split_note=". All images of a case are in the same split (image-level when the dataset "
        "has no case ids).",
        draw_note="; each draw takes all images of a drawn case",
        uncertainty_note="; a drawn case brings all its images",
        class_counts="cases per class: ",
    ),
}


@dataclass(frozen=True)
class Outcome:
    """How the report speaks of one objective."""

    predicting: str  # {classes}
    strata: str  # what the folds are stratified by
    fused: str  # what late fusion averages
    lower_note: str  # the metrics where lower is better, as a sentence (or nothing)
    pooled: str = "pooled out-of-fold {label}"  # the main metric's pooled estimate, named
    pooled_note: str = ""  # how the pooled estimates differ from all folds' cases at once


OUTCOME = {
    "classification": Outcome("predicting {classes}", "class", "class probabilities", ""),
    "survival": Outcome(
        "predicting survival (time to event)",
        "event × time quantile",
        "within-fold rank-normalised risks",
        "Lower is better for the integrated Brier score and the log-rank p. ",
        "{label}, pooled within folds,",
        "The pooled C-index is pooled within folds: it counts only pairs of cases of the same "
        "test fold (each fold's model has its own risk scale), and its CI resamples cases within "
        "each fold. The log-rank p is not averaged over folds: the value shown is that of all "
        "folds' cases, each split at its own fold's training median risk (the groups of the "
        "Kaplan–Meier figure). ",
    ),
}


@dataclass
class ReportContext:
    """Everything the report's sections read."""

    spec: TaskSpec
    runs: dict[str, ModelRun]
    summary: pd.DataFrame
    pairs: list[Paired]
    chosen: dict  # the single-teacher baselines: "val" and "oracle" (or None)
    dataset: pd.DataFrame
    software: dict[str, str]
    teachers_df: pd.DataFrame
    figures: dict[str, Path]
    teachers: list[str]
    singles: list[str]
    cfg: EvalConfig
    settings: dict

    @property
    def words(self) -> Wording:
        return WORDING[self.spec.family]

    @property
    def outcome(self) -> Outcome:
        return OUTCOME[self.spec.kind]

    @property
    def label(self) -> str:
        """The primary metric, as the report names it."""
        return METRIC_LABELS[self.spec.primary_metric]

    @property
    def n_cases(self) -> int:
        first = self.dataset["fold"] == self.dataset["fold"].min()
        return int(self.dataset.loc[first, "cases"].sum())

    @property
    def counted(self) -> str:
        """The cohort's size: cases, and slides or images where the dataset table counts them."""
        items, d = self.words.items, self.dataset
        if items not in d:
            return f"{self.n_cases} cases"
        n_items = int(d.loc[d["fold"] == d["fold"].min(), items].sum())
        return f"{self.n_cases} cases, {n_items} {items}"

    def first_config(self, key: str):
        """A training config entry as recorded with the models (the first that has it)."""
        return next((c.get(key) for r in self.runs.values() for c in r.configs if c.get(key)), None)


def build_document(ctx: ReportContext) -> Doc:
    doc = Doc()
    for section in SECTIONS:
        section(ctx, doc)
    return doc


# --------------------------------------------------------------------------- sections


def question(ctx: ReportContext, doc: Doc) -> None:
    spec, w = ctx.spec, ctx.words
    classes = " vs ".join(spec.classes)
    what = w.what.format(predicting=ctx.outcome.predicting.format(classes=classes), classes=classes)
    design = (
        f"{spec.n_folds}-fold cross-validation"
        if spec.n_folds > 1
        else "the dataset's own train/val/test split"
    )
    doc.h(1, f"Task {spec.name}: does the distilled student beat the best single foundation model?")
    doc.p(
        f"**Question.** For {what} ({ctx.counted}, {design}), is {w.student_is}, distilled from "
        f"{len(ctx.teachers)} pathology foundation model(s) ({', '.join(ctx.teachers)}), better "
        f"than {w.baseline_is} on the single best foundation model's features? Main metric: "
        f"**{ctx.label}**."
    )


def answer(ctx: ReportContext, doc: Doc) -> None:
    doc.h(2, "Answer")
    for line in _answer_lines(ctx):
        doc.p(line)


def _estimate(ctx: ReportContext, model: str) -> str:
    s = ctx.summary[ctx.summary["metric"] == ctx.spec.primary_metric].set_index("model")
    r = s.loc[model]
    return (
        f"{_fmt(_none(r['pooled']))} (95% CI {_ci(r['ci_low'], r['ci_high'])}; "
        f"mean over folds {_fmt(_none(r['mean']))} ± {_fmt(_none(r['sd']))})"
    )


def _answer_lines(ctx: ReportContext) -> list[str]:
    label, student = ctx.label, registry.FAMILY[ctx.spec.family].student
    if student not in ctx.runs:
        n = len(ctx.teachers)
        best = ctx.chosen.get("val")
        return [
            f"This run has {n} teacher" + ("" if n == 1 else "s") + "; the Shazam student (and "
            "the concat baseline) need two or more, so there is no student to compare."
        ] + (
            [
                f"The best single teacher on validation, **{best}**, reaches "
                f"{ctx.outcome.pooled.format(label=label)} {_estimate(ctx, best)}."
            ]
            if best
            else []
        )
    if not ctx.pairs:
        return [
            f"The student reaches {ctx.outcome.pooled.format(label=label)} "
            f"{_estimate(ctx, student)}; "
            "no single-teacher baseline has a defined validation score, so there is no paired "
            "comparison."
        ]
    p = ctx.pairs[0]
    if p.mean is None:
        return [
            f"The paired difference is undefined on these folds ({label} missing); see "
            "the table of missing metrics below."
        ]
    lines = [
        f"**{ctx.words.student_shown}** reaches {ctx.outcome.pooled.format(label=label)} "
        f"{_estimate(ctx, student)}; the best single teacher chosen on validation, **{p.b}**, "
        f"reaches {_estimate(ctx, p.b)}.",
        f"Mean per-fold Δ = **{_signed(p.mean)}** (paired bootstrap 95% CI "
        f"{_signed(p.ci_low)} to {_signed(p.ci_high)}; Wilcoxon signed-rank p = "
        f"{_fmt(p.wilcoxon_p, 'wilcoxon_p')}): {_verdict(p)}.",
    ]
    if len(ctx.pairs) > 1:
        o = ctx.pairs[1]
        lines.append(
            f"Against the best single teacher on test (**{o.b}**, an optimistic oracle choice): "
            f"Δ = {_signed(o.mean)} (95% CI {_signed(o.ci_low)} to {_signed(o.ci_high)})."
        )
    return lines


def _verdict(p: Paired) -> str:
    if not p.excludes_zero:
        return (
            "the difference is **not distinguishable from 0**: its 95% CI includes 0 "
            "(no evidence either way at this cohort size)"
        )
    better = p.mean > 0 if p.metric not in LOWER_IS_BETTER else p.mean < 0
    return ("the student is **better**" if better else "the student is **worse**") + (
        ": the 95% CI of the difference excludes 0"
    )


def results(ctx: ReportContext, doc: Doc) -> None:
    spec, cfg = ctx.spec, ctx.cfg
    doc.h(2, "Results per model")
    rows = []
    for name in ctx.runs:
        s = ctx.summary[ctx.summary["model"] == name].set_index("metric")
        what = registry.parse(name).describe(ctx.teachers, len(ctx.singles))
        row = {"model": name, "what it is": what}
        for m in spec.record.scalars:
            r = s.loc[m]
            cell = f"{_fmt(_none(r['mean']), m)}"
            if _none(r["sd"]) is not None:
                cell += f" ± {_fmt(r['sd'], m)}"
            if m in NOT_AVERAGED:  # a p-value: the pooled one only
                cell = f"pooled {_fmt(_none(r['pooled']), m)}"
            elif m in spec.record.ci_metrics:
                cell += f" (pooled {_fmt(_none(r['pooled']), m)}, {_ci(r['ci_low'], r['ci_high'])})"
            row[METRIC_LABELS[m]] = cell
        rows.append(row)
    doc.table(pd.DataFrame(rows))
    doc.p(
        f"Mean ± SD over the {spec.n_folds} test fold(s); in brackets the pooled out-of-fold "
        f"estimate with its case-level bootstrap {int(cfg.level * 100)}% CI ({cfg.n_boot} "
        f"resamples, seed {cfg.seed}{ctx.words.draw_note}). {ctx.outcome.pooled_note}"
        f"{ctx.outcome.lower_note}"
        "Full numbers: `summary.tsv` (per model and metric) and `per_fold.tsv` (per fold)."
    )


def comparison(ctx: ReportContext, doc: Doc) -> None:
    if not ctx.pairs:
        return
    cfg = ctx.cfg
    doc.h(2, "Paired comparison")
    rows = []
    for p in ctx.pairs:
        row = {"student − baseline": f"{p.a} − {p.b}", "baseline chosen as": p.label}
        row.update({f"fold {k}": _signed(d) for k, d in enumerate(p.per_fold)})
        row["mean Δ (95% CI)"] = f"{_signed(p.mean)} ({_signed(p.ci_low)} to {_signed(p.ci_high)})"
        row["Wilcoxon p"] = _fmt(p.wilcoxon_p, "wilcoxon_p")
        rows.append(row)
    doc.table(pd.DataFrame(rows))
    notes = sorted({p.note for p in ctx.pairs if p.note})
    notes += [
        f"{p.a} − {p.b}: {p.n_valid} of {cfg.n_boot} resamples had the metric defined on "
        "every fold (the others, e.g. a fold drawn with one class or no events, are left out)"
        for p in ctx.pairs
        if p.n_valid < cfg.n_boot
    ]
    doc.p(
        f"Δ of {ctx.label} on each test fold (same cases for both models). The CI "
        f"resamples cases within each test fold ({cfg.n_boot} times, the same draw for both "
        "models) and averages the per-fold Δ. " + (f"Note: {'; '.join(notes)}." if notes else "")
    )


def missing(ctx: ReportContext, doc: Doc) -> None:
    gone = ctx.summary[ctx.summary["missing"].astype(str).str.len() > 0]
    if len(gone):
        doc.h(3, "Metrics that are undefined on some folds")
        doc.ul(
            [
                f"{r.model}, {METRIC_LABELS.get(r.metric, r.metric)}: {r.missing}"
                for r in gone.itertuples()
            ]
        )
    part = [
        f"{name}, {METRIC_LABELS.get(m, m)}: {'; '.join(notes)}"
        for name, run in ctx.runs.items()
        for m in ctx.spec.record.scalars
        if (notes := fold_notes(run.metrics, m))
    ]
    if part:
        doc.h(3, "Metrics computed on part of a fold's cases")
        doc.ul(part)


def figures(ctx: ReportContext, doc: Doc) -> None:
    doc.h(2, "Figures")
    for name, path in ctx.figures.items():
        doc.img(path, f"figures/{path.name}", FIGURE_CAPTIONS[name])


def dataset(ctx: ReportContext, doc: Doc) -> None:
    spec, d = ctx.spec, ctx.dataset
    doc.h(2, "Dataset")
    if spec.kind == "classification":
        total = ctx.words.class_counts + ", ".join(
            f"{c}: {int(d.loc[d['fold'] == 0, f'n_{c}'].sum())}"
            for c in spec.classes
            if f"n_{c}" in d
        )
    else:
        ev = int(d.loc[d["fold"] == 0, "events"].sum())
        total = f"{ev} events, {ctx.n_cases - ev} censored"
    doc.p(
        f"{ctx.counted} ({total}). Cases per fold and split "
        + (
            "(every case is in the test split of exactly one fold):"
            if spec.n_folds > 1
            else "(the dataset's own split):"
        )
    )
    doc.table(d)


def protocol(ctx: ReportContext, doc: Doc) -> None:
    cfg, chosen = ctx.cfg, ctx.chosen
    doc.h(2, "Protocol")
    budget = _budget(ctx)
    items = [
        _split_line(ctx),
        "Every model trains on the same splits with the same budget"
        + (f" ({budget})" if budget else "")
        + f". The checkpoint is selected on **validation** {ctx.label} (ties: lower "
        "validation loss); test is scored once, after selection.",
        _epochs_line(ctx),
        "The single-teacher baseline of the paired comparison is the one with the best mean "
        f"validation {ctx.label}"
        + (f" ({chosen['val']})" if chosen.get("val") else "")
        + "; the best on test is shown as an oracle, which is optimistic for the baseline.",
        f"Late fusion averages the single teachers' {ctx.outcome.fused}; it is not trained.",
    ]
    if ctx.spec.kind == "survival":
        items.append(_survival_line(ctx))
    items.append(
        f"Uncertainty: mean ± SD over folds; case-level percentile bootstrap of the pooled "
        f"out-of-fold predictions ({cfg.n_boot} resamples, seed {cfg.seed}"
        f"{ctx.words.uncertainty_note}); paired comparison by a fold-stratified paired "
        "bootstrap and the Wilcoxon signed-rank test over folds."
    )
    doc.ul(items)
    if ctx.settings:
        doc.p(
            "Student settings: " + ", ".join(f"{k} = {v}" for k, v in sorted(ctx.settings.items()))
        )


def _budget(ctx: ReportContext) -> str:
    train = ctx.first_config("train") or {}
    return ", ".join(
        f"{what} {train[key]}"
        for key, what in (
            ("epochs", "epochs"),
            ("lr", "AdamW lr"),
            ("weight_decay", "weight decay"),
            ("accumulate", ctx.words.per_step),
            ("seed", "seed"),
        )
        if key in train
    )


def _split_line(ctx: ReportContext) -> str:
    spec = ctx.spec
    if spec.n_folds == 1:
        return (
            "Splits: the dataset's own train/val/test assignment (one fold); all images of a "
            "case must share a split."
        )
    return (
        f"Splits: {ctx.words.split_level}-level, stratified ({ctx.outcome.strata}), "
        f"{spec.n_folds} folds whose test parts partition the cohort; validation is "
        f"{spec.val_fraction:.0%} of each fold's non-test cases (split seed {spec.seed})"
        + ctx.words.split_note
    )


def _epochs_line(ctx: ReportContext) -> str:
    epochs = {
        n: [m.get("selected_epoch") for m in r.metrics]
        for n, r in ctx.runs.items()
        if any(m.get("selected_epoch") is not None for m in r.metrics)
    }
    if not epochs:
        return "Selected epochs: not recorded."
    return "Selected epochs per fold: " + "; ".join(f"{n} {e}" for n, e in epochs.items()) + "."


def _survival_line(ctx: ReportContext) -> str:
    bins = ctx.first_config("bins")
    return (
        f"Survival: discrete-time NLL over {ctx.spec.n_bins} hazard bins whose edges are "
        "quantiles of the event times of each fold's **training** cases"
        + (f" (fold 0: {', '.join(f'{b:.3g}' for b in bins)})" if bins else "")
        + "; risk = −Σ survival. IPCW C-index with τ = 90th percentile of training times; "
        "integrated Brier score and time-dependent AUC on a time grid inside the test "
        "follow-up and below the longest training time, where the training censoring estimate "
        "ends (test cases past it count as event-free over the grid; `per_fold.tsv`'s "
        "n_beyond_followup). "
        "The log-rank p splits test cases at the median risk of the fold's training cases, "
        "recorded at training: per fold, and pooled over folds for the summary and the "
        "Kaplan–Meier figure (p-values are not averaged). The pooled C-index counts pairs "
        "within a fold only."
    )


def software(ctx: ReportContext, doc: Doc) -> None:
    doc.h(2, "Software and teachers")
    sw = ctx.software
    doc.table(pd.DataFrame({"package": list(sw), "version": list(sw.values())}))
    if len(ctx.teachers_df):
        doc.table(ctx.teachers_df)
    doc.p(f"Report written by shazam {__version__}.")


SECTIONS = (question, answer, results, comparison, missing, figures, dataset, protocol, software)
