"""Per-task evaluation report (DESIGN §6): does the student beat the best single teacher?

Reads every model's per-fold outputs (``results/models/{task}/{model}/fold_{k}/``) and writes
``results/report/{task}/``: ``per_fold.tsv``, ``summary.tsv``, ``comparison.tsv``,
``dataset.tsv``, PNG figures and ``report.md`` / ``report.html``.

Statistics, all reusing :mod:`shazam.metrics` (the functions training used), never
re-implementing a metric:

- mean ± SD over folds of each fold's test metric (from ``metrics.json``);
- pooled out-of-fold estimate: every case is tested exactly once, so the test predictions of
  all folds form one prediction per case. Survival risks are on a different scale in each
  fold's model, so they are rank-normalised within the fold before pooling (a C-index within
  a fold is unchanged by that). A 95% percentile CI comes from resampling cases with
  replacement (``n_boot`` resamples, seeded);
- late fusion (no training): per fold, the average of the single teachers' class
  probabilities, or of their within-fold rank-normalised risks;
- paired comparison of the student against the single teacher with the best mean
  **validation** score (and, labelled as optimistic, the best on test): per-fold Δ, the mean Δ
  with a paired bootstrap CI (cases resampled within each test fold, the same cases for both
  models, Δ recomputed per fold and averaged) and a Wilcoxon signed-rank p over folds.

A metric that is undefined on some data (one class present, no events, …) is missing with the
reason, never 0 and never a crash.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import re
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .cohorts import build_cohort
from .io import atomic_path, write_text_atomic
from .metrics import classification_metrics, survival_metrics
from .splits import read_fold
from .tasks import TaskSpec

LATE_FUSION = "late-fusion"
STUDENT = "shazam"
TILE_STUDENT = "shazam-v1"


def student_name(spec: TaskSpec) -> str:
    """The student of a task: the slide-level Shazam, or the v1 classifier of a tile task."""
    return TILE_STUDENT if spec.is_tile else STUDENT


def unit_of(spec: TaskSpec) -> str:
    """The prediction unit: one row per case (slide tasks) or per image (tile tasks). The
    bootstrap always resamples cases: a tile task's images of one case are drawn together."""
    return "image_id" if spec.is_tile else "case_id"


def single_prefix(spec: TaskSpec) -> str:
    return "mlp-" if spec.is_tile else "abmil-"


LOWER_IS_BETTER = frozenset({"ibs", "logrank_p"})
METRIC_LABELS = {
    "balanced_accuracy": "balanced accuracy",
    "auc_macro": "AUC (macro one-vs-rest)",
    "f1_weighted": "F1 (weighted)",
    "f1_macro": "F1 (macro)",
    "accuracy": "accuracy",
    "c_index": "C-index (Harrell)",
    "c_index_ipcw": "C-index (IPCW)",
    "ibs": "integrated Brier score",
    "td_auc_mean": "time-dependent AUC (mean)",
    "logrank_p": "log-rank p (high vs low risk)",
}
SOFTWARE = (
    "shazam",
    "torch",
    "timm",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "scikit-survival",
    "lifelines",
    "h5py",
    "openslide-python",
    "matplotlib",
    "snakemake",
)
FIGURE_CAPTIONS = {
    "metrics": "Every model's test metrics. Bars: mean over folds; dots: single folds; black "
    "diamond and whiskers: pooled out-of-fold estimate with its case-level bootstrap 95% CI "
    "(where defined).",
    "roc": "ROC curves of the pooled out-of-fold predictions (several classes: micro-average "
    "of the one-vs-rest curves); the legend gives the pooled AUC with its 95% CI.",
    "km": "Kaplan–Meier curves of the cases each model calls high risk vs low risk (above vs "
    "at or below the median predicted risk of their own test fold; no outcome is used for the "
    "cut-off), pooled over folds, with the log-rank p.",
    "confusion": "Confusion matrix of the pooled out-of-fold predictions (rows: true class, "
    "columns: predicted).",
    "gate": "The student's gate: mean weight per teacher on each test fold (dots) and over "
    "folds (bars). Equal weights would be 1 / number of teachers.",
    "delta": "Paired comparison per fold: the student's test metric minus the baseline's on "
    "the same test cases; the diamond is the mean Δ with its paired bootstrap 95% CI.",
}


@dataclass(frozen=True)
class EvalConfig:
    n_boot: int = 1000
    seed: int = 42
    level: float = 0.95


@dataclass
class ModelRun:
    """One model's outputs over the folds of a task."""

    name: str
    predictions: list[pd.DataFrame]  # test predictions per fold
    metrics: list[dict]  # metrics.json per fold (test at top level, `val`, `reasons`)
    configs: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def load_model_run(models_dir: str | os.PathLike, model: str, n_folds: int) -> ModelRun:
    preds, metrics, configs = [], [], []
    for k in range(n_folds):
        d = Path(models_dir) / model / f"fold_{k}"
        for f in ("predictions.csv", "metrics.json"):
            if not (d / f).exists():
                raise ValueError(
                    f"model {model}, fold {k}: {d / f} is missing — train it first "
                    f"(snakemake {d / f}) or leave the model out of the evaluation"
                )
        preds.append(pd.read_csv(d / "predictions.csv", dtype={"case_id": str, "image_id": str}))
        metrics.append(json.loads((d / "metrics.json").read_text()))
        configs.append(
            json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        )
    return ModelRun(model, preds, metrics, configs)


