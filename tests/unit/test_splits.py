import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shazam.cohorts import Cohort
from shazam.splits import SPLITS, import_splits, make_splits, task_folds, write_splits
from shazam.tasks import LabelError, TaskSpec


def cohort_from(labels: pd.DataFrame, spec: TaskSpec) -> Cohort:
    cases = labels.copy()
    cases["n_slides"] = 1
    return Cohort(spec, cases.sort_values("case_id").reset_index(drop=True), [], [])


@st.composite
def classification_cohorts(draw):
    k = draw(st.integers(2, 5))
    n_classes = draw(st.integers(2, 4))
    counts = [draw(st.integers(k, 25)) for _ in range(n_classes)]
    classes = tuple(f"c{i}" for i in range(n_classes))
    labels = [classes[i] for i, n in enumerate(counts) for _ in range(n)]
    ids = [f"P{i:04d}" for i in draw(st.permutations(range(len(labels))))]
    spec = TaskSpec("t", "classification", "x", classes=classes, folds=k,
                    val_fraction=draw(st.sampled_from([0.1, 0.15, 0.25])),
                    seed=draw(st.integers(0, 10_000)))  # fmt: skip
    df = pd.DataFrame({"case_id": ids, "label": labels})
    df["y"] = [classes.index(v) for v in labels]
    return cohort_from(df, spec)


@st.composite
def survival_cohorts(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(3 * k, 80))
    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    ev = rng.random(n) < draw(st.floats(0.2, 0.9))
    ev[:k] = True
    spec = TaskSpec("t", "survival", "x", time_col="t", event_col="e", folds=k,
                    seed=draw(st.integers(0, 10_000)))  # fmt: skip
    df = pd.DataFrame({"case_id": [f"P{i:04d}" for i in range(n)],
                       "time": rng.exponential(30, n) + 0.1, "event": ev})  # fmt: skip
    return cohort_from(df, spec)


def _check_partition(cohort, folds):
    ids = set(cohort.cases["case_id"])
    tested = []
    for df in folds:
        assert set(df["case_id"]) == ids and not df["case_id"].duplicated().any()
        assert set(df["split"]) == set(SPLITS)
        tested += df.loc[df["split"] == "test", "case_id"].tolist()
    assert sorted(tested) == sorted(ids)  # every case tested exactly once


def _within_one(values_per_fold, total, k):
    ideal = total / k
    return all(abs(v - ideal) < 1 for v in values_per_fold)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(classification_cohorts())
def test_classification_splits_properties(cohort):
    folds = make_splits(cohort)
    _check_partition(cohort, folds)
    lab = cohort.cases.set_index("case_id")["label"]
    for c in cohort.task.classes:
        per_fold = [int((lab[df.loc[df["split"] == "test", "case_id"]] == c).sum()) for df in folds]
        assert _within_one(per_fold, int((lab == c).sum()), cohort.task.folds)


@SETTINGS
@given(survival_cohorts())
def test_survival_splits_properties(cohort):
    folds = make_splits(cohort)
    _check_partition(cohort, folds)
    ev = cohort.cases.set_index("case_id")["event"]
    per_fold = [int(ev[df.loc[df["split"] == "test", "case_id"]].sum()) for df in folds]
    assert _within_one(per_fold, int(ev.sum()), cohort.task.folds)
    sizes = [int((df["split"] == "test").sum()) for df in folds]
    assert _within_one(sizes, len(cohort.cases), cohort.task.folds)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"case_id": [f"P{i:03d}" for i in range(40)],
                           "label": rng.choice(["A", "B"], 40)})  # fmt: skip
    labels["y"] = (labels["label"] == "B").astype(int)

    def files(seed, d):
        spec = TaskSpec("t", "classification", "x", classes=("A", "B"), folds=4, seed=seed)
        write_splits(make_splits(cohort_from(labels, spec)), cohort_from(labels, spec), d)
        return [(d / f"fold_{k}.csv").read_bytes() for k in range(4)]

    a, b, c = files(7, tmp_path / "a"), files(7, tmp_path / "b"), files(8, tmp_path / "c")
    assert a == b and a != c
    assert (tmp_path / "a" / "summary.tsv").read_bytes() == (
        tmp_path / "b" / "summary.tsv"
    ).read_bytes()


