"""The report's figures (PNG, matplotlib's Agg backend), one function each, and their captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path
from ..metrics import classification_metrics
from ..models import registry
from ..tasks import TaskSpec
from .document import METRIC_LABELS
from .pooled import first_repeat, pooled_logrank, risk_groups
from .runs import ModelRun, _class_arrays
from .stats import Paired

FIGURE_CAPTIONS = {
    "metrics": "Every model's test metrics. Bars: mean over folds; dots: single folds; black "
    "diamond and whiskers: pooled out-of-fold estimate with its case-level bootstrap 95% CI "
    "(where defined; the survival C-index is pooled within folds: pairs of cases of one fold, "
    "cases resampled within each fold). P-values have no bars: they are not averaged.",
    "roc": "ROC curves of the pooled out-of-fold predictions (several classes: micro-average "
    "of the one-vs-rest curves); the legend gives the pooled AUC with its 95% CI.",
    "km": "Kaplan–Meier curves of the cases each model calls high risk vs low risk, pooled "
    "over folds: a case is high risk when its predicted risk is above the cut-off its fold's "
    "model recorded at training, the median risk of the fold's training cases (no test outcome "
    "or test risk sets it; the per-fold log-rank p uses the same cut-off). The title's "
    "log-rank p compares exactly these two groups (summary.tsv's pooled log-rank p).",
    "confusion": "Confusion matrix of the pooled out-of-fold predictions (rows: true class, "
    "columns: predicted).",
    "gate": "The student's gate: mean weight per teacher on each test fold (dots) and over "
    "folds (bars). Equal weights would be 1 / number of teachers.",
    "delta": "Paired comparison per run (fold × seed): the student's test metric minus the "
    "baseline's on the same test cases (dots); the black diamond is the mean Δ with the "
    "verdict's interval (corrected resampled t over runs), the grey one the paired case "
    "bootstrap 95% CI (trained models fixed). Baselines: the best single teacher chosen on "
    "validation, early fusion (concat), late fusion, and the oracle teacher.",
}
# metrics whose chance level is 0.5: a dashed line marks it
CHANCE_HALF = ("balanced_accuracy", "auc_macro", "c_index", "c_index_ipcw", "td_auc_mean")


def draw_figures(
    spec: TaskSpec,
    runs: dict[str, ModelRun],
    pooled: dict[str, pd.DataFrame],
    summary: pd.DataFrame,
    per_fold: pd.DataFrame,
    pairs: list[Paired],
    focus: list[str],
    fig_dir: Path,
    teachers: list[str],
) -> dict[str, Path]:
    """Every figure that applies, by name (the keys of :data:`FIGURE_CAPTIONS`), in report
    order; ``focus``: the models of the single-model figures (the student and its baseline)."""
    figures = {"metrics": fig_metrics(summary, per_fold, spec, fig_dir / "metrics.png")}
    if spec.kind == "classification":
        figures["roc"] = fig_roc(pooled, summary, spec, fig_dir / "roc.png")
        figures["confusion"] = fig_confusion(
            first_repeat(pooled[focus[0]]), spec, focus[0], fig_dir / "confusion.png"
        )
    else:
        models = list(dict.fromkeys(focus))
        figures["km"] = fig_km(pooled, runs, models, spec, fig_dir / "km.png")
    figures["gate"] = fig_gate(runs, fig_dir / "gate.png", teachers)
    figures["delta"] = fig_delta(pairs, fig_dir / "delta.png")
    return {n: p for n, p in figures.items() if p is not None}


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


def fig_metrics(
    summary: pd.DataFrame,
    per_fold: pd.DataFrame,
    spec: TaskSpec,
    path: Path,
    title: str = "test metrics per model",
    ci_label: str = "pooled, 95% CI",
):
    """Per metric, a bar per model (``summary``'s ``mean``), its folds (``per_fold``'s
    ``test``) as dots and, where there is a CI, ``pooled`` with it (a diamond, ``ci_label``)."""
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
        _pooled_ci(ax, x, s, ci_label)
        ax.set_xticks(x, models, rotation=60, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
        if metric in CHANCE_HALF:
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    fig.suptitle(f"{spec.name}: {title}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _pooled_ci(ax, x: np.ndarray, s: pd.DataFrame, label: str) -> None:
    """The pooled estimates with their CI (black diamonds), where there is a CI."""
    has_ci = s["ci_low"].notna()
    if not has_ci.any():
        return
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
        label=label,
    )
    ax.legend(fontsize=7, loc="lower right")


def fig_roc(
    pooled: dict[str, pd.DataFrame],
    summary: pd.DataFrame,
    spec: TaskSpec,
    path: Path,
    title: str = "ROC, pooled out-of-fold",
):
    from sklearn.metrics import roc_curve

    plt = _plt()
    student = registry.FAMILY[spec.family].student
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
        ax.plot(fpr, tpr, lw=1.5 if name == student else 1, label=lab)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(
        xlabel="1 − specificity",
        ylabel="sensitivity",
        title=f"{spec.name}: {title}",
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


def fig_km(
    pooled: dict[str, pd.DataFrame],
    runs: dict[str, ModelRun],
    models: list[str],
    spec: TaskSpec,
    path: Path,
):
    """Per model, Kaplan–Meier curves of the :func:`~.pooled.risk_groups` (each case split at
    its fold's training cut-off) and, in the title, their log-rank p (the summary's pooled
    ``logrank_p``); a model without recorded cut-offs gets a panel saying why."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        df = first_repeat(pooled[name])  # each case once, as the pooled log-rank p
        high, why = risk_groups(df, runs[name])
        title = name
        if high is None:
            ax.text(0.5, 0.5, _wrap(why), ha="center", va="center", fontsize=7,
                    transform=ax.transAxes)  # fmt: skip
        else:
            km_groups(ax, df, high)
            p, _ = pooled_logrank(df, runs[name])
            title += "" if p is None else f"\nlog-rank p = {p:.2g}"
        ax.set(
            title=title,
            xlabel=f"time ({spec.time_unit})",
            ylabel="survival probability",
            ylim=(0, 1.02),
        )
    fig.tight_layout()
    return _save(fig, path)


