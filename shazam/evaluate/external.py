"""External validation: the internal report's metrics and paired comparison on a labelled new
cohort, from the prediction tables of :func:`shazam.predict.predict_cohort`.

* :func:`external_metrics` — one model's metrics on the cohort, for the ensemble (with the
  report's case bootstrap CI for its CI metrics) and for each fold's model alone; the
  functions training and the report use (:func:`~.runs.arrays_metrics`), never a metric of
  our own. Survival metrics that need a fold's training data (IPCW C-index, time-dependent
  AUC, IBS, the log-rank split at the training median risk) are missing with the reason:
  a prediction table carries no training cases;
* :func:`external_pair` — the student's ensemble against a baseline's on the same
  cases: the report's paired case bootstrap of Δ (:func:`~.tables.compare`), one "fold" (the
  cohort), so no Wilcoxon or corrected t over runs;
* :func:`internal_baseline` — the single teacher chosen on internal validation (the report's
  ``summary.tsv``), the baseline the comparison should use: choosing it on the external
  cohort would be the optimistic oracle.

Only the cases with a prediction (patches) and a label count; a tile task's rows are its
images (``n_cases`` counts them), and its bootstrap draws whole cases with all their images.
"""

from __future__ import annotations

import os

import pandas as pd

from ..cohorts import NO_PATCHES
from ..tasks import TaskSpec
from .runs import ModelRun, arrays_metrics, prediction_arrays, single_teachers
from .stats import EvalConfig, Paired, bootstrap_ci, case_clusters
from .tables import choose_baselines, compare

COUNTS = ("n_cases", "n_events")  # a tile task's n_cases counts its rows: images
METRIC_COLUMNS = ["model", "estimate", "metric", "value", "ci_low", "ci_high", "n_boot", "reason"]


def predicted(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with a prediction: all but the cases without patches."""
    return table[~table["note"].fillna("").str.contains(NO_PATCHES)].reset_index(drop=True)


def scored(table: pd.DataFrame, spec: TaskSpec) -> pd.DataFrame:
    """The rows a metric reads: predicted (patches) and labelled. A tile task's table
    (:func:`~shazam.predict.predict_tiles`) has a row per image, its truth in ``label``."""
    truth = "label" if spec.kind == "classification" else "time"
    if truth not in table:
        how = "an image set with labels" if spec.family == "tile" else "the cohort's label file"
        raise ValueError(f"task {spec.name}: the prediction table has no labels — predict "
                         f"with {how} to validate")  # fmt: skip
    table = predicted(table)
    return table[table[truth].notna()].reset_index(drop=True)


def estimate(table: pd.DataFrame, spec: TaskSpec, fold: int | None = None) -> pd.DataFrame:
    """The table in the report's prediction columns (``label`` + ``prob_{class}``, or
    ``time``, ``event`` and ``risk``): the ensemble's (``risk`` = ``risk_rank``), or fold
    ``fold``'s alone. A tile task's rows keep their ``image_id`` (the report's unit)."""
    sfx = "" if fold is None else f"_fold{fold}"
    df = table[list(dict.fromkeys([spec.record.unit, "case_id"]))].copy()
    if spec.kind == "classification":
        df["label"] = table["label"].astype(str)
        for c in spec.classes:
            df[f"prob_{c}"] = table[f"prob_{c}{sfx}"].to_numpy(dtype=float)
    else:
        df["time"] = table["time"].to_numpy(dtype=float)
        df["event"] = table["event"].astype(int).to_numpy()
        df["risk"] = table["risk_rank" if fold is None else f"risk{sfx}"].to_numpy(dtype=float)
    return df


def _folds(table: pd.DataFrame) -> list[int]:
    ks = {int(c.rsplit("_fold", 1)[1]) for c in table.columns if "_fold" in c}
    return sorted(ks)


def external_metrics(
    table: pd.DataFrame, spec: TaskSpec, model: str, cfg: EvalConfig | None = None
) -> pd.DataFrame:
    """One row per estimate (``ensemble``, ``fold_{k}``) and metric: ``value``, the reason
    when it is missing, and for the ensemble's CI metrics the case bootstrap CI (a tile
    task's table, a row per image: whole cases resampled, all images of each drawn case, as
    the internal report does; one case per image is the image bootstrap)."""
    cfg = cfg or EvalConfig()
    table = scored(table, spec)
    rows = []
    for fold in [None, *_folds(table)]:
        arrays = prediction_arrays(estimate(table, spec, fold), spec)
        m, r = arrays_metrics(arrays, spec)
        cis = {}
        if fold is None and len(table):
            only = spec.record.ci_metrics

            def stat(idx, arrays=arrays, only=only):
                return arrays_metrics(arrays, spec, idx, only=only)[0]

            cis = bootstrap_ci(stat, len(table), cfg.n_boot, cfg.seed, cfg.level,
                               clusters=case_clusters(table["case_id"]))  # fmt: skip
        for metric in (*spec.record.scalars, *(c for c in COUNTS if c in m)):
            lo, hi, nb = cis.get(metric, (None, None, 0))
            rows.append({"model": model, "estimate": "ensemble" if fold is None else
                         f"fold_{fold}", "metric": metric, "value": m.get(metric),
                         "ci_low": lo, "ci_high": hi, "n_boot": nb,
                         "reason": r.get(metric, "")})  # fmt: skip
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def external_pair(
    student: pd.DataFrame,
    baseline: pd.DataFrame,
    spec: TaskSpec,
    names: tuple[str, str],
    label: str = "best single teacher, chosen on internal validation",
    cfg: EvalConfig | None = None,
) -> tuple[Paired, tuple[int, int]]:
    """The student's ensemble minus the baseline's on the rows both scored (cases; a tile
    task's images): the report's paired case bootstrap (:func:`~.tables.compare`, one "fold":
    the cohort; whole cases drawn, with all their images), and the numbers of those rows and
    of their cases."""
    cfg = cfg or EvalConfig()
    unit = spec.record.unit
    a, b = scored(student, spec), scored(baseline, spec)
    common = set(a[unit]) & set(b[unit])
    if not common:
        what = "image" if unit == "image_id" else "case"
        raise ValueError(f"{names[0]} and {names[1]} have no scored {what} in common")
    runs = [ModelRun(n, [estimate(t[t[unit].isin(common)], spec)], [{}])
            for n, t in zip(names, (a, b), strict=True)]  # fmt: skip
    n_cases = a.loc[a[unit].isin(common), "case_id"].nunique()
    pair = compare(runs[0], runs[1], spec, spec.primary_metric, label, cfg)
    return pair, (len(common), n_cases)


def internal_baseline(summary: str | os.PathLike | pd.DataFrame, spec: TaskSpec) -> str | None:
    """The single teacher with the best mean validation score in the internal report's
    ``summary.tsv`` (the report's own choice; None when it has none)."""
    if not isinstance(summary, pd.DataFrame):
        summary = pd.read_csv(summary, sep="\t")
    singles = single_teachers(spec, list(dict.fromkeys(summary["model"])))
    return choose_baselines(summary, singles, spec.primary_metric)["val"]
