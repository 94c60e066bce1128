"""The external report's figures and text (:func:`~.external_report.external_report`): one
function per section, each reading one :class:`ExternalContext`, rendered by :mod:`.document`
like the internal report. A tile task's rows are images: the text counts images and their
cases, as the internal report does; an unlabelled cohort gets the short report of
:func:`build_document` (its predictions, the cases left out, the protocol)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..cohorts import NO_LABEL, NO_PATCHES
from ..metrics import logrank_p
from ..tasks import TaskSpec
from .document import METRIC_LABELS, Doc, _ci, _fmt, _none, _signed
from .external import estimate, scored
from .figures import _plt, _save, fig_metrics, fig_roc, km_groups
from .narrative import WORDING
from .stats import EvalConfig, Paired
from .verdict import _verdict


@dataclass
class ExternalContext:
    """Everything the external report's sections read."""

    spec: TaskSpec
    cohort: str
    student: str
    models: list[str]  # report order: single teachers, late fusion, the others
    metrics: pd.DataFrame  # metrics.tsv
    pairs: list[Paired]  # the student against each baseline (tables.BASELINES' order)
    n_paired: list[tuple[int, int]]  # the rows (cases; images) and cases of each pair
    chosen: dict  # internal, concat, late, oracle: a model or None
    left_out: dict[str, list[str]]  # NO_PATCHES (, NO_LABEL): the rows (cases; images)
    n_listed: tuple[int, int]  # rows and cases in the prediction tables
    n_folds: int  # fold models in the student's ensemble
    cfg: EvalConfig
    figures: dict[str, tuple[Path, str]] = field(default_factory=dict)  # (file, caption)
    km_p: float | None = None  # the log-rank p of the student's median split (survival)
    n_scored_cases: dict[str, int] = field(default_factory=dict)  # model -> cases scored
    labelled: bool = True  # False: no metric, the predictions only
    predicted: pd.DataFrame | None = None  # unlabelled: what each model predicted

    @property
    def tile(self) -> bool:
        """Rows are images (a tile task), not cases."""
        return self.spec.record.unit != "case_id"

    @property
    def rows(self) -> str:
        """What a row is, plural."""
        return "images" if self.tile else "cases"

    @property
    def kept(self) -> str:
        """What the scored rows have."""
        return "a label" if self.tile else "patches and a label"

    def count(self, n_rows: int, n_cases: int | None = None) -> str:
        """``N cases``, or a tile task's ``N cases, M images`` (as the internal report)."""
        if not self.tile:
            return f"{n_rows} cases"
        return f"{'?' if n_cases is None else n_cases} cases, {n_rows} images"

    @property
    def label(self) -> str:
        return METRIC_LABELS[self.spec.primary_metric]

    @property
    def level(self) -> int:
        return int(self.cfg.level * 100)

    def _row(self, model: str, metric: str, estimate: str = "ensemble"):
        m = self.metrics
        rows = m[(m["model"] == model) & (m["estimate"] == estimate) & (m["metric"] == metric)]
        return rows.iloc[0] if len(rows) else None

    def value(self, model: str, metric: str | None = None) -> tuple:
        """(value, CI low, CI high) of a model's ensemble; Nones where undefined."""
        r = self._row(model, metric or self.spec.primary_metric)
        if r is None:
            return None, None, None
        return tuple(_none(None if pd.isna(r[c]) else r[c]) for c in ("value", "ci_low", "ci_high"))

    def n_scored(self, model: str) -> int:
        """The rows scored (cases; a tile task's images: ``n_cases`` of the metric)."""
        r = self._row(model, "n_cases")
        return 0 if r is None or pd.isna(r["value"]) else int(r["value"])

    def scored_text(self, model: str) -> str:
        return self.count(self.n_scored(model), self.n_scored_cases.get(model))

    def estimate_text(self, model: str) -> str:
        v, lo, hi = self.value(model)
        return f"{_fmt(v)} ({self.level}% CI {_ci(lo, hi)})"

    @property
    def internal_pair(self) -> Paired | None:
        """The answer's comparison: against the single teacher chosen internally."""
        b = self.chosen.get("internal")
        return next((p for p in self.pairs if b is not None and p.b == b), None)


# --------------------------------------------------------------------------- figures

CAPTIONS = {
    "metrics": "Every model's metrics on cohort {cohort}. Bars: the ensemble (every fold's "
    "model together); dots: each fold's model alone; black diamond and whiskers: the ensemble "
    "with its case bootstrap {level}% CI (where defined).",
    "roc": "ROC curves of each model's ensemble on cohort {cohort} (several classes: "
    "micro-average of the one-vs-rest curves); the legend gives the AUC with its case "
    "bootstrap {level}% CI.",
    "km": "Kaplan–Meier curves of the cohort's cases that {student}'s ensemble calls high vs "
    "low risk: above or below the median ensemble risk of the cohort's predicted cases. The "
    "split reads the predictions only, no outcome. Log-rank p of the two groups: {p}. (The "
    "internal report splits at each fold's training median risk; a prediction table has no "
    "training cases, so the cohort's own median stands in.)",
}


