"""The report's answer: the student against the best single teacher chosen on validation and
against the fusion controls, with the verdict's interval and what it covers (the runs and cases
it rests on), and the parameter counts of each side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..models import registry
from .document import Doc, _ci, _fmt, _none, _signed
from .stats import Paired
from .tables import LOWER_IS_BETTER

if TYPE_CHECKING:
    from .narrative import ReportContext


IMAGE_LEVEL_SPLITS = (
    "**Splits are by image, not by case** (`image_level_splits: true`): images cropped from "
    "one slide or patient can sit on both sides of a fold, so every score below is optimistic."
)


def answer(ctx: ReportContext, doc: Doc) -> None:
    doc.h(2, "Answer")
    if ctx.spec.image_level_splits:
        doc.p(IMAGE_LEVEL_SPLITS)
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
        f"**{ctx.words.student_shown}** ({_params(p.params[0])}) reaches "
        f"{ctx.outcome.pooled.format(label=label)} {_estimate(ctx, student)}; the best single "
        f"teacher chosen on validation, **{p.b}** ({_params(p.params[1])}), reaches "
        f"{_estimate(ctx, p.b)}.",
        f"Mean Δ = **{_signed(p.mean)}** ({_interval(ctx, p)}): {_verdict(p, ctx)}.",
        _coverage(ctx, p),
    ]
    for o in ctx.pairs[1:]:
        lines.append(
            f"Against {_against(o)} (**{o.b}**, {_params(o.params[1])}): Δ = "
            f"{_signed(o.mean)} ({_interval(ctx, o)}): {_verdict(o, ctx)}."
        )
    return lines


def _params(n) -> str:
    n = _none(n)
    return "parameters not recorded" if n is None else f"{int(n):,} parameters"


def _against(p: Paired) -> str:
    """A control's role, as the answer names it."""
    if "oracle" in p.label:
        return "the best single teacher on test (an optimistic oracle choice)"
    return p.label.split(",")[0]


def _interval(ctx: ReportContext, p: Paired) -> str:
    """The verdict's interval: corrected over runs, or the case bootstrap of a single run."""
    c, level = p.corrected, int(ctx.cfg.level * 100)
    if c is not None and c.low is not None:
        return (
            f"{level}% CI {_signed(c.low)} to {_signed(c.high)} over {c.runs} runs, corrected "
            f"resampled t-test p = {_fmt(c.p, 'corrected_p')}"
        )
    return (
        f"paired case bootstrap {level}% CI {_signed(p.ci_low)} to {_signed(p.ci_high)}; "
        "one run, so no test over runs"
    )


def _coverage(ctx: ReportContext, p: Paired) -> str:
    """What the verdict's interval covers, in words, with the numbers of runs and cases."""
    c, k, r = p.corrected, ctx.spec.n_folds, ctx.n_repeats
    runs = c.runs if c is not None else k * r
    head = f"The verdict uses all {runs} runs ({r} seed(s) × {k} fold(s)) on {ctx.n_cases} cases. "
    if c is None or c.low is None:
        return head + (
            "With a single run the interval holds the trained models fixed: it covers which "
            "test cases were drawn, not the training set or the seed."
        )
    covers = "the variation of the test cases, the training sets and the training seed across runs"
    if r == 1:
        return head + (
            f"One training seed and one cross-validation: the interval covers {covers} of "
            "these folds (Nadeau–Bengio's variance correction for overlapping training sets), "
            "not another seed or another split; give `training.seeds` several seeds for a "
            "verdict over repeated runs. The paired case bootstrap (table below) holds the "
            "trained models fixed and is narrower."
        )
    same = " The folds are the same in every repetition (imported or dataset splits), so the "
    same += "interval does not cover another split." if ctx.spec.splits else ""
    return head + (
        f"The interval covers {covers} (Nadeau–Bengio's corrected resampled t-test; its "
        f"variance term adds the runs' test/train ratio {c.ratio:.2f} for their overlapping "
        "training sets); the paired case bootstrap (table below) holds the trained models "
        "fixed and is narrower." + (same if ctx.spec.splits else "")
    )


def _verdict(p: Paired, ctx: ReportContext | None = None) -> str:
    level = int(ctx.cfg.level * 100) if ctx is not None else 95
    if not p.excludes_zero:
        return (
            f"the difference is **not distinguishable from 0**: its {level}% CI includes 0 "
            "(no evidence either way at this cohort size)"
        )
    better = p.mean > 0 if p.metric not in LOWER_IS_BETTER else p.mean < 0
    return ("the student is **better**" if better else "the student is **worse**") + (
        f": the {level}% CI of the difference excludes 0"
    )
