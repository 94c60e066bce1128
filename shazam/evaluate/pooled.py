"""The summary table's pooled estimates, on the out-of-fold predictions of all folds together
(:func:`~shazam.evaluate.runs.pooled_predictions`; its ``fold`` column names each row's test
fold, the index of the fold's ``metrics.json`` in the model's run):

- classification: the metrics of all folds' predictions at once, with a case-level bootstrap
  CI;
- survival: Harrell's C **pooled within folds** — comparable pairs of cases of the same fold
  only, since each fold's model scores risk on its own scale — with a bootstrap CI that
  resamples cases within each fold; and the log-rank p of high vs low risk, each case split at
  the cut-off its own fold's model recorded at training (the median risk of the fold's training
  cases): the groups of the Kaplan–Meier figure, never an average of per-fold p-values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics import c_index_within, logrank_p
from ..models import registry
from ..tasks import TaskSpec
from .runs import FUSION_REASONS, ModelRun, arrays_metrics, prediction_arrays
from .stats import EvalConfig, bootstrap_ci, case_clusters

# why the summary has no mean over folds of a metric (mean and SD left empty)
NOT_AVERAGED = {
    "logrank_p": "p-values are not averaged over folds; pooled: the log-rank p of all folds' "
    "cases, each split at its own fold's training median risk (the Kaplan–Meier figure's groups;"
    " with several seeds, the first repetition's folds, so that each case counts once)"
}
# what a pooled value is, where it is not the metric of all folds' predictions at once
POOLED_NOTES = {
    "survival": {"c_index": "pooled within folds: only pairs of cases of the same test fold"}
}


def _stat(pooled: pd.DataFrame, spec: TaskSpec, only):
    """``stat(idx) -> (metrics, reasons)`` on a resample of the pooled rows (None: all), and
    the bootstrap's strata (survival: the folds) and clusters (a case's rows, where a case has
    several)."""
    cases = pooled["case_id"].to_numpy()
    if spec.kind == "survival":  # survival's only pooled metric with a CI: the C-index
        e, t, risk = prediction_arrays(pooled, spec)
        folds = pooled["fold"].to_numpy()

        def stat(idx=None):
            ix = slice(None) if idx is None else idx
            return c_index_within(e[ix], t[ix], risk[ix], folds[ix])

        strata = [np.flatnonzero(folds == k) for k in pd.unique(folds)]
        clusters = [case_clusters(cases[rows]) for rows in strata]
        return stat, strata, None if all(c is None for c in clusters) else clusters
    arrays = prediction_arrays(pooled, spec)

    def stat(idx=None):
        return arrays_metrics(arrays, spec, idx, only=only)

    return stat, None, case_clusters(cases)


def pooled_estimates(
    pooled: pd.DataFrame, run: ModelRun, spec: TaskSpec, cfg: EvalConfig
) -> tuple[dict, dict, dict]:
    """(pooled metrics, why any is None, ``{metric: (ci low, ci high, n valid)}``): the
    task's ``ci_metrics`` with their bootstrap CIs and, for survival, the pooled log-rank p
    (no CI)."""
    only = spec.record.ci_metrics
    stat, strata, clusters = _stat(pooled, spec, only)
    pm, pr = stat()
    pm = {k: pm.get(k) for k in only}
    pr = {k: pr[k] for k in only if pm[k] is None and k in pr}
    cis = bootstrap_ci(
        lambda idx: stat(idx)[0], len(pooled), cfg.n_boot, cfg.seed, cfg.level, clusters, strata
    )
    if spec.kind == "survival" and "logrank_p" in spec.record.scalars:
        pm["logrank_p"], why = pooled_logrank(pooled, run)
        if why:
            pr["logrank_p"] = why
    return pm, pr, cis


def risk_groups(pooled: pd.DataFrame, run: ModelRun) -> tuple[np.ndarray | None, str]:
    """High (True) or low risk of each pooled row: risk above the cut-off its own fold's model
    recorded at training (``risk_cutoff`` in ``metrics.json``: the median risk of the fold's
    training cases; no test outcome or test risk sets it). (None, why) when a fold has no
    recorded cut-off (late fusion; predictions of older runs)."""
    folds = pooled["fold"].to_numpy()
    cut = {k: (run.metrics[k] if k < len(run.metrics) else {}).get("risk_cutoff")
           for k in map(int, pd.unique(folds))}  # fmt: skip
    lacking = sorted(k for k, c in cut.items() if c is None)
    if lacking:
        why = (
            FUSION_REASONS["logrank_p"]
            if run.name == registry.LATE_FUSION
            else "its metrics.json has no risk_cutoff: written by an older shazam, retrain"
        )
        s = "s" if len(lacking) > 1 else ""
        return None, f"no risk cut-off for fold{s} {', '.join(map(str, lacking))}: {why}"
    cutoffs = np.array([cut[k] for k in folds], dtype=float)
    return pooled["risk"].to_numpy(dtype=float) > cutoffs, ""


def first_repeat(pooled: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first repetition of a repeated cross-validation (each case once): a
    log-rank test or a Kaplan–Meier curve must not count a case once per seed."""
    if "repeat" not in pooled or not (pooled["repeat"] > 0).any():
        return pooled
    return pooled[pooled["repeat"] == 0].reset_index(drop=True)


def pooled_logrank(pooled: pd.DataFrame, run: ModelRun) -> tuple[float | None, str]:
    """The log-rank p of the :func:`risk_groups` of all folds' cases (of the first
    repetition: each case once), or (None, why)."""
    pooled = first_repeat(pooled)
    high, why = risk_groups(pooled, run)
    if high is None:
        return None, why
    try:
        t, e = pooled["time"].to_numpy(dtype=float), pooled["event"].to_numpy().astype(bool)
        return logrank_p(t, e, high, "their fold's training median risk"), ""
    except ValueError as err:
        return None, str(err)