def _clam_dir(tmp_path, folds):
    d = tmp_path / "clam"
    d.mkdir()
    for k, df in enumerate(folds):
        cols = {sp: df.loc[df["split"] == sp, "case_id"].tolist() for sp in SPLITS}
        n = max(len(v) for v in cols.values())
        out = pd.DataFrame({sp: v + [None] * (n - len(v)) for sp, v in cols.items()})
        out.to_csv(d / f"splits_{k}.csv")  # CLAM writes the index as a first unnamed column
    return d


def _demo_cohort():
    ids = [f"P{i:02d}" for i in range(20)]
    labels = pd.DataFrame({"case_id": ids, "label": ["A", "B"] * 10})
    labels["y"] = (labels["label"] == "B").astype(int)
    spec = TaskSpec("subtype", "classification", "x", classes=("A", "B"), folds=3)
    sheet = pd.DataFrame({"slide_id": [f"{c}_s1" for c in ids], "path": "x", "case_id": ids})
    return cohort_from(labels, spec), sheet


def test_import_clam_splits_roundtrip_with_slide_ids(tmp_path):
    cohort, sheet = _demo_cohort()
    folds = make_splits(cohort)
    as_slides = [df.assign(case_id=df["case_id"] + "_s1") for df in folds]
    got = import_splits(_clam_dir(tmp_path, as_slides), cohort, sheet)
    for a, b in zip(folds, got, strict=True):
        pd.testing.assert_frame_equal(
            a.sort_values("case_id").reset_index(drop=True), b.reset_index(drop=True)
        )


def test_import_rejects_val_test_overlap_naming_the_case(tmp_path):
    cohort, sheet = _demo_cohort()
    folds = make_splits(cohort)
    f0 = folds[0]
    victim = f0.loc[f0["split"] == "test", "case_id"].iloc[0]
    folds[0] = pd.concat([f0, pd.DataFrame({"case_id": [victim], "split": ["val"]})])
    with pytest.raises(
        LabelError,
        match=rf"fold 0: case '{victim}' is in test and val \(validation and test overlap\)",
    ):
        import_splits(_clam_dir(tmp_path, folds), cohort, sheet)


def test_import_fold_table_and_errors(tmp_path):
    cohort, sheet = _demo_cohort()
    folds = make_splits(cohort)
    table = pd.DataFrame({"case_id": folds[0]["case_id"]})
    for k, df in enumerate(folds):
        table[f"fold_{k}"] = df.set_index("case_id").loc[table["case_id"], "split"].to_numpy()
    table.to_csv(tmp_path / "splits.csv", index=False)
    got = import_splits(tmp_path / "splits.csv", cohort, sheet)
    assert [len(g) for g in got] == [20, 20, 20]
    table.loc[0, "case_id"] = "GHOST"
    table.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LabelError, match="id 'GHOST' is neither a cohort case nor a slide"):
        import_splits(tmp_path / "bad.csv", cohort, sheet)
    table.drop(columns=["fold_2"]).iloc[1:].to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(LabelError, match="has 2 folds but the task says folds: 3"):
        import_splits(tmp_path / "two.csv", cohort, sheet)


def test_task_folds_of_a_slide_task_come_from_labels_and_sheet(tmp_path):
    _, sheet = _demo_cohort()
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,label\n" + "".join(f"P{i:02d},{'AB'[i % 2]}\n" for i in range(20)))
    spec = TaskSpec("subtype", "classification", str(labels), classes=("A", "B"), folds=3)
    cohort, folds = task_folds(spec, sheet)
    assert len(cohort.cases) == 20 and len(folds) == 3
    for got, want in zip(folds, make_splits(cohort), strict=True):
        pd.testing.assert_frame_equal(got, want)
    # imported: the same folds back, ids given as slide ids
    clam = _clam_dir(tmp_path, [df.assign(case_id=df["case_id"] + "_s1") for df in folds])
    spec_imported = TaskSpec(
        "subtype", "classification", str(labels), classes=("A", "B"), folds=3, splits=str(clam)
    )
    _, imported = task_folds(spec_imported, sheet)
    for got, want in zip(imported, folds, strict=True):
        assert dict(zip(got["case_id"], got["split"], strict=True)) == dict(
            zip(want["case_id"], want["split"], strict=True)
        )
    # a slide task without its sheet is an error naming the task
    with pytest.raises(ValueError, match="task subtype: --slides is needed"):
        task_folds(spec)