def _check_predictions(run: ModelRun, spec: TaskSpec) -> None:
    need = ["case_id"] + (["image_id"] if spec.is_tile else [])
    need += (
        ["label"] + [f"prob_{c}" for c in spec.classes]
        if spec.kind == "classification"
        else ["time", "event", "risk"]
    )
    for k, df in enumerate(run.predictions):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(
                f"model {run.name}, fold {k}: predictions.csv lacks column(s) "
                f"{', '.join(missing)} for a {spec.type} task — retrain the model with this "
                "version of shazam"
            )
        if spec.kind == "classification":
            bad = sorted(set(df["label"].astype(str)) - set(spec.classes))
            if bad:
                raise ValueError(
                    f"model {run.name}, fold {k}: predictions.csv has label(s) {bad} that are "
                    f"not classes of task {spec.name} {list(spec.classes)}"
                )


# --------------------------------------------------------------------------- statistics


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
) -> dict:
    """Case-level percentile bootstrap. ``stat(idx) -> {name: value or None}`` is evaluated on
    ``n_boot`` resamples of ``range(n)`` (whole cases when ``clusters`` gives each case's rows);
    returns ``{name: (low, high, n_valid)}``."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {}
    with warnings.catch_warnings():  # degenerate resamples: the metric is None, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            (idx,) = _resample(rng, [n], None if clusters is None else [clusters])
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

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)


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


# --------------------------------------------------------------------------- predictions


def _class_arrays(df: pd.DataFrame, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    y = df["label"].astype(str).map({c: i for i, c in enumerate(spec.classes)}).to_numpy()
    prob = df[[f"prob_{c}" for c in spec.classes]].to_numpy(dtype=float)
    return y.astype(int), prob


def prediction_arrays(df: pd.DataFrame, spec: TaskSpec, risk_col: str = "risk") -> tuple:
    """(y, prob) or (event, time, risk) as numpy arrays: resampling indexes these, not pandas."""
    if spec.kind == "classification":
        return _class_arrays(df, spec)
    return (
        df["event"].to_numpy().astype(bool),
        df["time"].to_numpy(dtype=float),
        df[risk_col].to_numpy(dtype=float),
    )


def arrays_metrics(arrays: tuple, spec: TaskSpec, idx=None, train=None, only=None):
    """The training code's metric functions on (a resample ``idx`` of) prediction arrays.
    ``train``: (event, time) of the fold's training cases (survival IPCW C and td-AUC)."""
    a = arrays if idx is None else tuple(x[idx] for x in arrays)
    if spec.kind == "classification":
        return classification_metrics(a[0], a[1], len(spec.classes), only=only)
    tr_e, tr_t = train if train is not None else (None, None)
    return survival_metrics(a[0], a[1], a[2], None, tr_e, tr_t, None, only=only)


def prediction_metrics(
    df: pd.DataFrame, spec: TaskSpec, train: tuple | None = None, only=None, risk_col="risk"
) -> tuple[dict, dict]:
    """Metrics of one prediction table (see :func:`arrays_metrics`)."""
    return arrays_metrics(prediction_arrays(df, spec, risk_col), spec, None, train, only)


def late_fusion(runs: list[ModelRun], spec: TaskSpec) -> list[pd.DataFrame]:
    """Per fold, the single teachers' average class probabilities (classification) or average
    within-fold rank-normalised risk (survival). No training."""
    if not runs:
        raise ValueError("late fusion needs at least one single-teacher model")
    fused = []
    for k in range(len(runs[0].predictions)):
        unit = unit_of(spec)
        tables = [r.predictions[k].set_index(unit) for r in runs]
        ids = sorted(tables[0].index)
        for r, t in zip(runs, tables, strict=True):
            if sorted(t.index) != ids:
                raise ValueError(
                    f"late fusion, fold {k}: {r.name} predicts other test cases than "
                    f"{runs[0].name} — were they trained on the same splits? Retrain both."
                )
        base = tables[0].loc[ids]
        if spec.kind == "classification":
            cols = [f"prob_{c}" for c in spec.classes]
            prob = np.mean([t.loc[ids, cols].to_numpy(dtype=float) for t in tables], axis=0)
            df = pd.DataFrame({unit: ids, "label": base["label"].to_numpy()})
            df["pred"] = [spec.classes[i] for i in prob.argmax(1)]
            for i, c in enumerate(cols):
                df[c] = prob[:, i]
        else:
            risk = np.mean([rank_normalise(t.loc[ids, "risk"]) for t in tables], axis=0)
            df = pd.DataFrame(
                {
                    unit: ids,
                    "time": base["time"].to_numpy(),
                    "event": base["event"].to_numpy(),
                    "risk": risk,
                }
            )
        if unit != "case_id":
            df.insert(1, "case_id", base["case_id"].to_numpy())
        fused.append(df)
    return fused


def pooled_predictions(run: ModelRun, spec: TaskSpec) -> pd.DataFrame:
    """All folds' test predictions in one table (one row per case — per image for a tile
    task — sorted by it);
    survival gets ``risk_rank``, the within-fold rank-normalised risk."""
    parts = []
    for k, df in enumerate(run.predictions):
        df = df.copy()
        df["fold"] = k
        if spec.kind == "survival":
            df["risk_rank"] = rank_normalise(df["risk"])
        parts.append(df)
    pooled = pd.concat(parts, ignore_index=True)
    unit = unit_of(spec)
    dup = pooled[unit][pooled[unit].duplicated()].unique()
    if len(dup):
        what = "image(s)" if unit == "image_id" else "case(s)"
        raise ValueError(
            f"model {run.name}: {what} {', '.join(map(str, dup[:5]))} are in more than one "
            "test fold — the test folds must partition the cohort (check the split files)"
        )
    return pooled.sort_values(unit).reset_index(drop=True)


