"""One task's report: read every model's outputs, compute the tables, draw the figures and write
``results/report/{task}/``."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io import atomic_path, write_text_atomic
from ..models import registry
from ..tasks import TaskSpec
from .figures import draw_figures
from .narrative import ReportContext, build_document
from .provenance import software_versions, teacher_facts
from .runs import load_runs, pooled_predictions, single_teachers
from .stats import EvalConfig
from .tables import (
    choose_baselines,
    comparison_table,
    dataset_table,
    fusion_controls,
    paired_comparisons,
    per_fold_table,
    summary_table,
)

__all__ = ["EvalConfig", "evaluate_task"]

DEFAULTS = EvalConfig()


def evaluate_task(
    spec: TaskSpec,
    models: list[str],
    teachers: list[str],
    sheet: pd.DataFrame | None,
    models_dir: str | os.PathLike,
    splits_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    feature_files: list[str | os.PathLike] = (),
    cfg: EvalConfig = DEFAULTS,
    settings: dict | None = None,
    seeds: list[int] | None = None,
    heatmaps: list[str | os.PathLike] | None = None,
) -> dict:
    """Write the task's report folder; returns the headline numbers. ``seeds``: the training
    seeds, one repetition of the cross-validation each (None: one run); ``heatmaps``: the
    heatmap jobs' ``index.tsv`` files, whose test and chosen slides the report shows (None:
    no gallery)."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # a figure that no longer applies must not linger
        old.unlink()
    student = registry.FAMILY[spec.family].student
    seeds = list(seeds or [])
    n_runs = spec.n_folds * max(len(seeds), 1)
    runs = load_runs(spec, models, models_dir, sheet, splits_dir, n_runs)
    singles = single_teachers(spec, models)
    pooled = {n: pooled_predictions(r, spec) for n, r in runs.items()}
    per_fold = per_fold_table(runs, spec)
    summary = summary_table(runs, pooled, spec, cfg)
    chosen = {
        **choose_baselines(summary, singles, spec.primary_metric),
        **fusion_controls(runs, spec),
    }
    pairs = paired_comparisons(runs, student, chosen, spec, cfg)
    tables = {
        "per_fold": per_fold,
        "summary": summary,
        "comparison": comparison_table(pairs, n_runs),
        "dataset": dataset_table(splits_dir),
    }
    focus = [m for m in (student, chosen.get("val")) if m in runs] or [next(iter(runs))]
    ctx = ReportContext(
        spec=spec,
        runs=runs,
        summary=summary,
        pairs=pairs,
        chosen=chosen,
        dataset=tables["dataset"],
        software=software_versions(),
        teachers_df=teacher_facts(feature_files) if feature_files else pd.DataFrame(),
        figures=draw_figures(
            spec, runs, pooled, summary, per_fold, pairs, focus, fig_dir, teachers
        ),
        teachers=teachers,
        singles=singles,
        cfg=cfg,
        settings=settings or {},
        seeds=seeds,
        heatmaps=[Path(p) for p in heatmaps or []],
        report_dir=out,
    )
    for name, df in tables.items():
        with atomic_path(out / f"{name}.tsv") as tmp:
            df.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    doc = build_document(ctx)
    write_text_atomic(out / "report.md", doc.markdown())
    write_text_atomic(out / "report.html", doc.html(f"Shazam report: {spec.name}"))
    return headline(ctx)


def headline(ctx: ReportContext) -> dict:
    """The numbers the CLI logs: the baselines, the figures and the first paired comparison."""
    head = {
        "task": ctx.spec.name,
        "metric": ctx.spec.primary_metric,
        "baseline_val": ctx.chosen.get("val"),
        "baseline_oracle": ctx.chosen.get("oracle"),
        "figures": sorted(ctx.figures),
    }
    if ctx.pairs:
        p = ctx.pairs[0]
        c = p.corrected
        head.update(
            mean_delta=p.mean,
            ci=(p.ci_low, p.ci_high),
            wilcoxon_p=p.wilcoxon_p,
            corrected=(c.low, c.high, c.p) if c else None,
            runs=c.runs if c else None,
        )
    return head