def km_groups(ax, df: pd.DataFrame, high: np.ndarray) -> None:
    """Kaplan–Meier curves (with their CI) of the ``high``-risk rows of ``df`` (``time``,
    ``event``) and of the others."""
    from lifelines import KaplanMeierFitter

    t, e = df["time"].to_numpy(float), df["event"].to_numpy().astype(bool)
    for grp, lab, col in ((~high, "low risk", "#3182bd"), (high, "high risk", "#de2d26")):
        if grp.any():
            KaplanMeierFitter().fit(
                t[grp], e[grp], label=f"{lab} (n={grp.sum()}, {e[grp].sum()} events)"
            ).plot_survival_function(ax=ax, color=col, ci_show=True)
    ax.legend(fontsize=7, loc="lower left")


def _wrap(text: str, width: int = 45) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


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
            c = p.corrected
            for dx, (lo, hi), colour in (
                (0.25, (c.low, c.high) if c is not None else (None, None), "black"),
                (0.33, (p.ci_low, p.ci_high), "#999999"),
            ):
                if lo is None:
                    continue
                ax.errorbar(
                    i + dx, p.mean, yerr=[[max(p.mean - lo, 0)], [max(hi - p.mean, 0)]],
                    fmt="D", color=colour, capsize=4, ms=5,
                )  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    short = [_short(p.label) for p in pairs]
    ax.set_xticks(
        range(len(pairs)),
        [f"{p.a} − {p.b}\n({s})" for p, s in zip(pairs, short, strict=True)],
        fontsize=7,
    )
    ax.set_ylabel(f"Δ {METRIC_LABELS.get(pairs[0].metric, pairs[0].metric)}")
    ax.set_title("student minus baseline, per run (fold × seed)")
    fig.tight_layout()
    return _save(fig, path)


def _short(label: str) -> str:
    for key, short in (("validation", "chosen on validation"), ("early", "early fusion"),
                       ("late", "late fusion"), ("oracle", "oracle")):  # fmt: skip
        if key in label:
            return short
    return label