def pooled_metrics(pooled: pd.DataFrame, spec: TaskSpec, only=None) -> tuple[dict, dict]:
    return prediction_metrics(pooled, spec, only=only, risk_col="risk_rank")


# --------------------------------------------------------------------------- tables


def fold_outcomes(spec: TaskSpec, sheet: pd.DataFrame, splits_dir, n_folds: int) -> list:
    """(event, time) of each fold's training cases (survival), else Nones."""
    if spec.kind != "survival":
        return [None] * n_folds
    cases = build_cohort(spec, sheet).cases.set_index("case_id")
    out = []
    for k in range(n_folds):
        fold = read_fold(Path(splits_dir) / f"fold_{k}.csv")
        tr = cases.loc[
            [c for c in fold.loc[fold["split"] == "train", "case_id"] if c in cases.index]
        ]
        out.append((tr["event"].to_numpy().astype(bool), tr["time"].to_numpy(dtype=float)))
    return out


def fused_run(singles: list[ModelRun], spec: TaskSpec, train: list) -> ModelRun:
    preds = late_fusion(singles, spec)
    metrics = []
    for k, df in enumerate(preds):
        m, r = prediction_metrics(df, spec, train[k])
        if spec.kind == "survival":  # say why, in the report's words
            r["ibs"] = "late fusion averages ranks: it has no survival function"
            r["logrank_p"] = "late fusion has no training-set risks for the cut-off"
        m.pop("confusion", None)
        metrics.append({**m, "val": {}, "reasons": r})
    return ModelRun(LATE_FUSION, preds, metrics)


def per_fold_table(runs: dict[str, ModelRun], spec: TaskSpec) -> pd.DataFrame:
    rows = []
    for name, run in runs.items():
        for k, m in enumerate(run.metrics):
            reasons = m.get("reasons") or {}
            for metric in (*spec.record.scalars, "n_cases", "n_events"):
                if metric == "n_events" and spec.kind != "survival":
                    continue
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
    rows = []
    ci_metrics = spec.record.ci_metrics
    for name, run in runs.items():
        pm, pr = pooled_metrics(pooled[name], spec, only=ci_metrics)
        n = len(pooled[name])

        arrays = prediction_arrays(pooled[name], spec, "risk_rank")

        def stat(idx, arrays=arrays):
            return arrays_metrics(arrays, spec, idx, only=ci_metrics)[0]

        clusters = case_clusters(pooled[name]["case_id"]) if spec.is_tile else None
        cis = bootstrap_ci(stat, n, cfg.n_boot, cfg.seed, cfg.level, clusters)
        for metric in spec.record.scalars:
            vals = [m.get(metric) for m in run.metrics]
            ok = [float(v) for v in vals if v is not None]
            reasons = _fold_reasons(run.metrics, metric)
            lo, hi, nv = cis.get(metric, (None, None, 0))
            if metric in ci_metrics and pm.get(metric) is None:
                reasons.append(f"pooled: {pr.get(metric, 'undefined')}")
            rows.append(
                {
                    "model": name,
                    "metric": metric,
                    "mean": float(np.mean(ok)) if ok else None,
                    "sd": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
                    "n_folds": len(ok),
                    "pooled": pm.get(metric) if metric in ci_metrics else None,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_boot": nv if metric in ci_metrics else 0,
                    "val_mean": _mean([(m.get("val") or {}).get(metric) for m in run.metrics]),
                    "missing": "; ".join(reasons),
                }
            )
    return pd.DataFrame(rows)


def _fold_reasons(metrics: list[dict], metric: str) -> list[str]:
    """Why a metric is missing, folds with the same reason together."""
    by_reason: dict[str, list[int]] = {}
    for k, m in enumerate(metrics):
        if m.get(metric) is None:
            reason = (m.get("reasons") or {}).get(metric, "not computed")
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


def compare(
    a: ModelRun, b: ModelRun, spec: TaskSpec, metric: str, label: str, cfg: EvalConfig
) -> Paired:
    unit = unit_of(spec)
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

    def metric_of(tables):
        arrays = [prediction_arrays(t, spec) for t in tables]

        def f(k, idx):
            return arrays_metrics(arrays[k], spec, idx, only=(metric,))[0].get(metric)

        return f

    clusters = [case_clusters(t["case_id"]) for t in fa] if spec.is_tile else None
    per_fold, mean, (lo, hi, nv) = paired_bootstrap(
        metric_of(fa),
        metric_of(fb),
        [len(i) for i in ids],
        cfg.n_boot,
        cfg.seed,
        cfg.level,
        clusters,
    )
    p, note = wilcoxon_p(per_fold)
    return Paired(a.name, b.name, metric, label, per_fold, mean, lo, hi, nv, p, note)