def draw_figures(ctx: ExternalContext, tables: dict[str, pd.DataFrame], fig_dir: Path):
    """({name: (file, caption)} of the figures that apply, the log-rank p of the student's
    median split or None)."""
    spec, m = ctx.spec, ctx.metrics
    words = {"cohort": ctx.cohort, "level": ctx.level, "student": ctx.student}
    ens = m[m["estimate"] == "ensemble"].assign(value=lambda d: pd.to_numeric(d["value"]))
    summary = ens.assign(mean=ens["value"], pooled=ens["value"])
    folds = m[m["estimate"] != "ensemble"].assign(test=lambda d: pd.to_numeric(d["value"]))
    out = {
        "metrics": fig_metrics(summary, folds, spec, fig_dir / "metrics.png",
                               f"metrics on cohort {ctx.cohort}", f"ensemble, {ctx.level}% CI")
    }  # fmt: skip
    p = None
    if spec.kind == "classification":
        curves = {n: estimate(scored(tables[n], spec), spec) for n in ctx.models}
        out["roc"] = fig_roc(curves, summary, spec, fig_dir / "roc.png", f"ROC on {ctx.cohort}")
    else:
        out["km"], p = fig_median_split(tables[ctx.student], ctx, fig_dir / "km.png")
        words["p"] = "undefined (one group is empty)" if p is None else f"{p:.3g}"
    return {n: (f, CAPTIONS[n].format(**words)) for n, f in out.items()}, p


def fig_median_split(table: pd.DataFrame, ctx: ExternalContext, path: Path):
    """Kaplan–Meier curves of the student's scored cases split at the median ensemble risk
    of the cohort's predicted cases (labelled or not), and their log-rank p (None when all
    fall on one side)."""
    spec = ctx.spec
    cut = float(np.nanmedian(table["risk_rank"].to_numpy(dtype=float)))
    df = scored(table, spec)
    high = df["risk_rank"].to_numpy(dtype=float) > cut
    t, e = df["time"].to_numpy(dtype=float), df["event"].to_numpy(dtype=float).astype(bool)
    try:
        p = logrank_p(t, e, high, "the cohort's median predicted risk")
    except ValueError:
        p = None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    km_groups(ax, df, high)
    ax.set(
        title=f"{ctx.student} on {ctx.cohort}: split at the median predicted risk"
        + ("" if p is None else f"\nlog-rank p = {p:.2g}"),
        xlabel=f"time ({spec.time_unit})",
        ylabel="survival probability",
        ylim=(0, 1.02),
    )
    fig.tight_layout()
    return _save(fig, path), p


# --------------------------------------------------------------------------- sections

FUSED = {  # what late fusion averages, in the protocol's words
    "classification": "class probabilities",
    "survival": "risks rank-normalised within the cohort",
}


def build_document(ctx: ExternalContext, extra: Callable[[Doc], None] | None = None) -> Doc:
    """The report; ``extra(doc)`` adds its blocks after the figures, before the protocol."""
    doc = Doc()
    sections = (question, answer, results, comparison, cases_left_out, figures)
    if not ctx.labelled:
        sections = (question, predictions, cases_left_out, figures)
    for section in sections:
        section(ctx, doc)
    if extra is not None:
        extra(doc)
    protocol(ctx, doc)
    return doc


def question(ctx: ExternalContext, doc: Doc) -> None:
    doc.h(1, f"Task {ctx.spec.name} on cohort {ctx.cohort}: external validation")
    if not ctx.labelled:
        doc.p(
            f"The models trained on task {ctx.spec.name}'s cohort ({ctx.n_folds} fold models "
            f"each), applied unchanged to cohort **{ctx.cohort}**: what do they predict? The "
            "cohort has no labels, so no metric and no comparison between models is computed "
            "(`metrics.tsv` and `comparison.tsv` have their header only): this report lists "
            "the predictions. Give the cohort's labels to validate the models on it."
        )
        return
    doc.p(
        f"The models trained on task {ctx.spec.name}'s cohort ({ctx.n_folds} fold models each), "
        f"applied unchanged to cohort **{ctx.cohort}**: does the distilled student still beat "
        f"the single foundation model chosen on internal validation? Main metric: "
        f"**{ctx.label}**."
    )


