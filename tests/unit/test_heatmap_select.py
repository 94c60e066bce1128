"""Which slides get a heatmap (shazam.heatmap_select): test cases per class of the fold's test
split, external cohorts, chosen slides, and slides without patches."""

import h5py
import numpy as np
import pandas as pd
import pytest

from shazam.heatmap_select import Cohort, patch_counter, select_slides
from shazam.predict import case_labels
from shazam.tasks import LabelError, TaskSpec

CLASSES = TaskSpec("sub", "classification", "labels.csv", classes=("A", "B"), folds=3)
SURV = TaskSpec("os", "survival", "labels.csv", folds=3)


def features(root, patches: dict[str, int], teacher="ta"):
    """A feature file of ``teacher`` per slide with that many patch rows."""
    for sid, n in patches.items():
        p = root / "features" / teacher / f"{sid}.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(p, "w") as f:
            f["coords"] = np.zeros((n, 2), np.int64)
            f["features"] = np.zeros((n, 4), np.float16)
    return patch_counter(teacher, root)


def sheet(slides: dict[str, str]) -> pd.DataFrame:
    """{slide: case} as load_sheet's frame (the slide file: {slide}.svs)."""
    return pd.DataFrame({"slide_id": list(slides), "path": [f"/x/{s}.svs" for s in slides],
                         "case_id": list(slides.values()), "mpp": np.nan})  # fmt: skip


def fold(splits: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"case_id": list(splits), "split": list(splits.values())})


def picked(picks):
    return [(p.slide_id, p.case_id, p.source, p.label, p.n_patches) for p in picks]


# Class A's test cases: a0 (no patches), a1 (two slides: 3 and 7 patches), a2, a3; class B's:
# b1 and b2; every train and val case has more patches than any test case.
COHORT = {"a0": "a0", "a1x": "a1", "a1y": "a1", "a2": "a2", "a3": "a3", "b1": "b1",
          "b2": "b2", "tr_a": "tr_a", "tr_b": "tr_b", "va_a": "va_a", "va_b": "va_b"}  # fmt: skip
PATCHES = {"a0": 0, "a1x": 3, "a1y": 7, "a2": 5, "a3": 5, "b1": 4, "b2": 4, "tr_a": 90,
           "tr_b": 90, "va_a": 90, "va_b": 90}  # fmt: skip
LABELS = pd.DataFrame({"case_id": ["a0", "a1", "a2", "a3", "b1", "b2", "tr_a", "tr_b", "va_a",
                                   "va_b"],
                       "label": ["A"] * 4 + ["B"] * 2 + ["A", "B", "A", "B"]})  # fmt: skip
SPLITS = fold({**dict.fromkeys(["a0", "a1", "a2", "a3", "b1", "b2"], "test"),
               "tr_a": "train", "tr_b": "train", "va_a": "val", "va_b": "val"})  # fmt: skip
# two per class: a0 (no patches) gives way to a1 and a2; a1 is shown by a1y, its slide with 7
# patches; never a train or val case
TWO_PER_CLASS = [("a1y", "a1", "test", "A", 7), ("a2", "a2", "test", "A", 5),
                 ("b1", "b1", "test", "B", 4), ("b2", "b2", "test", "B", 4)]  # fmt: skip


def test_per_class_test_cases_of_the_fold_only_each_by_its_slide_with_most_patches(tmp_path):
    count = features(tmp_path, PATCHES)
    test = Cohort("test", sheet(COHORT), LABELS)
    picks = select_slides(CLASSES, count, 2, test, SPLITS)
    assert picked(picks) == TWO_PER_CLASS  # case_id order, those with patches first
    # more than the split holds: every test case, the one without patches last of its class
    picks = select_slides(CLASSES, count, 9, test, SPLITS)
    assert [p.case_id for p in picks] == ["a1", "a2", "a3", "a0", "b1", "b2"]
    assert picks[3].n_patches == 0 and picks[3].label == "A"


