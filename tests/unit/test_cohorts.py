import numpy as np
import pandas as pd
import pytest

from shazam.cohorts import build_cohort, case_bags, load_labels, to_event
from shazam.tasks import LabelError, TaskSpec


def sheet(cases, slides_per_case=1):
    rows = [(f"{c}_s{j}", f"{c}_s{j}.svs", c) for c in cases for j in range(slides_per_case)]
    return pd.DataFrame(rows, columns=["slide_id", "path", "case_id"])


def cls_task(tmp_path, text, **kw):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    cfg = dict(type="classification", labels=str(p), classes=["A", "B"], folds=2) | kw
    return TaskSpec.from_config("subtype", cfg)


def surv_task(tmp_path, text, convention="censorship", **kw):
    p = tmp_path / "os.csv"
    p.write_text(text)
    col = "censorship" if convention == "censorship" else "event"
    cfg = dict(type="survival", labels=str(p), time_col="months", event_col=col,
               event_convention=convention, folds=2) | kw  # fmt: skip
    return TaskSpec.from_config("os", cfg)


@pytest.mark.parametrize(
    "text, message",
    [
        ("case_id,lab\nC1,A\n", r"missing column\(s\) label"),
        (
            "case_id,label\nC1,A\nC1,B\n",
            r"line 3, column case_id: duplicate case 'C1' \(see line 2\)",
        ),
        (
            "case_id,label\nC1,A\nC2,Z\n",
            r"line 3, column label: label 'Z' is not one of the task's classes",
        ),
    ],
)
def test_classification_label_errors(tmp_path, text, message):
    with pytest.raises(LabelError, match=message) as e:
        load_labels(cls_task(tmp_path, text))
    assert "labels.csv" in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("case_id,months,censorship\nC1,0,1\n", r"line 2, column months: time 0 must be > 0"),
        ("case_id,months,censorship\nC1,-3,1\n", r"line 2, column months: time -3 must be > 0"),
        (
            "case_id,months,censorship\nC1,soon,1\n",
            r"line 2, column months: time 'soon' is not a number",
        ),
        (
            "case_id,months,censorship\nC1,3,2\n",
            r"line 2, column censorship: '2' is not 0 or 1 .*1 = censored",
        ),
        ("case_id,months\nC1,3\n", r"missing column\(s\) censorship"),
    ],
)
def test_survival_label_errors(tmp_path, text, message):
    with pytest.raises(LabelError, match=message):
        load_labels(surv_task(tmp_path, text))


def test_class_with_fewer_cases_than_folds(tmp_path):
    t = cls_task(tmp_path, "case_id,label\nC1,A\nC2,A\nC3,A\nC4,B\n", folds=2)
    with pytest.raises(LabelError, match=r"fewer cases than folds \(2\): B \(1\)"):
        build_cohort(t, sheet(["C1", "C2", "C3", "C4"]))


def test_survival_without_events(tmp_path):
    t = surv_task(tmp_path, "case_id,months,censorship\nC1,3,1\nC2,5,1\nC3,7,1\n")
    with pytest.raises(LabelError, match="no events among 3 cases"):
        build_cohort(t, sheet(["C1", "C2", "C3"]))


def test_both_conventions_give_the_same_events(tmp_path):
    la = load_labels(surv_task(tmp_path, "case_id,months,censorship\nC1,3,1\nC2,5,0\nC3,7,0\n"))
    lb = load_labels(
        surv_task(tmp_path, "case_id,months,event\nC1,3,0\nC2,5,1\nC3,7,1\n", convention="event")
    )
    np.testing.assert_array_equal(la["event"], lb["event"])
    assert la["event"].tolist() == [False, True, True]
    assert to_event(np.array([1, 0]), "censorship").tolist() == [False, True]


def test_cohort_is_the_intersection_and_reports_the_rest(tmp_path):
    t = cls_task(tmp_path, "case_id,label\nC1,A\nC2,B\nC3,A\nC4,B\nX9,A\n")
    c = build_cohort(t, sheet(["C1", "C2", "C3", "C4", "Y7"], slides_per_case=2))
    assert c.cases["case_id"].tolist() == ["C1", "C2", "C3", "C4"]
    assert c.only_labels == ["X9"] and c.only_slides == ["Y7"]
    assert (c.cases["n_slides"] == 2).all()
    assert "1 case(s) in the label file but without slides: X9" in c.report()
    strict = cls_task(tmp_path, "case_id,label\nC1,A\nC2,B\nC3,A\nC4,B\nX9,A\n", unmatched="error")
    with pytest.raises(LabelError, match="without slides: X9"):
        build_cohort(strict, sheet(["C1", "C2", "C3", "C4"]))


def test_task_definition_errors():
    with pytest.raises(LabelError, match="give `classes`"):
        TaskSpec.from_config("t", {"type": "classification", "labels": "x"})
    with pytest.raises(LabelError, match="needs `time_col` and `event_col`"):
        TaskSpec.from_config("t", {"type": "survival", "labels": "x"})


def test_case_bags_union_of_slides():
    s = sheet(["C1", "C2"], slides_per_case=2)
    bags = case_bags(s, "uni2_h", cases=["C2"])
    assert bags == {"C2": ["results/features/uni2_h/C2_s0.h5", "results/features/uni2_h/C2_s1.h5"]}


def test_empty_cohort_is_a_clear_error(tmp_path):
    """A task whose cases have no slides left in the sheet (renamed ids, a sheet cut down)."""
    t = cls_task(tmp_path, "case_id,label\nP1,A\nP2,B\nP3,A\nP4,B\n")
    with pytest.raises(LabelError) as e:
        build_cohort(t, sheet(["TCGA-1", "TCGA-2"]))
    msg = str(e.value)
    assert "task subtype: empty cohort" in msg and str(tmp_path / "labels.csv") in msg
    assert "P1" in msg and "TCGA-1" in msg and "case_id" in msg