def comparison_table(pairs: list[Paired], n_folds: int) -> pd.DataFrame:
    rows = []
    for p in pairs:
        row = {"comparison": p.label, "student": p.a, "baseline": p.b, "metric": p.metric}
        row.update({f"delta_fold_{k}": p.per_fold[k] for k in range(n_folds)})
        row.update(
            {
                "mean_delta": p.mean,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
                "n_boot": p.n_valid,
                "wilcoxon_p": p.wilcoxon_p,
                "note": p.note,
            }
        )
        rows.append(row)
    cols = ["comparison", "student", "baseline", "metric"]
    cols += [f"delta_fold_{k}" for k in range(n_folds)]
    cols += ["mean_delta", "ci_low", "ci_high", "n_boot", "wilcoxon_p", "note"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- provenance


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def teacher_facts(feature_files: list[str | os.PathLike]) -> pd.DataFrame:
    """Per teacher, what its feature files say about the model that made them."""
    import h5py

    from .teachers import REGISTRY

    rows = []
    for path in feature_files:
        with h5py.File(path, "r") as f:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        name = str(a.get("teacher", Path(path).parent.name))
        spec = REGISTRY.get(name)
        rows.append(
            {
                "teacher": name,
                "architecture": a.get("teacher_arch", spec.arch if spec else ""),
                "weights": a.get("weights", ""),
                "source": spec.weight_source if spec else "",
                "embedding": a.get("embedding", ""),
                "input_px": a.get("input_size", ""),
                "precision": a.get("precision", ""),
                "extracted_with": f"shazam {a.get('shazam_version', '?')}",
            }
        )
    return pd.DataFrame(rows)


def dataset_table(splits_dir) -> pd.DataFrame:
    p = Path(splits_dir) / "summary.tsv"
    if not p.exists():
        raise ValueError(f"{p} is missing — run make_splits for this task first")
    return pd.read_csv(p, sep="\t")


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def fig_metrics(summary: pd.DataFrame, per_fold: pd.DataFrame, spec: TaskSpec, path: Path):
    plt = _plt()
    metrics = [
        m for m in spec.record.scalars if summary.loc[summary["metric"] == m, "mean"].notna().any()
    ]
    models = list(dict.fromkeys(summary["model"]))
    n = max(len(metrics), 1)
    fig, axes = plt.subplots(
        1, n, figsize=(3.2 * n, 3.2 + 0.12 * max(map(len, models))), squeeze=False
    )
    x = np.arange(len(models))
    for ax, metric in zip(axes[0], metrics, strict=False):
        s = summary[summary["metric"] == metric].set_index("model").reindex(models)
        means = s["mean"].astype(float).to_numpy()
        ax.bar(x, np.nan_to_num(means), color="#9ecae1", edgecolor="#3182bd")
        for i in np.flatnonzero(np.isnan(means)):  # undefined: say so instead of a 0 bar
            ax.text(x[i], 0, "n/a", ha="center", va="bottom", fontsize=7, color="#888888")
        pf = per_fold[(per_fold["metric"] == metric) & per_fold["test"].notna()]
        for i, m in enumerate(models):
            v = pf.loc[pf["model"] == m, "test"].astype(float).to_numpy()
            ax.plot(
                np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, "o", ms=3, color="#555555"
            )
        has_ci = s["ci_low"].notna()
        if has_ci.any():
            xi = x[has_ci.to_numpy()]
            mid = s.loc[has_ci, "pooled"].astype(float).to_numpy()
            err = np.vstack(
                [
                    mid - s.loc[has_ci, "ci_low"].astype(float).to_numpy(),
                    s.loc[has_ci, "ci_high"].astype(float).to_numpy() - mid,
                ]
            )
            ax.errorbar(
                xi + 0.28,
                mid,
                yerr=np.clip(err, 0, None),
                fmt="D",
                ms=4,
                color="black",
                capsize=3,
                label="pooled, 95% CI",
            )
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, models, rotation=60, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
        if metric in ("balanced_accuracy", "auc_macro", "c_index", "c_index_ipcw", "td_auc_mean"):
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    fig.suptitle(f"{spec.name}: test metrics per model", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_roc(pooled: dict[str, pd.DataFrame], summary: pd.DataFrame, spec: TaskSpec, path: Path):
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    s = summary[summary["metric"] == "auc_macro"].set_index("model")
    for name, df in pooled.items():
        y, prob = _class_arrays(df, spec)
        if len(np.unique(y)) < 2:
            continue
        if len(spec.classes) == 2:
            fpr, tpr, _ = roc_curve(y == 1, prob[:, 1])
        else:
            onehot = np.eye(len(spec.classes))[y]
            fpr, tpr, _ = roc_curve(onehot.ravel(), prob.ravel())
        r = s.loc[name] if name in s.index else None
        lab = name
        if r is not None and pd.notna(r["pooled"]):
            lab += f" (AUC {r['pooled']:.2f}"
            lab += f", {r['ci_low']:.2f}–{r['ci_high']:.2f})" if pd.notna(r["ci_low"]) else ")"
        ax.plot(fpr, tpr, lw=1.5 if name == student_name(spec) else 1, label=lab)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(
        xlabel="1 − specificity",
        ylabel="sensitivity",
        title=f"{spec.name}: ROC, pooled out-of-fold",
    )
    pos = spec.classes[1] if len(spec.classes) == 2 else "each class (micro-average)"
    ax.text(0.98, 0.02, f"positive: {pos}", ha="right", fontsize=7, transform=ax.transAxes)
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1, 0.06))
    return _save(fig, path)


def fig_confusion(pooled: pd.DataFrame, spec: TaskSpec, model: str, path: Path):
    plt = _plt()
    y, prob = _class_arrays(pooled, spec)
    cm = np.asarray(
        classification_metrics(y, prob, len(spec.classes), only=("confusion",))[0]["confusion"]
    )
    fig, ax = plt.subplots(figsize=(1.2 * len(spec.classes) + 2.5, 1.2 * len(spec.classes) + 2))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ticks = np.arange(len(spec.classes))
    ax.set_xticks(ticks, spec.classes)
    ax.set_yticks(ticks, spec.classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"{model}: pooled out-of-fold")
    return _save(fig, path)


