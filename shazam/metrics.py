"""Slide-level metrics from the field's libraries (scikit-learn, scikit-survival, lifelines).

Every function returns ``(metrics, reasons)``: a metric that is undefined on the data at hand
(one class present, no events, no comparable pairs, …) is ``None`` with a reason, never 0 and
never an exception that kills the job.
"""

from __future__ import annotations

import numpy as np

CLASSIFICATION_METRICS = (
    "balanced_accuracy",
    "auc_macro",
    "f1_weighted",
    "f1_macro",
    "accuracy",
    "confusion",
)
SURVIVAL_METRICS = ("c_index", "c_index_ipcw", "ibs", "td_auc_mean", "logrank_p")


def _safe(name, fn, metrics, reasons, only=None):
    if only is not None and name not in only:  # not requested (bootstrap resamples)
        return
    from sklearn import config_context

    try:
        # our calls are fixed: sklearn's per-call check of their parameters is a third of
        # a bootstrap's time (thousands of calls per report)
        with config_context(skip_parameter_validation=True):
            v = fn()
    except Exception as e:  # undefined on this data: record why
        metrics[name] = None
        reasons[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return
    if isinstance(v, float) and not np.isfinite(v):
        metrics[name] = None
        reasons[name] = "not finite on this data"
    else:
        metrics[name] = v


def classification_metrics(
    y_true, prob, n_classes: int, only: tuple[str, ...] | None = None
) -> tuple[dict, dict]:
    """``y_true``: class indices; ``prob``: (n, n_classes) probabilities. ``only``: compute
    just these metrics (the bootstrap resamples thousands of times; sklearn's per-call
    overhead dominates)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    pred = p.argmax(1)
    labels = list(range(n_classes))
    m: dict = {"n_cases": int(len(y))}
    r: dict = {}

    def auc():
        present = np.unique(y)
        if len(present) < 2:
            raise ValueError(f"only class {present.tolist()} present")
        if n_classes == 2:
            return float(roc_auc_score(y, p[:, 1]))
        if len(present) < n_classes:
            raise ValueError(f"classes {sorted(set(labels) - set(present.tolist()))} absent")
        return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels))

    def bacc():
        if len(np.unique(y)) < 2:
            raise ValueError("only one class present")
        return float(balanced_accuracy_score(y, pred))

    _safe("balanced_accuracy", bacc, m, r, only)
    _safe("auc_macro", auc, m, r, only)
    _safe(
        "f1_weighted",
        lambda: float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
        m,
        r,
        only,
    )
    _safe(
        "f1_macro",
        lambda: float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        m,
        r,
        only,
    )
    _safe("accuracy", lambda: float(accuracy_score(y, pred)), m, r, only)
    _safe("confusion", lambda: confusion_matrix(y, pred, labels=labels).tolist(), m, r, only)
    return m, r


def _structured(event, time):
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event, dtype=bool), time=np.asarray(time, float))


def survival_metrics(
    event,
    time,
    risk,
    survival_fn=None,
    train_event=None,
    train_time=None,
    train_risk=None,
    only: tuple[str, ...] | None = None,
) -> tuple[dict, dict]:
    """Harrell's C, IPCW C (τ = 90th percentile of training times, censoring from training),
    integrated Brier score and mean cumulative/dynamic AUC on a grid inside the test follow-up,
    and the log-rank p of high vs low risk split at the training median risk.

    ``survival_fn(times) -> (n, len(times))`` gives each case's survival probabilities.
    ``only``: compute just these metrics.
    """
    from sksurv.metrics import (
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )

    e = np.asarray(event, dtype=bool)
    t = np.asarray(time, dtype=float)
    risk = np.asarray(risk, dtype=float)
    m: dict = {"n_cases": int(len(e)), "n_events": int(e.sum())}
    r: dict = {}

    def harrell():
        if not e.any():
            raise ValueError("no events")
        return float(concordance_index_censored(e, t, risk)[0])

    _safe("c_index", harrell, m, r, only)
    have_train = train_event is not None and train_time is not None
    tr_e = np.asarray(train_event, dtype=bool) if have_train else None
    tr_t = np.asarray(train_time, dtype=float) if have_train else None

    def ipcw():
        if not have_train:
            raise ValueError("no training survival data given")
        tau = float(np.percentile(tr_t, 90))
        return float(
            concordance_index_ipcw(_structured(tr_e, tr_t), _structured(e, t), risk, tau=tau)[0]
        )

    _safe("c_index_ipcw", ipcw, m, r, only)

    def grid():
        # inside the test follow-up and the training range (needed by the censoring model)
        hi = min(np.percentile(t, 80), tr_t.max() - 1e-6)
        lo = np.percentile(t, 10)
        g = np.unique(np.linspace(lo, hi, 20))
        g = g[(g >= t.min()) & (g < t.max())]
        if len(g) < 2:
            raise ValueError("test follow-up too short for a time grid")
        return g

    def ibs():
        if not have_train or survival_fn is None:
            raise ValueError("needs training data and survival function")
        g = grid()
        return float(
            integrated_brier_score(_structured(tr_e, tr_t), _structured(e, t), survival_fn(g), g)
        )

    def td_auc():
        if not have_train:
            raise ValueError("needs training data")
        g = grid()
        return float(cumulative_dynamic_auc(_structured(tr_e, tr_t), _structured(e, t), risk, g)[1])

    _safe("ibs", ibs, m, r, only)
    _safe("td_auc_mean", td_auc, m, r, only)

    def logrank():
        from lifelines.statistics import logrank_test

        if train_risk is None:
            raise ValueError("needs the training risks for the cut-off")
        cut = float(np.median(train_risk))
        high = risk > cut
        if high.all() or (~high).all():
            raise ValueError("all cases on one side of the training median risk")
        res = logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high])
        return float(res.p_value)

    _safe("logrank_p", logrank, m, r, only)
    return m, r
