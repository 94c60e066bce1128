import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from sksurv.metrics import concordance_index_censored

from shazam.metrics import c_index_within, classification_metrics, survival_metrics


def test_classification_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet([1, 1, 1], 60)
    p[np.arange(60), y] += 0.5
    p /= p.sum(1, keepdims=True)
    m, r = classification_metrics(y, p, 3)
    pred = p.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert np.array(m["confusion"]).sum() == 60 and m["n_cases"] == 60 and not r


def test_undefined_classification_metrics_are_missing_with_reason():
    m, r = classification_metrics(np.zeros(5, int), np.tile([0.7, 0.3], (5, 1)), 2)
    assert m["auc_macro"] is None and "only class" in r["auc_macro"]
    assert m["balanced_accuracy"] is None and m["accuracy"] == 1.0


def _surv_data(n=80, seed=1):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t = rng.exponential(np.exp(-risk)) * 10 + 0.1
    c = rng.uniform(0, 20, n)
    e = t <= c
    return e, np.minimum(t, c), risk


def test_survival_c_index_agrees_with_sksurv_and_lifelines():
    e, t, risk = _surv_data()
    m, _ = survival_metrics(e, t, risk)
    assert m["c_index"] == pytest.approx(concordance_index_censored(e, t, risk)[0])
    # lifelines scores predicted survival times: pass -risk
    assert m["c_index"] == pytest.approx(concordance_index(t, -risk, e), abs=1e-6)
    assert m["n_events"] == int(e.sum())


def test_survival_metrics_with_training_data():
    e, t, risk = _surv_data(120, 2)
    tr_e, tr_t, tr_risk = _surv_data(200, 3)

    def surv(times):  # a proper decreasing survival curve per case
        return np.exp(-np.outer(np.exp(risk), times) / 10)

    m, r = survival_metrics(e, t, risk, surv, tr_e, tr_t, tr_risk)
    for k in ("c_index", "c_index_ipcw", "ibs", "td_auc_mean", "logrank_p"):
        assert m[k] is not None, r
    assert 0 < m["ibs"] < 0.5 and 0.5 < m["td_auc_mean"] <= 1 and 0 <= m["logrank_p"] <= 1


def test_survival_without_events_is_missing_not_zero():
    m, r = survival_metrics(np.zeros(5, bool), np.arange(1, 6.0), np.arange(5.0))
    assert m["c_index"] is None and "no events" in r["c_index"]
    assert m["logrank_p"] is None


def test_macro_f1_averages_over_the_classes_present():
    """Perfect predictions, 3 classes, class C absent from the fold: macro-F1 is 1.0 (not
    2/3: an absent class has no F1), with a note saying what it covers."""
    y = np.array([0, 1, 0, 1, 0, 1])
    m, r = classification_metrics(y, np.eye(3)[y], 3, class_names=("A", "B", "C"))
    assert m["f1_macro"] == 1.0
    assert r["f1_macro"] == "over the 2 of 3 classes present: A, B"
    # a present class never predicted right still scores 0 (mean of 1 and 0 … over A, B)
    pred = np.array([0, 0, 0, 0, 0, 0])
    m, _ = classification_metrics(y, np.eye(3)[pred], 3)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1]))
    assert 0 < m["f1_macro"] < 0.5


def _surv_fn(risk):
    return lambda times: np.exp(-np.outer(np.exp(risk), times) / 10)