def km_groups(pooled: pd.DataFrame) -> np.ndarray:
    """High risk = above the median predicted risk of the case's own test fold."""
    return pooled["risk_rank"].to_numpy() > 0.5 + 1e-12


def fig_km(pooled: dict[str, pd.DataFrame], models: list[str], spec: TaskSpec, path: Path):
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        df = pooled[name]
        high = km_groups(df)
        t, e = df["time"].to_numpy(float), df["event"].to_numpy().astype(bool)
        for grp, lab, col in ((~high, "low risk", "#3182bd"), (high, "high risk", "#de2d26")):
            if grp.any():
                KaplanMeierFitter().fit(
                    t[grp], e[grp], label=f"{lab} (n={grp.sum()}, {e[grp].sum()} events)"
                ).plot_survival_function(ax=ax, color=col, ci_show=True)
        title = name
        if high.any() and (~high).any():
            p = logrank_test(t[high], t[~high], e[high], e[~high]).p_value
            title += f"\nlog-rank p = {p:.2g}"
        ax.set(
            title=title,
            xlabel=f"time ({spec.time_unit})",
            ylabel="survival probability",
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def fig_gate(runs: dict[str, ModelRun], path: Path, order=()):
    gated = {n: r for n, r in runs.items() if any("gate_mean" in m for m in r.metrics)}
    if not gated:
        return None
    plt = _plt()
    seen = {t for r in gated.values() for m in r.metrics for t in m.get("gate_mean", {})}
    teachers = [t for t in order if t in seen] + sorted(seen - set(order))  # config order
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(teachers) * len(gated), 3.4))
    w = 0.8 / len(gated)
    for j, (name, r) in enumerate(gated.items()):
        vals = np.array(
            [[m.get("gate_mean", {}).get(t, np.nan) for t in teachers] for m in r.metrics]
        )
        x = np.arange(len(teachers)) + (j - (len(gated) - 1) / 2) * w
        ax.bar(x, np.nanmean(vals, 0), width=w * 0.9, label=name, alpha=0.8)
        for i in range(len(teachers)):
            ax.plot(np.full(len(vals), x[i]), vals[:, i], "o", ms=3, color="#333333")
    ax.axhline(1 / len(teachers), color="grey", ls="--", lw=0.8)
    ax.set_xticks(np.arange(len(teachers)), teachers)
    ax.set(ylabel="mean gate weight on test", ylim=(0, 1), title="gate weight per teacher")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_delta(pairs: list[Paired], path: Path):
    if not pairs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.5 + 2.6 * len(pairs), 3.4))
    for i, p in enumerate(pairs):
        d = np.array([np.nan if v is None else v for v in p.per_fold], dtype=float)
        ax.plot(
            np.full(len(d), i) + np.linspace(-0.12, 0.12, len(d)), d, "o", color="#555555", ms=4
        )
        if p.mean is not None:
            lo = p.mean - (p.ci_low if p.ci_low is not None else p.mean)
            hi = (p.ci_high if p.ci_high is not None else p.mean) - p.mean
            ax.errorbar(
                i + 0.25,
                p.mean,
                yerr=[[max(lo, 0)], [max(hi, 0)]],
                fmt="D",
                color="black",
                capsize=4,
            )
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    short = ["chosen on validation" if "validation" in p.label else "oracle" for p in pairs]
    ax.set_xticks(
        range(len(pairs)),
        [f"{p.a} − {p.b}\n({s})" for p, s in zip(pairs, short, strict=True)],
        fontsize=7,
    )
    ax.set_ylabel(f"Δ {METRIC_LABELS.get(pairs[0].metric, pairs[0].metric)}")
    ax.set_title("student minus baseline, per test fold")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- report text


def _fmt(v, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if metric.endswith("_p") or metric == "wilcoxon_p":
        return f"{v:.3g}"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.3f}"


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.3f}"


def _ci(lo, hi) -> str:
    return "—" if lo is None or pd.isna(lo) else f"{lo:.3f}–{hi:.3f}"


