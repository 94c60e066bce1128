"""Slide-level metrics from the field's libraries (scikit-learn, scikit-survival, lifelines).

Every function returns ``(metrics, reasons)``: a metric that is undefined on the data at hand
(one class present, no events, no comparable pairs, …) is ``None`` with a reason, never 0 and
never an exception that kills the job. A metric computed on part of the data (macro-F1 over the
classes present) keeps its value and ``reasons`` notes what it covers: a reason beside a value
is a note, not a gap.
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
    y_true,
    prob,
    n_classes: int,
    only: tuple[str, ...] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> tuple[dict, dict]:
    """``y_true``: class indices; ``prob``: (n, n_classes) probabilities. ``only``: compute
    just these metrics (the bootstrap resamples thousands of times; sklearn's per-call
    overhead dominates). ``class_names``: how the notes name the classes (else by index).

    Macro-F1 averages over the classes present in ``y_true``: a class absent from these cases
    has no F1 (not 0); a present class never predicted correctly scores 0."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    pred = p.argmax(1)
    labels = list(range(n_classes))
    present = np.unique(y)
    m: dict = {"n_cases": int(len(y))}
    r: dict = {}

    def auc():
        if len(present) < 2:
            raise ValueError(f"only class {present.tolist()} present")
        if n_classes == 2:
            return float(roc_auc_score(y, p[:, 1]))
        if len(present) < n_classes:
            raise ValueError(f"classes {sorted(set(labels) - set(present.tolist()))} absent")
        return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels))

    def bacc():
        if len(present) < 2:
            raise ValueError("only one class present")
        # sklearn's balanced_accuracy_score (the mean recall over the classes present in the
        # truth) from the confusion counts: the bootstrap calls it thousands of times per
        # report and sklearn's input checks were 85% of its cost; a test holds them equal
        n = np.bincount(y, minlength=n_classes)
        hit = np.bincount(y[pred == y], minlength=n_classes)
        return float(np.mean(hit[present] / n[present]))

    def f1_macro():
        if not len(present):
            raise ValueError("no cases")
        return float(f1_score(y, pred, average="macro", labels=present, zero_division=0))

    _safe("balanced_accuracy", bacc, m, r, only)
    _safe("auc_macro", auc, m, r, only)
    _safe(
        "f1_weighted",
        lambda: float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
        m,
        r,
        only,
    )
    _safe("f1_macro", f1_macro, m, r, only)
    if m.get("f1_macro") is not None and len(present) < n_classes:
        names = [str(class_names[i]) if class_names else str(i) for i in present]
        r["f1_macro"] = (
            f"over the {len(present)} of {n_classes} classes present: {', '.join(names)}"
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

    The IBS and the td-AUC weight cases by the censoring distribution estimated on the training
    cases, which ends at the longest training time: their grid stays below it, and
    ``n_beyond_followup`` counts the test cases at or past it (with a note in ``reasons``;
    :func:`_within_followup`). With training risks, ``risk_cutoff`` is the cut-off of the
    log-rank split.

    ``survival_fn(times) -> (n, len(times))`` gives each case's survival probabilities.
    ``only``: compute just these metrics.
    """
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

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
    if have_train:
        _within_followup(e, t, risk, survival_fn, tr_e, tr_t, m, r, only)
    else:
        for name in ("ibs", "td_auc_mean"):
            _safe(name, _raise("needs training data"), m, r, only)
    cut = None if train_risk is None else float(np.median(train_risk))
    if cut is not None:
        m["risk_cutoff"] = cut

    def logrank():
        if cut is None:
            raise ValueError("needs the training risks for the cut-off")
        return logrank_p(t, e, risk > cut, "the training median risk")

    _safe("logrank_p", logrank, m, r, only)
    return m, r


def _raise(why: str):
    def f():
        raise ValueError(why)

    return f


def _within_followup(e, t, risk, survival_fn, tr_e, tr_t, m, r, only) -> None:
    """IBS and mean td-AUC on a time grid inside the test follow-up and below the longest
    training time, where the censoring estimate (Kaplan–Meier of the training cases'
    censoring) ends.

    A test case at or beyond that time is event-free at every grid time: both metrics use it
    only as a case still at risk, weighted by the censoring estimate at the grid time, never
    at its own time. sksurv nevertheless evaluates the estimate at every case's own time and
    refuses a time past its end, which made both metrics None for the whole fold. Such a
    case's time is set just below the end: nothing at the grid times changes (the metrics are
    exactly sksurv's where sksurv can compute them) and the case is kept. They are counted in
    ``n_beyond_followup``."""
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score

    end = float(tr_t.max())
    beyond = t >= end
    tc = np.where(beyond, end - 1e-9 * max(abs(end), 1.0), t)
    m["n_beyond_followup"] = int(beyond.sum())

    def grid():
        lo, hi = np.percentile(tc, 10), np.percentile(tc, 80)
        g = np.unique(np.linspace(lo, hi, 20))
        g = g[(g >= tc.min()) & (g < tc.max())]
        if len(g) < 2:
            raise ValueError("test follow-up too short for a time grid")
        return g

    def ibs():
        if survival_fn is None:
            raise ValueError("needs a survival function")
        g = grid()
        train, test = _structured(tr_e, tr_t), _structured(e, tc)
        return float(integrated_brier_score(train, test, survival_fn(g), g))

    def td_auc():
        g = grid()
        return float(
            cumulative_dynamic_auc(_structured(tr_e, tr_t), _structured(e, tc), risk, g)[1]
        )

    _safe("ibs", ibs, m, r, only)
    _safe("td_auc_mean", td_auc, m, r, only)
    if beyond.any():
        r["n_beyond_followup"] = (
            f"{int(beyond.sum())} of {len(t)} test case(s) at or beyond the longest training "
            f"time ({end:.4g}), where the censoring estimate ends: kept, as event-free over "
            "the whole time grid"
        )


def logrank_p(time, event, high, cut: str = "the cut-off") -> float:
    """Two-sided log-rank p of the ``high`` vs the other cases (lifelines); ValueError when
    one group is empty."""
    from lifelines.statistics import logrank_test

    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=bool)
    high = np.asarray(high, dtype=bool)
    if high.all() or (~high).all():
        raise ValueError(f"all cases on one side of {cut}")
    res = logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high])
    return float(res.p_value)


def c_index_within(event, time, risk, groups) -> tuple[dict, dict]:
    """Harrell's C over comparable pairs of cases of the same group only (the test folds:
    each fold's model scores risk on its own scale): Σ (concordant + ½ tied risk) /
    Σ (concordant + discordant + tied risk) over the groups, sksurv's counts per group.
    Returns ``({"c_index": C or None}, reasons)``."""
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    e = np.asarray(event, dtype=bool)
    t = np.asarray(time, dtype=float)
    risk = np.asarray(risk, dtype=float)
    g = np.asarray(groups)
    m: dict = {}
    r: dict = {}

    def pooled():
        num = den = 0.0
        for k in np.unique(g):
            sel = g == k
            if not e[sel].any():
                continue  # no event: no comparable pair in this fold
            try:
                _, conc, disc, tied_risk, _ = concordance_index_censored(e[sel], t[sel], risk[sel])
            except NoComparablePairException:
                continue
            num += conc + 0.5 * tied_risk
            den += conc + disc + tied_risk
        if den == 0:
            raise ValueError("no comparable pairs within any fold")
        return float(num / den)

    _safe("c_index", pooled, m, r)
    return m, r
