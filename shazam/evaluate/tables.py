"""The report's tables: per fold, per model (mean ± SD over folds and the pooled out-of-fold
estimate with its bootstrap CI), the paired comparison of the student against the single
teachers, and the cases per fold and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..models import registry
from ..tasks import TaskSpec
from .pooled import NOT_AVERAGED, POOLED_NOTES, pooled_estimates
from .runs import ModelRun, arrays_metrics, prediction_arrays
from .stats import (
    EvalConfig,
    Paired,
    case_clusters,
    corrected_t,
    paired_bootstrap,
    wilcoxon_p,
)

LOWER_IS_BETTER = frozenset({"ibs", "logrank_p"})
# the paired comparisons, in the report's order: the best single teacher (chosen on
# validation) answers "does distilling beat one foundation model"; early and late fusion are
# the fair controls for "does fusing the teachers help" (they see every teacher too); the
# test-chosen teacher is an optimistic oracle, shown for scale
BASELINES = (
    ("val", "best single teacher, chosen on validation"),
    ("concat", "early fusion (concat), every teacher"),
    ("late", "late fusion of the single teachers"),
    ("oracle", "best single teacher on test (oracle, optimistic)"),
)


def per_fold_table(runs: dict[str, ModelRun], spec: TaskSpec) -> pd.DataFrame:
    counts = ("n_cases",)
    if spec.kind == "survival":  # and the cut-off of the log-rank split (training median risk)
        counts += ("n_events", "n_beyond_followup", "risk_cutoff")
    rows = []
    for name, run in runs.items():
        for k, m in enumerate(run.metrics):
            reasons = m.get("reasons") or {}
            for metric in (*spec.record.scalars, *counts):
                rows.append(
                    {
                        "fold": k,
                        "model": name,
                        "metric": metric,
                        "test": m.get(metric),
                        "val": (m.get("val") or {}).get(metric),
                        "reason": reasons.get(metric, ""),
                    }
                )
            if m.get("selected_epoch") is not None:
                rows.append(
                    {
                        "fold": k,
                        "model": name,
                        "metric": "selected_epoch",
                        "test": m["selected_epoch"],
                        "val": None,
                        "reason": "",
                    }
                )
    return pd.DataFrame(rows, columns=["fold", "model", "metric", "test", "val", "reason"])


def summary_table(
    runs: dict[str, ModelRun], pooled: dict[str, pd.DataFrame], spec: TaskSpec, cfg: EvalConfig
) -> pd.DataFrame:
    """Per model and metric: mean ± SD over folds (none for a p-value: :data:`NOT_AVERAGED`),
    the pooled estimate with its bootstrap CI (:func:`~.pooled.pooled_estimates`), the mean
    validation score, why a metric is missing and what a value covers (``note``)."""
    rows = []
    for name, run in runs.items():
        pm, pr, cis = pooled_estimates(pooled[name], run, spec, cfg)
        for metric in spec.record.scalars:
            vals = [m.get(metric) for m in run.metrics]
            ok = [float(v) for v in vals if v is not None]
            reasons = _fold_reasons(run.metrics, metric)
            lo, hi, nv = cis.get(metric, (None, None, 0))
            if metric in pm and pm[metric] is None:
                reasons.append(f"pooled: {pr.get(metric, 'undefined')}")
            averaged = metric not in NOT_AVERAGED
            notes = [NOT_AVERAGED.get(metric), POOLED_NOTES.get(spec.kind, {}).get(metric)]
            rows.append(
                {
                    "model": name,
                    "params": run.params,
                    "metric": metric,
                    "mean": float(np.mean(ok)) if ok and averaged else None,
                    "sd": float(np.std(ok, ddof=1)) if len(ok) > 1 and averaged else None,
                    "n_folds": len(ok),
                    "pooled": pm.get(metric),
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_boot": nv if metric in spec.record.ci_metrics else 0,
                    "val_mean": _mean([(m.get("val") or {}).get(metric) for m in run.metrics])
                    if averaged
                    else None,
                    "missing": "; ".join(reasons),
                    "note": "; ".join([n for n in notes if n] + fold_notes(run.metrics, metric)),
                }
            )
    return pd.DataFrame(rows)


def _fold_reasons(metrics: list[dict], metric: str) -> list[str]:
    """Why a metric is missing, folds with the same reason together."""
    return _by_reason(metrics, metric, missing=True)


def fold_notes(metrics: list[dict], metric: str) -> list[str]:
    """What a defined metric covers where it is not all the fold's cases (``reasons`` beside
    a value: macro-F1 over the classes present, IBS within the training follow-up)."""
    return _by_reason(metrics, metric, missing=False)


def _by_reason(metrics: list[dict], metric: str, missing: bool) -> list[str]:
    by_reason: dict[str, list[int]] = {}
    for k, m in enumerate(metrics):
        if (m.get(metric) is None) != missing:
            continue
        reason = (m.get("reasons") or {}).get(metric, "not computed" if missing else "")
        if reason:
            by_reason.setdefault(reason, []).append(k)
    return [
        f"fold{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}: {reason}"
        for reason, ks in by_reason.items()
    ]


def _mean(vals) -> float | None:
    ok = [float(v) for v in vals if v is not None]
    return float(np.mean(ok)) if ok else None


def choose_baselines(summary: pd.DataFrame, singles: list[str], metric: str) -> dict:
    """The single teacher with the best mean validation score (ties: config order), and the
    best on test (oracle)."""
    s = summary[(summary["metric"] == metric) & summary["model"].isin(singles)].set_index("model")
    sign = -1 if metric in LOWER_IS_BETTER else 1
    out = {}
    for key, col in (("val", "val_mean"), ("oracle", "mean")):
        scored = [
            (sign * s.loc[m, col], -i, m)
            for i, m in enumerate(singles)
            if m in s.index and pd.notna(s.loc[m, col])
        ]
        out[key] = max(scored)[2] if scored else None
    return out


def fusion_controls(runs: dict[str, ModelRun], spec: TaskSpec) -> dict:
    """The fair controls of the student that the task has: early fusion (concat) and late
    fusion, each seeing every teacher."""
    fusion = registry.FAMILY[spec.family].fusion
    return {
        "concat": fusion if fusion in runs else None,
        "late": registry.LATE_FUSION if registry.LATE_FUSION in runs else None,
    }


def compare(
    a: ModelRun,
    b: ModelRun,
    spec: TaskSpec,
    metric: str,
    label: str,
    cfg: EvalConfig,
    cache: dict | None = None,
) -> Paired:
    """``a`` − ``b`` on the same test cases. ``cache``: ``a``'s metric per (fold, resample),
    shared by the comparisons of one student: every comparison draws the same resamples (same
    seed, same test cases), so the student's metric is computed once per draw, not once per
    baseline."""
    unit = spec.record.unit
    fa = [df.set_index(unit) for df in a.predictions]
    fb = [df.set_index(unit) for df in b.predictions]
    ids = []
    for k, (x, y) in enumerate(zip(fa, fb, strict=True)):
        if sorted(x.index) != sorted(y.index):
            raise ValueError(
                f"fold {k}: {a.name} and {b.name} were tested on different cases — were "
                "they trained on the same splits?"
            )
        ids.append(sorted(x.index))
    fa = [x.loc[i].reset_index() for x, i in zip(fa, ids, strict=True)]
    fb = [y.loc[i].reset_index() for y, i in zip(fb, ids, strict=True)]

    def metric_of(tables, memo=None):
        arrays = [prediction_arrays(t, spec) for t in tables]

        def f(k, idx):
            key = (k, idx.tobytes())
            if memo is not None and key in memo:
                return memo[key]
            v = arrays_metrics(arrays[k], spec, idx, only=(metric,))[0].get(metric)
            if memo is not None:
                memo[key] = v
            return v

        return f

    per_fold, mean, (lo, hi, nv) = paired_bootstrap(
        metric_of(fa, cache),
        metric_of(fb),
        [len(i) for i in ids],
        cfg.n_boot,
        cfg.seed,
        cfg.level,
        [case_clusters(t["case_id"]) for t in fa],  # whole cases (None: one row per case)
    )
    if len(per_fold) > spec.n_folds:  # runs of several seeds share test cases: not independent
        p, note = None, "several runs per fold: the corrected t-test replaces the Wilcoxon test"
    else:
        p, note = wilcoxon_p(per_fold)
    corrected = corrected_t(per_fold, holdout_ratio(a, b), cfg.level)
    return Paired(
        a.name, b.name, metric, label, per_fold, mean, lo, hi, nv, p, note,
        corrected, (a.params, b.params),
    )  # fmt: skip


def holdout_ratio(*runs: ModelRun) -> float:
    """n_test / n_train of a run, from the cases each fold's model recorded (``config.json``
    ``n_cases``; train + val are the cases a model is developed on). Without a record,
    ``1 / (k − 1)`` of k-fold cross-validation."""
    for r in runs:
        counts = [c.get("n_cases") for c in r.configs if c.get("n_cases")]
        if counts:
            test = np.mean([n.get("test", 0) for n in counts])
            train = np.mean([n.get("train", 0) + n.get("val", 0) for n in counts])
            if train > 0:
                return float(test / train)
    n = len(runs[0].predictions) if runs else 2
    return 1 / max(n - 1, 1)


def paired_comparisons(
    runs: dict[str, ModelRun], student: str, chosen: dict, spec: TaskSpec, cfg: EvalConfig
) -> list[Paired]:
    """The student against each chosen baseline and control (:data:`BASELINES`); a teacher
    chosen twice is compared once, with both labels."""
    if student not in runs:
        return []
    pairs: list[Paired] = []
    done: dict[str, Paired] = {}
    cache: dict = {}  # the student's metric per (fold, resample), shared by the comparisons
    for key, label in BASELINES:
        b = chosen.get(key)
        if b is None:
            continue
        if b not in done:
            done[b] = compare(runs[student], runs[b], spec, spec.primary_metric, label, cfg, cache)
            pairs.append(done[b])
        else:  # the same teacher: one comparison, both labels
            done[b].label += " (also the best on test)"
    return pairs


COMPARISON_TAIL = [
    "mean_delta", "corrected_low", "corrected_high", "corrected_p", "n_runs", "test_train_ratio",
    "ci_low", "ci_high", "n_boot", "wilcoxon_p", "params_student", "params_baseline", "note",
]  # fmt: skip


def comparison_table(pairs: list[Paired], n_folds: int) -> pd.DataFrame:
    """One row per comparison: Δ per fold file (fold × seed), the verdict's corrected
    interval over runs, the paired case bootstrap (trained models fixed) and the Wilcoxon
    test (one run per fold only), and both models' parameter counts."""
    rows = []
    for p in pairs:
        c = p.corrected
        row = {"comparison": p.label, "student": p.a, "baseline": p.b, "metric": p.metric}
        row.update({f"delta_fold_{k}": p.per_fold[k] for k in range(n_folds)})
        row.update(
            {
                "mean_delta": p.mean,
                "corrected_low": c.low if c else None,
                "corrected_high": c.high if c else None,
                "corrected_p": c.p if c else None,
                "n_runs": c.runs if c else None,
                "test_train_ratio": c.ratio if c else None,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
                "n_boot": p.n_valid,
                "wilcoxon_p": p.wilcoxon_p,
                "params_student": p.params[0],
                "params_baseline": p.params[1],
                "note": "; ".join(x for x in (p.note, c.note if c else "") if x),
            }
        )
        rows.append(row)
    cols = ["comparison", "student", "baseline", "metric"]
    cols += [f"delta_fold_{k}" for k in range(n_folds)]
    return pd.DataFrame(rows, columns=cols + COMPARISON_TAIL)


def dataset_table(splits_dir) -> pd.DataFrame:
    p = Path(splits_dir) / "summary.tsv"
    if not p.exists():
        raise ValueError(f"{p} is missing — run make_splits for this task first")
    return pd.read_csv(p, sep="\t")