def answer(ctx: ExternalContext, doc: Doc) -> None:
    doc.h(2, "Answer")
    head = (
        f"On cohort **{ctx.cohort}** ({ctx.scored_text(ctx.student)} with {ctx.kept}), "
        f"**{ctx.student}** (the ensemble of its {ctx.n_folds} fold models) reaches "
        f"{ctx.label} {ctx.estimate_text(ctx.student)}"
    )
    p = ctx.internal_pair
    if p is None:
        doc.p(head + "; the internal report chose no single teacher (none has a validation "
              "score), so there is no paired comparison.")  # fmt: skip
        return
    n = ctx.count(*ctx.n_paired[ctx.pairs.index(p)])
    head += (
        f"; the best single teacher chosen on internal validation, **{p.b}**, reaches "
        f"{ctx.estimate_text(p.b)}."
    )
    if p.mean is None:
        doc.p(head + f" Their paired Δ is undefined on this cohort ({ctx.label} missing).")
        return
    doc.p(
        head + f" Δ = **{_signed(p.mean)}** (paired case bootstrap {ctx.level}% CI "
        f"{_signed(p.ci_low)} to {_signed(p.ci_high)}, on the {n} both scored): "
        f"{_verdict(p, ctx)}. The trained models are fixed: the interval covers which cases "
        "the cohort drew, not another training set or seed."
    )


def results(ctx: ExternalContext, doc: Doc) -> None:
    spec, m = ctx.spec, ctx.metrics
    doc.h(2, "Metrics per model")
    shown = [s for s in spec.record.scalars if any(ctx.value(n, s)[0] is not None
                                                   for n in ctx.models)]  # fmt: skip
    rows = []
    for name in ctx.models:
        row = {"model": name, ctx.rows: ctx.n_scored(name)}
        if ctx.tile:
            row["cases"] = ctx.n_scored_cases.get(name)
        for s in shown:
            v, lo, hi = ctx.value(name, s)
            cell = _fmt(v, s) + (f" ({_ci(lo, hi)})" if lo is not None else "")
            f = m[(m["model"] == name) & (m["metric"] == s) & (m["estimate"] != "ensemble")]
            vals = pd.to_numeric(f["value"]).dropna()
            if len(vals):
                cell += f"; folds {_fmt(float(vals.min()), s)}–{_fmt(float(vals.max()), s)}"
            row[METRIC_LABELS[s]] = cell
        rows.append(row)
    doc.table(pd.DataFrame(rows))
    doc.p(
        f"The ensemble's value, in brackets its case bootstrap {ctx.level}% CI "
        f"({ctx.cfg.n_boot} resamples, seed {ctx.cfg.seed}) where the internal report has "
        f"one; then the range of the fold models alone. {ctx.rows.capitalize()}: those with "
        f"{ctx.kept}" + ("; cases: theirs" if ctx.tile else "") + ". Full numbers: "
        "`metrics.tsv`" + (" (its `n_cases` counts images)." if ctx.tile else ".")
    )
    gone = m[(m["estimate"] == "ensemble") & m["value"].isna() & (m["reason"].fillna("") != "")]
    if len(gone):
        doc.h(3, "Metrics that are undefined")
        items = []
        for (metric, reason), g in gone.groupby(["metric", "reason"], sort=False):
            who = "every model" if len(g) == len(ctx.models) else ", ".join(g["model"])
            items.append(f"{METRIC_LABELS.get(metric, metric)} ({who}): {reason}")
        doc.ul(items)


def comparison(ctx: ExternalContext, doc: Doc) -> None:
    if not ctx.pairs:
        return
    doc.h(2, "Paired comparison")
    rows = [
        {
            "student − baseline": f"{p.a} − {p.b}",
            "baseline chosen as": p.label,
            ctx.rows: n[0],
            **({"cases": n[1]} if ctx.tile else {}),
            f"Δ {ctx.label}": _signed(p.mean),
            f"{ctx.level}% CI, case bootstrap": f"{_signed(p.ci_low)} to {_signed(p.ci_high)}",
        }
        for p, n in zip(ctx.pairs, ctx.n_paired, strict=True)
    ]
    doc.table(pd.DataFrame(rows))
    short = [f"{p.a} − {p.b}: {p.n_valid} of {ctx.cfg.n_boot} resamples had the metric "
             "defined" for p in ctx.pairs if p.n_valid < ctx.cfg.n_boot]  # fmt: skip
    doc.p(
        f"Δ of {ctx.label} between the two ensembles on the {ctx.rows} both scored. The case "
        f"bootstrap draws {'the cases of those images' if ctx.tile else 'those cases'} with "
        f"replacement ({ctx.cfg.n_boot} times, seed {ctx.cfg.seed}, the same draw for both "
        f"models{WORDING[ctx.spec.family].draw_note}) and recomputes Δ. Early and late "
        "fusion see every teacher, as the student does: they are the controls for whether "
        "fusing the teachers helps. The best single teacher on this cohort is chosen on the "
        "cohort's own outcomes: an oracle, optimistic for the baseline, shown for scale. "
        "Full numbers: `comparison.tsv`." + (f" Note: {'; '.join(short)}." if short else "")
    )