def _none(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def describe_model(name: str, teachers: list[str], singles: list[str]) -> str:
    if name.startswith("abmil-"):
        return f"ABMIL on {name[len('abmil-') :]} features (single teacher)"
    if name.startswith("mlp-"):
        return f"MLP on {name[len('mlp-') :]} image features (single teacher)"
    if name == LATE_FUSION:
        return f"average of the {len(singles)} single-teacher predictions (no training)"
    if name == "concat":
        return "ABMIL on the concatenated teacher features (early fusion)"
    if name == "concat-mlp":
        return "MLP on the concatenated teacher image features (early fusion)"
    if name == STUDENT:
        return f"Shazam student distilled from {len(teachers)} teachers"
    if name == TILE_STUDENT:
        return f"Shazam v1 classifier (teachers as tokens), distilled from {len(teachers)} teachers"
    if name == f"{TILE_STUDENT}-nodistill":
        return "Shazam v1 ablation: without distillation"
    if name.startswith("shazam-"):
        what = {
            "nodistill": "without distillation",
            "nogate": "without the gate",
            "high": "final-layer features only",
            "agreement": "seed's agreement target",
        }
        return f"Shazam ablation: {what.get(name[len('shazam-') :], name)}"
    return name


class Doc:
    """The report as blocks, rendered to Markdown and to self-contained HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, df: pd.DataFrame):
        self.blocks.append(("table", df))

    def img(self, path: Path, rel: str, caption: str):
        self.blocks.append(("img", path, rel, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                df = b[1].astype(str)
                rows = [list(df.columns), ["---"] * len(df.columns), *df.to_numpy().tolist()]
                out.append(
                    "\n".join(
                        "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows
                    )
                )
            elif b[0] == "img":
                out.append(f"![{Path(b[2]).stem}]({b[2]})\n\n*{b[3]}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        def inline(s: str) -> str:
            s = html.escape(s)
            s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
            s = re.sub(r"\*(.+?)\*", r"<em>\1</em>", s)
            return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                out.append(b[1].to_html(index=False, border=0, classes="t", escape=True))
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode()
                alt = html.escape(Path(b[2]).stem)
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                    f"<figcaption>{inline(b[3])}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45;"
            "color:#222}table.t{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
            "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}"
        )
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
        )


# --------------------------------------------------------------------------- the task


def evaluate_task(
    spec: TaskSpec,
    models: list[str],
    teachers: list[str],
    sheet: pd.DataFrame | None,
    models_dir: str | os.PathLike,
    splits_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    feature_files: list[str | os.PathLike] = (),
    cfg: EvalConfig = EvalConfig(),
    settings: dict | None = None,
) -> dict:
    """Write the task's report folder; returns the headline numbers."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # a figure that no longer applies must not linger
        old.unlink()
    k = spec.n_folds
    metric = spec.primary_metric
    student = student_name(spec)
    runs = {m: load_model_run(models_dir, m, k) for m in models}
    for r in runs.values():
        _check_predictions(r, spec)
    singles = [m for m in models if m.startswith(single_prefix(spec))]
    train = fold_outcomes(spec, sheet, splits_dir, k)
    if len(singles) >= 2:
        fused = fused_run([runs[m] for m in singles], spec, train)
        order = singles + [LATE_FUSION] + [m for m in models if m not in singles]
        runs = {n: (fused if n == LATE_FUSION else runs[n]) for n in order}
    pooled = {n: pooled_predictions(r, spec) for n, r in runs.items()}

    per_fold = per_fold_table(runs, spec)
    summary = summary_table(runs, pooled, spec, cfg)
    chosen = choose_baselines(summary, singles, metric)
    pairs = []
    if student in runs:
        done = {}
        for key, label in (
            ("val", "best single teacher, chosen on validation"),
            ("oracle", "best single teacher on test (oracle, optimistic)"),
        ):
            b = chosen.get(key)
            if b is None:
                continue
            if b not in done:
                done[b] = compare(runs[student], runs[b], spec, metric, label, cfg)
                pairs.append(done[b])
            else:  # the same teacher: one comparison, both labels
                done[b].label += " (also the best on test)"
    comparison = comparison_table(pairs, k)
    dataset = dataset_table(splits_dir)
    software = software_versions()
    teachers_df = teacher_facts(feature_files) if feature_files else pd.DataFrame()

    figures = {"metrics": fig_metrics(summary, per_fold, spec, fig_dir / "metrics.png")}
    focus = [m for m in (student, chosen.get("val")) if m in runs] or [next(iter(runs))]
    if spec.kind == "classification":
        figures["roc"] = fig_roc(pooled, summary, spec, fig_dir / "roc.png")
        figures["confusion"] = fig_confusion(
            pooled[focus[0]], spec, focus[0], fig_dir / "confusion.png"
        )
    else:
        figures["km"] = fig_km(pooled, list(dict.fromkeys(focus)), spec, fig_dir / "km.png")
    figures["gate"] = fig_gate(runs, fig_dir / "gate.png", teachers)
    figures["delta"] = fig_delta(pairs, fig_dir / "delta.png")
    figures = {n: p for n, p in figures.items() if p is not None}

    for name, df in (
        ("per_fold", per_fold),
        ("summary", summary),
        ("comparison", comparison),
        ("dataset", dataset),
    ):
        with atomic_path(out / f"{name}.tsv") as tmp:
            df.to_csv(tmp, sep="\t", index=False, float_format="%.6g")

    doc = build_document(
        spec,
        runs,
        summary,
        pairs,
        chosen,
        dataset,
        software,
        teachers_df,
        figures,
        out,
        teachers,
        singles,
        cfg,
        settings or {},
    )
    write_text_atomic(out / "report.md", doc.markdown())
    write_text_atomic(out / "report.html", doc.html(f"Shazam report: {spec.name}"))
    head = {
        "task": spec.name,
        "metric": metric,
        "baseline_val": chosen.get("val"),
        "baseline_oracle": chosen.get("oracle"),
        "figures": sorted(figures),
    }
    if pairs:
        head.update(
            mean_delta=pairs[0].mean,
            ci=(pairs[0].ci_low, pairs[0].ci_high),
            wilcoxon_p=pairs[0].wilcoxon_p,
        )
    return head


def _answer(spec, summary, pairs, chosen, teachers, runs) -> list[str]:
    metric = spec.primary_metric
    label = METRIC_LABELS[metric]
    s = summary[summary["metric"] == metric].set_index("model")

    def est(m):
        r = s.loc[m]
        return (
            f"{_fmt(_none(r['pooled']))} (95% CI {_ci(r['ci_low'], r['ci_high'])}; "
            f"mean over folds {_fmt(_none(r['mean']))} ± {_fmt(_none(r['sd']))})"
        )

    student = student_name(spec)
    if student not in runs:
        why = (
            f"This run has {len(teachers)} teacher"
            + ("" if len(teachers) == 1 else "s")
            + "; the Shazam student (and the concat baseline) need two or more, so there is "
            "no student to compare."
        )
        best = chosen.get("val")
        return [why] + (
            [
                f"The best single teacher on validation, **{best}**, reaches pooled "
                f"{label} {est(best)}."
            ]
            if best
            else []
        )
    if not pairs:
        return [
            f"The student reaches pooled {label} {est(student)}; no single-teacher "
            "baseline has a defined validation score, so there is no paired comparison."
        ]
    p = pairs[0]
    shown = "Shazam v1" if spec.is_tile else "Shazam"
    if p.mean is None:
        return [
            f"The paired difference is undefined on these folds ({label} missing); see "
            "the table of missing metrics below."
        ]
    better = p.mean > 0 if metric not in LOWER_IS_BETTER else p.mean < 0
    if p.excludes_zero:
        verdict = ("the student is **better**" if better else "the student is **worse**") + (
            ": the 95% CI of the difference excludes 0"
        )
    else:
        verdict = (
            "the difference is **not distinguishable from 0**: its 95% CI includes 0 "
            "(no evidence either way at this cohort size)"
        )
    lines = [
        f"**{shown}** reaches pooled out-of-fold {label} {est(student)}; the best single teacher "
        f"chosen on validation, **{p.b}**, reaches {est(p.b)}.",
        f"Mean per-fold Δ = **{_signed(p.mean)}** (paired bootstrap 95% CI "
        f"{_signed(p.ci_low)} to {_signed(p.ci_high)}; Wilcoxon signed-rank p = "
        f"{_fmt(p.wilcoxon_p, 'wilcoxon_p')}): {verdict}.",
    ]
    if len(pairs) > 1:
        o = pairs[1]
        lines.append(
            f"Against the best single teacher on test (**{o.b}**, an optimistic oracle choice): "
            f"Δ = {_signed(o.mean)} (95% CI {_signed(o.ci_low)} to {_signed(o.ci_high)})."
        )
    return lines


def build_document(
    spec,
    runs,
    summary,
    pairs,
    chosen,
    dataset,
    software,
    teachers_df,
    figures,
    out,
    teachers,
    singles,
    cfg,
    settings,
) -> Doc:
    metric = spec.primary_metric
    doc = Doc()
    n_folds = spec.n_folds
    unit_word, student_is, baseline_is = "slides", "the Shazam student", "an attention-MIL model"
    if spec.is_tile:
        what = f"classifying region-of-interest images as {' vs '.join(spec.classes)}"
        unit_word, student_is, baseline_is = "images", "the Shazam v1 classifier", "an MLP"
    elif spec.kind == "classification":
        what = f"predicting {' vs '.join(spec.classes)} from the slides"
    else:
        what = "predicting survival (time to event) from the slides"
    first = dataset["fold"] == dataset["fold"].min()
    n_cases = int(dataset.loc[first, "cases"].sum())
    n_items = int(dataset.loc[first, unit_word].sum()) if unit_word in dataset else None
    counted = f"{n_cases} cases" + (f", {n_items} {unit_word}" if n_items is not None else "")
    design = (
        f"{n_folds}-fold cross-validation"
        if n_folds > 1
        else "the dataset's own train/val/test split"
    )
    doc.h(1, f"Task {spec.name}: does the distilled student beat the best single foundation model?")
    doc.p(
        f"**Question.** For {what} ({counted}, {design}), is {student_is}, distilled from "
        f"{len(teachers)} pathology foundation model(s) ({', '.join(teachers)}), better than "
        f"{baseline_is} on the single best foundation model's features? Main metric: "
        f"**{METRIC_LABELS[metric]}**."
    )
    doc.h(2, "Answer")
    for line in _answer(spec, summary, pairs, chosen, teachers, runs):
        doc.p(line)

    doc.h(2, "Results per model")
    cols = spec.record.scalars
    rows = []
    for name in runs:
        s = summary[summary["model"] == name].set_index("metric")
        row = {"model": name, "what it is": describe_model(name, teachers, singles)}
        for m in cols:
            r = s.loc[m]
            cell = f"{_fmt(_none(r['mean']), m)}"
            if _none(r["sd"]) is not None:
                cell += f" ± {_fmt(r['sd'], m)}"
            if m in spec.record.ci_metrics:
                cell += f" (pooled {_fmt(_none(r['pooled']), m)}, {_ci(r['ci_low'], r['ci_high'])})"
            row[METRIC_LABELS[m]] = cell
        rows.append(row)
    doc.table(pd.DataFrame(rows))
    doc.p(
        f"Mean ± SD over the {n_folds} test fold(s); in brackets the pooled out-of-fold "
        f"estimate with its case-level bootstrap {int(cfg.level * 100)}% CI ({cfg.n_boot} "
        f"resamples, seed {cfg.seed}"
        + ("; each draw takes all images of a drawn case" if spec.is_tile else "")
        + "). "
        + (
            "Lower is better for the integrated Brier score and the log-rank p. "
            if spec.kind == "survival"
            else ""
        )
        + "Full numbers: `summary.tsv` (per model and metric) and `per_fold.tsv` (per fold)."
    )
    if pairs:
        doc.h(2, "Paired comparison")
        rows = []
        for p in pairs:
            row = {"student − baseline": f"{p.a} − {p.b}", "baseline chosen as": p.label}
            row.update({f"fold {k}": _signed(d) for k, d in enumerate(p.per_fold)})
            row["mean Δ (95% CI)"] = (
                f"{_signed(p.mean)} ({_signed(p.ci_low)} to {_signed(p.ci_high)})"
            )
            row["Wilcoxon p"] = _fmt(p.wilcoxon_p, "wilcoxon_p")
            rows.append(row)
        doc.table(pd.DataFrame(rows))
        notes = sorted({p.note for p in pairs if p.note})
        notes += [
            f"{p.a} − {p.b}: {p.n_valid} of {cfg.n_boot} resamples had the metric defined on "
            "every fold (the others, e.g. a fold drawn with one class or no events, are left out)"
            for p in pairs
            if p.n_valid < cfg.n_boot
        ]
        doc.p(
            f"Δ of {METRIC_LABELS[metric]} on each test fold (same cases for both models). The CI "
            f"resamples cases within each test fold ({cfg.n_boot} times, the same draw for both "
            "models) and averages the per-fold Δ. "
            + (f"Note: {'; '.join(notes)}." if notes else "")
        )
    missing = summary[summary["missing"].astype(str).str.len() > 0]
    if len(missing):
        doc.h(3, "Metrics that are undefined on some folds")
        doc.ul(
            [
                f"{r.model}, {METRIC_LABELS.get(r.metric, r.metric)}: {r.missing}"
                for r in missing.itertuples()
            ]
        )

    doc.h(2, "Figures")
    for name, path in figures.items():
        doc.img(path, f"figures/{path.name}", FIGURE_CAPTIONS[name])

    doc.h(2, "Dataset")
    if spec.kind == "classification":
        total = ("cases per class: " if spec.is_tile else "") + ", ".join(
            f"{c}: {int(dataset.loc[dataset['fold'] == 0, f'n_{c}'].sum())}"
            for c in spec.classes
            if f"n_{c}" in dataset
        )
    else:
        ev = int(dataset.loc[dataset["fold"] == 0, "events"].sum())
        total = f"{ev} events, {n_cases - ev} censored"
    doc.p(
        f"{counted} ({total}). Cases per fold and split "
        + (
            "(every case is in the test split of exactly one fold):"
            if n_folds > 1
            else "(the dataset's own split):"
        )
    )
    doc.table(dataset)

    doc.h(2, "Protocol")
    train = (
        next((c.get("train") for r in runs.values() for c in r.configs if c.get("train")), None)
        or {}
    )
    epochs = {
        n: [m.get("selected_epoch") for m in r.metrics]
        for n, r in runs.items()
        if any(m.get("selected_epoch") is not None for m in r.metrics)
    }
    budget = ", ".join(
        f"{what} {train[key]}"
        for key, what in (
            ("epochs", "epochs"),
            ("lr", "AdamW lr"),
            ("weight_decay", "weight decay"),
            ("accumulate", "images per step" if spec.is_tile else "bags per step"),
            ("seed", "seed"),
        )
        if key in train
    )
    strat = "class" if spec.kind == "classification" else "event × time quantile"
    if n_folds == 1:
        split_line = (
            "Splits: the dataset's own train/val/test assignment (one fold); all images of a "
            "case must share a split."
        )
    else:
        split_line = (
            f"Splits: {'case' if spec.is_tile else 'patient'}-level, stratified ({strat}), "
            f"{n_folds} folds whose test parts partition the cohort; validation is "
            f"{spec.val_fraction:.0%} of each fold's non-test cases (split seed {spec.seed})"
            + (
                ". All images of a case are in the same split (image-level when the dataset "
                "has no case ids)."
                if spec.is_tile
                else "."
            )
        )
    items = [
        split_line,
        "Every model trains on the same splits with the same budget"
        + (f" ({budget})" if budget else "")
        + f". The checkpoint is selected on **validation** {METRIC_LABELS[metric]} (ties: lower "
        "validation loss); test is scored once, after selection.",
        "Selected epochs per fold: " + "; ".join(f"{n} {e}" for n, e in epochs.items()) + "."
        if epochs
        else "Selected epochs: not recorded.",
        "The single-teacher baseline of the paired comparison is the one with the best mean "
        f"validation {METRIC_LABELS[metric]}"
        + (f" ({chosen['val']})" if chosen.get("val") else "")
        + "; the best on test is shown as an oracle, which is optimistic for the baseline.",
        "Late fusion averages the single teachers' "
        + (
            "class probabilities"
            if spec.kind == "classification"
            else "within-fold rank-normalised risks"
        )
        + "; it is not trained.",
    ]
    if spec.kind == "survival":
        bins = next(
            (c.get("bins") for r in runs.values() for c in r.configs if c.get("bins")), None
        )
        items.append(
            f"Survival: discrete-time NLL over {spec.n_bins} hazard bins whose edges are "
            "quantiles of the event times of each fold's **training** cases"
            + (f" (fold 0: {', '.join(f'{b:.3g}' for b in bins)})" if bins else "")
            + "; risk = −Σ survival. IPCW C-index with τ = 90th percentile of training times; "
            "per-fold log-rank p splits test cases at the training median risk. Pooled risks "
            "are rank-normalised within each fold before pooling."
        )
    items.append(
        f"Uncertainty: mean ± SD over folds; case-level percentile bootstrap of the pooled "
        f"out-of-fold predictions ({cfg.n_boot} resamples, seed {cfg.seed}"
        + ("; a drawn case brings all its images" if spec.is_tile else "")
        + "); paired comparison by a fold-stratified paired bootstrap and the Wilcoxon "
        "signed-rank test over folds."
    )
    doc.ul(items)
    if settings:
        doc.p("Student settings: " + ", ".join(f"{k} = {v}" for k, v in sorted(settings.items())))

    doc.h(2, "Software and teachers")
    doc.table(pd.DataFrame({"package": list(software), "version": list(software.values())}))
    if len(teachers_df):
        doc.table(teachers_df)
    doc.p(f"Report written by shazam {__version__}.")
    return doc
