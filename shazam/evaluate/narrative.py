"""The report's text: one function per section, each reading one :class:`ReportContext`.

What differs between kinds of task is said in two small tables: :data:`WORDING` (per family of
models: slide bags or ROI images) and :data:`OUTCOME` (per objective: classification or
survival); the sections read those instead of branching on the kind of task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import __version__
from ..models import registry
from ..tasks import TaskSpec
from .document import METRIC_LABELS, Doc, _ci, _fmt, _none, _signed
from .figures import FIGURE_CAPTIONS
from .gallery import heatmap_gallery
from .pooled import NOT_AVERAGED
from .runs import ModelRun
from .stats import EvalConfig, Paired
from .tables import fold_notes
from .verdict import _params, answer


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
        split_note=". All images of a case are in the same split (each image is its own case "
        "under `image_level_splits: true`).",
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
    seeds: list[int] = field(default_factory=list)  # training seeds (one repetition each)
    heatmaps: list[Path] = field(default_factory=list)  # the heatmap jobs' index.tsv files
    report_dir: Path | None = None  # where the report is written (the gallery's links)

    @property
    def n_repeats(self) -> int:
        return max(len(self.seeds), 1)

    @property
    def design(self) -> str:
        """The resampling design, as the report names it."""
        k = self.spec.n_folds
        one = f"{k}-fold cross-validation" if k > 1 else "the dataset's own train/val/test split"
        if self.n_repeats == 1:
            return one
        how = "repeated" if k > 1 and not self.spec.splits else "the same split(s) trained"
        return f"{one}, {how} with {self.n_repeats} seeds ({k * self.n_repeats} runs)"

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
    design = ctx.design
    doc.h(1, f"Task {spec.name}: does the distilled student beat the best single foundation model?")
    doc.p(
        f"**Question.** For {what} ({ctx.counted}, {design}), is {w.student_is}, distilled from "
        f"{len(ctx.teachers)} pathology foundation model(s) ({', '.join(ctx.teachers)}), better "
        f"than {w.baseline_is} on the single best foundation model's features? Main metric: "
        f"**{ctx.label}**."
    )


def results(ctx: ReportContext, doc: Doc) -> None:
    spec, cfg = ctx.spec, ctx.cfg
    doc.h(2, "Results per model")
    rows = []
    for name in ctx.runs:
        s = ctx.summary[ctx.summary["model"] == name].set_index("metric")
        what = registry.parse(name).describe(ctx.teachers, len(ctx.singles))
        params = _none(s["params"].iloc[0]) if "params" in s else None
        row = {
            "model": name,
            "what it is": what,
            "parameters": "—" if params is None else f"{int(params):,}",
        }
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
        f"Mean ± SD over the {spec.n_folds * ctx.n_repeats} test fold(s) ({ctx.design}); "
        "parameters: trainable, of fold 0's model (late fusion: its single teachers' "
        "together); in brackets the pooled out-of-fold "
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
    level = int(cfg.level * 100)
    for p in ctx.pairs:
        c = p.corrected
        row = {"student − baseline": f"{p.a} − {p.b}", "baseline chosen as": p.label}
        row["parameters"] = " vs ".join(_params(n).split(" ")[0] for n in p.params)
        if len(p.per_fold) <= 10:
            row.update({f"run {k}": _signed(d) for k, d in enumerate(p.per_fold)})
        row["mean Δ"] = _signed(p.mean)
        row[f"{level}% CI over runs (corrected t)"] = (
            f"{_signed(c.low)} to {_signed(c.high)}" if c is not None and c.low is not None else "—"
        )
        row["corrected p"] = _fmt(c.p if c is not None else None, "corrected_p")
        row[f"{level}% CI, case bootstrap"] = f"{_signed(p.ci_low)} to {_signed(p.ci_high)}"
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
        f"Δ of {ctx.label} on each run's test fold (same cases for both models; run = fold "
        "file, fold j of seed r is run r·k + j). The verdict's interval is the corrected "
        "resampled t over the runs (Nadeau & Bengio 2003): mean Δ ± t · √((1/J + n_test/"
        "n_train) · s²), which covers the training sets and seeds as well as the test cases. "
        f"The case bootstrap resamples cases within each test fold ({cfg.n_boot} times, the "
        "same draw for both models) and averages the per-run Δ: it holds the trained models "
        "fixed. Early and late fusion see every teacher, as the student does: they are the "
        "controls for whether fusing the teachers helps. "
        + (f"Note: {'; '.join(notes)}." if notes else "")
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
    dropped = _no_patches(ctx)
    if dropped:
        doc.p(
            f"**Left out: {len(dropped)} case(s) without patches** (every slide of the case "
            "was skipped as unreadable or has no tissue): nothing for a model to look at, so "
            "they are left out of training, selection and the test metrics of every model, "
            "rather than scored on a constant prediction: "
            + ", ".join(f"{c} ({sp})" for c, sp in sorted(dropped.items())[:20])
            + (" …" if len(dropped) > 20 else "")
            + ". Check the QC table (results/qc/tiling.tsv)."
        )


def _no_patches(ctx: ReportContext) -> dict[str, str]:
    """{case: the split(s) it would have had} of the cases left out for having no patches."""
    out: dict[str, set] = {}
    for r in ctx.runs.values():
        for k, m in enumerate(r.metrics):
            for sp, ids in (m.get("no_patches") or {}).items():
                for c in ids:
                    out.setdefault(c, set()).add(f"{sp} of fold {k}")
    return {c: ", ".join(sorted(v)) for c, v in out.items()}


def heatmaps(ctx: ReportContext, doc: Doc) -> None:
    """The gallery of the test and chosen slides' heatmaps (none given: no section)."""
    if ctx.heatmaps:
        heatmap_gallery(doc, ctx.heatmaps, ("test", "chosen"), ctx.report_dir)


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
        + "; the best on test is shown as an oracle, which is optimistic for the baseline. "
        "The single teachers read each teacher's last (high) level; the student reads the "
        "configured levels that every teacher has (an imported teacher has its high level "
        "only; each model's config.json records the levels used), so the controls for fusing "
        "teachers are early fusion (concat) and late fusion, and `shazam-high` is the student "
        "on the high level only.",
        f"Late fusion averages the single teachers' {ctx.outcome.fused}; it is not trained.",
    ]
    if ctx.spec.kind == "survival":
        items.append(_survival_line(ctx))
    items.append(
        f"Uncertainty: mean ± SD over folds; case-level percentile bootstrap of the pooled "
        f"out-of-fold predictions ({cfg.n_boot} resamples, seed {cfg.seed}"
        f"{ctx.words.uncertainty_note}; a case tested in several repetitions is drawn with "
        "all its runs); the verdict: Nadeau–Bengio corrected resampled t-test over every run "
        f"({ctx.design}); besides it a fold-stratified paired case bootstrap (trained models "
        "fixed) and, with one run per fold, the Wilcoxon signed-rank test over folds."
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
        )
        if key in train
    ) + (
        f", seed{'s' if len(ctx.seeds) > 1 else ''} {', '.join(map(str, ctx.seeds))}"
        if ctx.seeds
        else (f", seed {train['seed']}" if "seed" in train else "")
    )


def _split_line(ctx: ReportContext) -> str:
    spec = ctx.spec
    level = ctx.words.split_level
    if spec.image_level_splits:
        level = "image (`image_level_splits: true`: optimistic, see the answer)"
    if spec.n_folds == 1:
        return (
            "Splits: the dataset's own train/val/test assignment (one fold); all images of a "
            "case must share a split."
        )
    return (
        f"Splits: {level}-level, stratified ({ctx.outcome.strata}), "
        f"{spec.n_folds} folds whose test parts partition the cohort; validation is "
        f"{spec.val_fraction:.0%} of each fold's non-test cases (split seed {spec.seed})"
        + ctx.words.split_note
        + (
            f" Repeated {ctx.n_repeats} times: repetition r deals the folds again with split "
            f"seed {spec.seed} + r and trains every model with training seed r of "
            f"{', '.join(map(str, ctx.seeds))}."
            if ctx.n_repeats > 1 and not spec.splits
            else ""
        )
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


SECTIONS = (
    question, answer, results, comparison, missing, figures, dataset, heatmaps, protocol, software,
)  # fmt: skip
