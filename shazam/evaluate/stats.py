"""The report's statistics, all on top of :mod:`shazam.metrics` (the functions training used),
never re-implementing a metric:

- a 95% percentile CI from resampling cases with replacement (``n_boot`` resamples, seeded);
  a tile task's images of one case are drawn together (a cluster bootstrap);
- the paired comparison of the student against a baseline: per-fold Δ, the mean Δ with a
  paired bootstrap CI (cases resampled within each test fold, the same cases for both models,
  Δ recomputed per fold and averaged) and a Wilcoxon signed-rank p over folds;
- the verdict's test: the corrected resampled t-test of Nadeau & Bengio (2003) over every
  run (fold × seed). The bootstrap above holds the trained models fixed, so its CI covers
  only which test cases were drawn; the corrected t also covers the training set and the
  seed, and its variance term ``(1/J + n_test/n_train)`` accounts for the overlap of the
  runs' training sets (Bouckaert & Frank 2004 for repeated cross-validation).

A draw on which a metric is undefined (one class present, no events, …) is left out and
counted, never 0 and never a crash.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class EvalConfig:
    n_boot: int = 1000
    seed: int = 42
    level: float = 0.95


def rank_normalise(x) -> np.ndarray:
    """Ranks scaled to (0, 1] (ties share their average rank): comparable across folds."""
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=float)
    return rankdata(x) / max(len(x), 1)


def percentile_ci(values, level: float = 0.95) -> tuple[float | None, float | None, int]:
    """(low, high, n valid) of the finite values; (None, None, 0) when there are none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return None, None, 0
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi), int(len(v))


def case_clusters(case_ids) -> list[np.ndarray] | None:
    """Row indices of each case (in order of first appearance), or None when every row is its
    own case (then the plain row bootstrap is the case bootstrap)."""
    ids = pd.Series(np.asarray(case_ids, dtype=str))
    if not ids.duplicated().any():
        return None
    return [np.asarray(ix) for ix in ids.groupby(ids, sort=False).indices.values()]


def _resample(rng, sizes: list[int], clusters: list | None = None) -> list[np.ndarray]:
    """One resample per fold: ``sizes[k]`` rows with replacement, or — when ``clusters[k]``
    lists the rows of each case — as many cases with replacement, all rows of each drawn case
    (a cluster bootstrap: images of one patient are not independent)."""
    out = []
    for k, n in enumerate(sizes):
        groups = clusters[k] if clusters is not None else None
        if groups is None:
            out.append(rng.integers(0, n, n))
        else:
            pick = rng.integers(0, len(groups), len(groups))
            out.append(np.concatenate([groups[i] for i in pick]))
    return out


def bootstrap_ci(
    stat,
    n: int,
    n_boot: int = 1000,
    seed: int = 42,
    level: float = 0.95,
    clusters: list[np.ndarray] | None = None,
    strata: list[np.ndarray] | None = None,
) -> dict:
    """Case-level percentile bootstrap. ``stat(idx) -> {name: value or None}`` is evaluated on
    ``n_boot`` resamples of ``range(n)`` (whole cases when ``clusters`` gives each case's rows);
    returns ``{name: (low, high, n_valid)}``. ``strata`` (the rows of each test fold): each
    resample draws within every stratum as many as it holds, and ``clusters`` is then a list
    per stratum (rows within the stratum, or None)."""
    rng = np.random.default_rng(seed)
    rows = [np.arange(n)] if strata is None else [np.asarray(s) for s in strata]
    if strata is None and clusters is not None:
        clusters = [clusters]
    draws: dict[str, list] = {}
    with warnings.catch_warnings():  # degenerate resamples: the metric is None, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            picks = _resample(rng, [len(x) for x in rows], clusters)
            idx = np.concatenate([x[i] for x, i in zip(rows, picks, strict=True)])
            for k, v in stat(idx).items():
                draws.setdefault(k, []).append(v)
    return {k: percentile_ci(v, level) for k, v in draws.items()}