def test_ibs_and_td_auc_with_a_test_time_beyond_the_training_follow_up():
    """One test event after the longest training time (itself an event): the censoring
    estimate from training ends before it and sksurv refuses the whole fold. The case is
    event-free at every grid time (the grid stays inside training follow-up), so both metrics
    are defined on all cases, and the case is counted."""
    e, t, risk = _surv_data(60, 4)
    tr_e, tr_t, tr_risk = _surv_data(150, 5)
    tr_e[np.argmax(tr_t)] = True  # the censoring estimate stays > 0 at its end
    t = np.minimum(t, tr_t.max() * 0.9)
    t[0], e[0] = tr_t.max() + 5, True  # the longest survivor, beyond training follow-up
    m, r = survival_metrics(e, t, risk, _surv_fn(risk), tr_e, tr_t, tr_risk)
    assert m["n_beyond_followup"] == 1 and "1 of 60 test case(s)" in r["n_beyond_followup"]
    assert m["ibs"] is not None and m["td_auc_mean"] is not None, r
    assert 0 < m["ibs"] < 0.5 and 0.5 < m["td_auc_mean"] <= 1
    # with the case at the end of follow-up instead: the same values (it is a case at risk
    # over the whole grid either way)
    t2 = t.copy()
    t2[0] = tr_t.max() * 0.95
    m2, r2 = survival_metrics(e, t2, risk, _surv_fn(risk), tr_e, tr_t, tr_risk)
    assert m2["n_beyond_followup"] == 0 and "n_beyond_followup" not in r2
    assert m["ibs"] == pytest.approx(m2["ibs"]) and m["td_auc_mean"] == pytest.approx(
        m2["td_auc_mean"]
    )
    # the cut-off of the log-rank split is recorded: the training median risk
    assert m["risk_cutoff"] == pytest.approx(np.median(tr_risk))


def test_ibs_and_td_auc_beyond_follow_up_equal_sksurv_where_it_computes_them():
    """The longest training time censored (the censoring estimate falls to 0 there) and the
    late test case censored: sksurv accepts the data as they are; the values are its own."""
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    e, t, risk = _surv_data(60, 4)
    tr_e, tr_t, tr_risk = _surv_data(150, 5)
    tr_e[np.argmax(tr_t)] = False
    t = np.minimum(t, tr_t.max() * 0.9)
    t[:2], e[:2] = tr_t.max() + 5, False
    m, _ = survival_metrics(e, t, risk, _surv_fn(risk), tr_e, tr_t, tr_risk)
    assert m["n_beyond_followup"] == 2
    lo, hi = np.percentile(np.minimum(t, tr_t.max()), [10, 80])
    g = np.unique(np.linspace(lo, hi, 20))
    g = g[(g >= t.min()) & (g < tr_t.max())]
    train, test = Surv.from_arrays(tr_e, tr_t), Surv.from_arrays(e, t)
    assert m["ibs"] == pytest.approx(integrated_brier_score(train, test, _surv_fn(risk)(g), g))
    assert m["td_auc_mean"] == pytest.approx(cumulative_dynamic_auc(train, test, risk, g)[1])


def test_c_index_within_groups_counts_pairs_inside_each_group():
    e, t, risk = _surv_data(90, 6)
    g = np.repeat([0, 1, 2], 30)
    risk = risk + g * 100  # a different risk scale per group: across groups it is noise
    m, _ = c_index_within(e, t, risk, g)
    counts = np.array([concordance_index_censored(e[g == k], t[g == k], risk[g == k])[1:4]
                       for k in range(3)])  # fmt: skip
    conc, disc, tied = counts.sum(0)
    assert m["c_index"] == pytest.approx((conc + 0.5 * tied) / (conc + disc + tied))
    # a perfect ranking within each group is 1.0 whatever the scales
    m, _ = c_index_within(e, t, -t + g * 1000, g)
    assert m["c_index"] == 1.0
    m, r = c_index_within(np.zeros(4, bool), np.arange(4.0), np.arange(4.0), [0, 0, 1, 1])
    assert m["c_index"] is None and "no comparable pairs" in r["c_index"]


def test_balanced_accuracy_equals_sklearns():
    """The bootstrap's balanced accuracy (from confusion counts) is sklearn's, with absent
    classes, classes predicted but absent from the truth, and every class size."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    for trial in range(200):
        k = int(rng.integers(2, 5))
        n = int(rng.integers(2, 40))
        y = rng.integers(0, k, n)
        if len(np.unique(y)) < 2:
            continue
        prob = rng.random((n, k))
        got = classification_metrics(y, prob, k, only=("balanced_accuracy",))[0]
        want = balanced_accuracy_score(y, prob.argmax(1))
        assert got["balanced_accuracy"] == pytest.approx(want, abs=1e-12), trial