def predictions(ctx: ExternalContext, doc: Doc) -> None:
    """An unlabelled cohort: what each model predicted."""
    doc.h(2, "Predictions per model")
    doc.table(ctx.predicted)
    doc.p(
        f"Per model, its {ctx.rows} with a prediction"
        + (" and their cases" if ctx.tile else " (patches)")
        + (
            ", and how many the ensemble assigns to each class (its arg-max)."
            if ctx.spec.kind == "classification"
            else ", and the distribution of its ensemble's `risk_rank` (the mean of the fold "
            "models' risks rank-normalised within the cohort, in (0, 1]): a rank is relative "
            "to this cohort, not a probability."
        )
    )


def cases_left_out(ctx: ExternalContext, doc: Doc) -> None:
    gone, rows = ctx.left_out, ctx.rows
    if ctx.tile:  # an image set has no slides to lack patches: its reasons that apply
        gone = {reason: ids for reason, ids in gone.items() if ids}
    doc.h(2, f"{rows.capitalize()} left out")
    both = set(gone.get(NO_PATCHES, ())) & set(gone.get(NO_LABEL, ()))
    kept = ctx.n_listed[0] - len(set().union(*gone.values()))
    have = ctx.kept if ctx.labelled else "a prediction"
    listed = (
        f"The prediction tables list {ctx.count(*ctx.n_listed)} of cohort {ctx.cohort}; "
        f"{kept}{' images' if ctx.tile else ''} have {have}."
    )
    if not gone:
        doc.p(listed + " None is left out.")
        return
    fate = " of every metric, never scored on a constant prediction" if ctx.labelled else ""
    doc.p(
        f"{listed} The others are left out{fate}"
        + (f" ({len(both)} {rows[:-1]}(s) are in both lists):" if both else ":")
    )
    what = {
        NO_PATCHES: "without patches (no slide of the case has tissue, or every slide was "
        "skipped: nothing to predict; check the QC table)",
        NO_LABEL: "without a label (the image set gives none)"
        if ctx.tile
        else "without a label (not in the cohort's label file)",
    }
    doc.ul([
        f"**{len(ids)}** {what[reason]}" + (": " + ", ".join(ids[:20]) if ids else "")
        + (" …" if len(ids) > 20 else "")
        for reason, ids in gone.items()
    ])  # fmt: skip


def figures(ctx: ExternalContext, doc: Doc) -> None:
    if not ctx.figures:  # an unlabelled cohort: nothing measured to draw
        return
    doc.h(2, "Figures")
    for path, caption in ctx.figures.values():
        doc.img(path, f"figures/{path.name}", caption)


def protocol(ctx: ExternalContext, doc: Doc) -> None:
    doc.h(2, "Protocol")
    fused = FUSED[ctx.spec.kind]
    ensemble = [
        f"Each model is its {ctx.n_folds} fold models of the internal cross-validation, "
        "applied unchanged (no retraining, no recalibration). The ensemble is "
        + (
            "the mean of the fold models' class probabilities (its arg-max the predicted class)."
            if ctx.spec.kind == "classification"
            else "the mean over fold models of their risks rank-normalised within the cohort "
            "(each fold model's risk is on its own scale)."
        ),
    ]
    if not ctx.labelled:
        doc.ul([*ensemble, "No metric, interval or comparison: the cohort has no labels."])
        return
    items = [
        *ensemble,
        "The single teacher of the answer is the one the internal report chose on its mean "
        f"validation {ctx.label}"
        + (f" ({ctx.chosen['internal']})" if ctx.chosen.get("internal") else "")
        + "; the best single teacher on this cohort is shown as an oracle. "
        f"Late fusion averages the single teachers' {fused} (of their ensembles, and per fold "
        "model); it is not trained.",
    ]
    if ctx.spec.kind == "survival":
        items.append(
            "Survival metrics that need a fold's training cases are missing: the IPCW C-index "
            "(censoring weights), the time-dependent AUC and integrated Brier score (the "
            "training censoring estimate and time grid) and the log-rank p at the training "
            "median risk. A prediction table carries no training cases, and the ensemble's "
            "risk is a rank. Harrell's C-index reads only the order of the risks."
        )
    items.append(
        f"Uncertainty: case-level percentile bootstrap of the ensemble ({ctx.cfg.n_boot} "
        f"resamples, seed {ctx.cfg.seed}, {ctx.level}% CI"
        f"{WORDING[ctx.spec.family].uncertainty_note}); the paired comparison draws the "
        "same cases for both models. The trained models are fixed, so the intervals cover "
        "the sampling of this cohort's cases only."
    )
    doc.ul(items)