def test_survival_draws_event_and_censored_cases(tmp_path):
    count = features(tmp_path, {f"s{i}": 10 + i for i in range(6)})
    cohort = sheet({f"s{i}": f"c{i}" for i in range(6)})
    labels = pd.DataFrame({"case_id": [f"c{i}" for i in range(6)], "time": [5.0] * 6,
                           "event": [1, 0, 1, 0, 0, 1]})  # fmt: skip
    splits = fold({"c0": "train", "c1": "test", "c2": "test", "c3": "test", "c4": "test",
                   "c5": "val"})  # fmt: skip
    picks = select_slides(SURV, count, 1, Cohort("test", cohort, labels), splits)
    assert picked(picks) == [("s2", "c2", "test", "event", 12),
                             ("s1", "c1", "test", "censored", 11)]  # fmt: skip


def test_external_cohorts_with_labels_by_class_without_in_sheet_order(tmp_path):
    count = features(tmp_path, {"e1": 3, "e2": 0, "e3": 2, "e4": 2, "e5": 9, "u1": 0, "u2": 1,
                                "u3": 1, "u4": 1, "u5": 1})  # fmt: skip
    labelled = Cohort("external:kiel", sheet({f"e{i}": f"k{i}" for i in range(1, 6)}),
                      pd.DataFrame({"case_id": ["k1", "k2", "k3", "k4"],
                                    "label": ["B", "A", "A", "A"]}))  # fmt: skip
    bare = Cohort("external:oslo", sheet({f"u{i}": f"o{i}" for i in range(1, 6)}), None)
    picks = select_slides(CLASSES, count, 1, external=[labelled, bare])
    # kiel: A's first case with patches is k3 (k2 has none), B's is k1; k5 has no label.
    # oslo: 1 per class × 2 classes = its first two slides with patches, in sheet order
    assert picked(picks) == [("e3", "k3", "external:kiel", "A", 2),
                             ("e1", "k1", "external:kiel", "B", 3),
                             ("u2", "o2", "external:oslo", "", 1),
                             ("u3", "o3", "external:oslo", "", 1)]  # fmt: skip


def test_an_external_class_unknown_to_the_task_names_the_file_line_and_label(tmp_path):
    path = tmp_path / "kiel_labels.csv"
    pd.DataFrame({"case_id": ["k1", "k2"], "label": ["A", "C"]}).to_csv(path, index=False)
    with pytest.raises(LabelError) as e:
        case_labels(CLASSES, path)
    assert "kiel_labels.csv, line 3" in str(e.value) and "'C'" in str(e.value)


def test_chosen_slides_are_looked_up_in_the_sheets_and_kept_without_patches(tmp_path):
    count = features(tmp_path, {**PATCHES, "k9": 0})
    test = Cohort("test", sheet(COHORT), LABELS, "slides.csv")
    ext = Cohort("external:kiel", sheet({"k9": "kc9"}), None, "kiel.csv")
    # tr_a is a training case: chosen by name, it is drawn all the same, with its label; a0
    # has no patches: kept; a2 is also a test pick: kept once, as the test pick
    picks = select_slides(CLASSES, count, 2, test, SPLITS, slide_ids=["tr_a", "a0", "a2"])
    assert picked(picks) == TWO_PER_CLASS + [("tr_a", "tr_a", "chosen", "A", 90),
                                             ("a0", "a0", "chosen", "A", 0)]  # fmt: skip
    # an external cohort's slide, unlabelled; per_class 0: the chosen slides only
    picks = select_slides(CLASSES, count, 0, test, SPLITS, [ext], ["k9"])
    assert picked(picks) == [("k9", "kc9", "chosen", "", 0)]
    with pytest.raises(ValueError, match=r"slide nope is in none of .*slides\.csv, kiel\.csv"):
        select_slides(CLASSES, count, 1, test, SPLITS, [ext], ["nope"])


def test_a_missing_feature_file_is_an_error_naming_it(tmp_path):
    count = features(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match=r"slide b: feature file .*ta/b\.h5 not found"):
        count("b")