@dataclass
class Paired:
    """Student (a) minus baseline (b) on the same test cases, per fold and on average."""

    a: str
    b: str
    metric: str
    label: str
    per_fold: list[float | None]
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n_valid: int
    wilcoxon_p: float | None
    note: str = ""
    # the verdict's test over every run (fold × seed): Nadeau–Bengio corrected resampled t
    corrected: Corrected | None = None
    params: tuple[int | None, int | None] = (None, None)  # trainable parameters of a and b

    @property
    def excludes_zero(self) -> bool:
        """The verdict: the corrected interval (over runs) excludes 0; without one (a single
        run), the paired bootstrap CI."""
        c = self.corrected
        if c is not None and c.low is not None:
            return c.low > 0 or c.high < 0
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class Corrected:
    """Nadeau–Bengio corrected resampled t over J runs' Δ."""

    mean: float | None
    low: float | None
    high: float | None
    p: float | None
    runs: int  # J: runs with a defined Δ
    ratio: float  # n_test / n_train of a run (the correction)
    note: str = ""


def corrected_t(deltas, ratio: float, level: float = 0.95) -> Corrected:
    """Nadeau & Bengio's corrected resampled t-test of mean Δ = 0 over the runs' Δ:
    t = mean / sqrt((1/J + n_test/n_train) · s²), J − 1 degrees of freedom. The plain
    ``1/J`` would treat runs that share most training cases as independent; the correction
    keeps the test's size near nominal for k-fold and repeated k-fold cross-validation."""
    from scipy import stats as st

    d = np.asarray([x for x in deltas if x is not None], dtype=float)
    j = len(d)
    if j < 2:
        return Corrected(None, None, None, None, j, ratio, f"{j} run(s) with a defined Δ")
    mean = float(d.mean())
    se = float(np.sqrt((1 / j + ratio) * d.var(ddof=1)))
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        return Corrected(mean, mean, mean, None, j, ratio, "every run's Δ is the same")
    q = float(st.t.ppf(0.5 + level / 2, j - 1))
    p = float(2 * st.t.sf(abs(mean / se), j - 1))
    return Corrected(mean, mean - q * se, mean + q * se, p, j, ratio)


def wilcoxon_p(deltas) -> tuple[float | None, str]:
    """Two-sided Wilcoxon signed-rank p over folds, or None with the reason."""
    from scipy.stats import wilcoxon

    d = np.asarray([x for x in deltas if x is not None], dtype=float)
    if len(d) < 2:
        return None, f"{len(d)} fold(s) with a defined Δ; the test needs at least 2"
    if np.allclose(d, 0):
        return None, "every per-fold Δ is 0"
    try:
        p = float(wilcoxon(d).pvalue)
    except ValueError as e:
        return None, f"{e}"
    note = ""
    if len(d) < 6:
        note = f"with {len(d)} folds the exact two-sided p cannot go below {2 / 2 ** len(d):.3g}"
    return (p if np.isfinite(p) else None), note


def paired_bootstrap(
    metric_a,
    metric_b,
    sizes: list[int],
    n_boot: int = 1000,
    seed: int = 42,
    level: float = 0.95,
    clusters: list | None = None,
) -> tuple[list[float | None], float | None, tuple[float | None, float | None, int]]:
    """Paired, fold-stratified bootstrap of the mean per-fold difference a − b.

    ``metric_x(k, idx)`` is model x's metric on the cases ``idx`` of test fold k (or None).
    Each resample draws cases with replacement within every fold, the same draw for both
    models, and averages the per-fold Δ; ``clusters[k]`` (rows of each case of fold k, or
    None) makes the draw one of whole cases. Returns (per-fold Δ, mean Δ, (low, high, n_valid))."""

    def deltas(idxs):
        out = []
        for k, idx in enumerate(idxs):
            a, b = metric_a(k, idx), metric_b(k, idx)
            out.append(None if a is None or b is None else a - b)
        return out

    per_fold = deltas([np.arange(n) for n in sizes])
    defined = [d for d in per_fold if d is not None]
    mean = float(np.mean(defined)) if defined else None
    rng = np.random.default_rng(seed)
    draws = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            d = deltas(_resample(rng, sizes, clusters))
            draws.append(None if any(x is None for x in d) else float(np.mean(d)))
    return per_fold, mean, percentile_ci(draws, level)
