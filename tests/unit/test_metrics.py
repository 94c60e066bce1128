import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from sksurv.metrics import concordance_index_censored

from shazam.metrics import classification_metrics, survival_metrics


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
