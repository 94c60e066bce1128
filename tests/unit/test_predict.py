"""Prediction on a new cohort: trained fold models applied to other cases (shazam.predict)."""

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from shazam.evaluate.external import external_metrics, external_pair, internal_baseline
from shazam.evaluate.stats import EvalConfig
from shazam.predict import load_fold_model, predict_cohort, write_table
from shazam.tasks import LabelError
from shazam.training import TrainConfig, train_fold
from tests.unit.test_training import make_cohort

CFG = TrainConfig(epochs=2, lr=3e-3, accumulate=4, batch_bags=4, max_patches=32, d_model=16,
                  dropout=0.0)  # fmt: skip
# the student at its own width (config.json records its settings without d_model)
STUDENT = {"layers": 1, "d_model": 8}
QUIET = {"log": lambda s: None}


def rotate_fold(root, k):
    """fold_{k}.csv: the cohort's fold file with the splits moved by 6 cases per k."""
    fold = pd.read_csv(root / "fold.csv")
    fold["split"] = np.roll(fold["split"].to_numpy(), -6 * k)
    fold.to_csv(root / f"fold_{k}.csv", index=False)
    return root / f"fold_{k}.csv"


def train(root, model, sheet, spec, folds, shazam_cfg=None):
    for k in range(folds):
        out = root / "models" / spec.name / model / f"fold_{k}"
        train_fold(model, spec, rotate_fold(root, k), sheet, ["ta", "tb"], out, CFG,
                   features_root=root / "results", shazam_cfg=shazam_cfg, **QUIET)  # fmt: skip
    return root / "models" / spec.name


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    sheet, spec = make_cohort(root, n=18)
    train(root, "abmil-tb", sheet, spec, 2)
    return root, sheet, spec, train(root, "abmil-ta", sheet, spec, 2)


@pytest.fixture(scope="module")
def survival(tmp_path_factory):
    root = tmp_path_factory.mktemp("surv")
    sheet, spec = make_cohort(root, n=18, survival=True)
    return root, sheet, spec, train(root, "shazam", sheet, spec, 1, STUDENT)


def test_a_folds_own_test_cases_reproduce_its_predictions(classification):
    root, sheet, spec, models = classification
    pred = pd.read_csv(models / "abmil-ta" / "fold_0" / "predictions.csv")
    test = sheet[sheet["case_id"].isin(set(pred["case_id"]))]
    got = predict_cohort(spec, models, "abmil-ta", 1, test, root / "results",
                         labels=root / "labels.csv", cohort="own", **QUIET)  # fmt: skip
    assert list(got["case_id"]) == list(pred["case_id"])
    for c in ("prob_A", "prob_B"):  # same weights, same standardiser, same batches: exact
        np.testing.assert_array_equal(got[f"{c}_fold0"], pred[c].to_numpy(np.float32))
        np.testing.assert_array_equal(got[c], got[f"{c}_fold0"])
    assert list(got["pred"]) == list(pred["pred"]) and list(got["label"]) == list(pred["label"])
    assert (got["note"] == "").all()


def test_survival_risk_reproduced_from_the_students_folder(survival):
    root, sheet, spec, models = survival
    fm = load_fold_model(models / "shazam" / "fold_0")
    assert fm.levels == ["high"] and fm.model.head.in_features == 8
    pred = pd.read_csv(models / "shazam" / "fold_0" / "predictions.csv")
    test = sheet[sheet["case_id"].isin(set(pred["case_id"]))]
    got = predict_cohort(spec, models, "shazam", 1, test, root / "results",
                         labels=root / "labels.csv", **QUIET)  # fmt: skip
    np.testing.assert_array_equal(got["risk_fold0"], pred["risk"].to_numpy(np.float32))
    assert list(got["event"]) == list(pred["event"]) and np.allclose(got["time"], pred["time"])
    # one fold: the ensemble is its rank-normalised risk
    assert np.argsort(got["risk_rank"]).tolist() == np.argsort(got["risk_fold0"]).tolist()


def test_the_ensemble_averages_the_folds(classification, tmp_path):
    root, sheet, spec, models = classification
    got = predict_cohort(spec, models, "abmil-ta", 2, sheet, root / "results", **QUIET)
    assert len(got) == 18 and "label" not in got
    for c in ("A", "B"):
        mean = (got[f"prob_{c}_fold0"] + got[f"prob_{c}_fold1"]) / 2
        np.testing.assert_allclose(got[f"prob_{c}"], mean, rtol=1e-6)
    assert list(got["pred"]) == list(np.where(got["prob_B"] > got["prob_A"], "B", "A"))
    write_table(got, tmp_path / "p.tsv")
    back = pd.read_csv(tmp_path / "p.tsv", sep="\t", keep_default_na=False)
    assert list(back.columns) == list(got.columns) and len(back) == 18


def test_a_missing_teacher_is_named(classification, tmp_path):
    root, sheet, spec, models = classification
    feats = tmp_path / "results" / "features"
    shutil.copytree(root / "results" / "features" / "tb", feats / "tb")
    shutil.copytree(root / "results" / "features" / "ta", feats / "ta")
    (feats / "ta" / "s003.h5").unlink()
    said = r"cohort ext: teacher ta's features are missing for slide s003 \(.*ta/s003.h5\)"
    with pytest.raises(ValueError, match=said + " — model abmil-ta reads teachers ta"):
        predict_cohort(spec, models, "abmil-ta", 1, sheet, tmp_path / "results",
                       cohort="ext", **QUIET)  # fmt: skip


def test_an_unknown_class_is_named(classification, tmp_path):
    root, sheet, spec, models = classification
    labels = pd.read_csv(root / "labels.csv")
    labels.loc[4, "label"] = "C"
    labels.to_csv(tmp_path / "ext.csv", index=False)
    with pytest.raises(LabelError, match=r"ext.csv, line 6, column label: label 'C' is not one "
                       r"of the task's classes \['A', 'B'\]"):  # fmt: skip
        predict_cohort(spec, models, "abmil-ta", 1, sheet, root / "results",
                       labels=tmp_path / "ext.csv", **QUIET)  # fmt: skip


def test_a_case_without_patches_is_reported(survival, tmp_path):
    root, sheet, spec, models = survival
    shutil.copytree(root / "results", tmp_path / "results")
    empty = sheet["slide_id"].iloc[2]
    for t in ("ta", "tb"):
        with h5py.File(tmp_path / "results" / "features" / t / f"{empty}.h5", "w") as f:
            f["features"] = np.zeros((0, 16), np.float16)
            f["coords"] = np.zeros((0, 2), np.int64)
    lines = []
    labels = pd.read_csv(root / "labels.csv").iloc[1:]  # c000 unlabelled
    labels.to_csv(tmp_path / "l.csv", index=False)
    got = predict_cohort(spec, models, "shazam", 1, sheet, tmp_path / "results",
                         labels=tmp_path / "l.csv", cohort="ext", log=lines.append)  # fmt: skip
    case = sheet["case_id"].iloc[2]
    row = got.set_index("case_id").loc[case]
    assert row["note"] == "no patches" and row["n_patches"] == 0
    assert np.isnan(row["risk_rank"]) and np.isnan(row["risk_fold0"])
    assert got.set_index("case_id").loc["c000", "note"] == "no label"
    ranks = got["risk_rank"].dropna()  # ranks over the 17 predicted cases
    assert len(ranks) == 17 and ranks.max() == 1.0
    assert any("1 case(s) without patches" in s and case in s for s in lines)


def test_the_cli_writes_the_table_and_names_a_missing_teacher(classification, tmp_path, capsys):
    from shazam.cli import main

    root, sheet, spec, models = classification
    sheet.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    # no --spec: the task as the trained models recorded it (fold_0/config.json)
    args = ["predict", "--model", "abmil-ta", "--models-dir",
            str(models), "--runs", "2", "--slides", str(tmp_path / "slides.tsv"),
            "--labels", str(root / "labels.csv"), "--cohort", "ext"]  # fmt: skip
    out = tmp_path / "pred" / "abmil-ta.tsv"
    metrics = tmp_path / "pred" / "metrics.tsv"
    assert main([*args, "--features-root", str(root / "results"), "--out", str(out),
                 "--metrics-out", str(metrics)]) == 0  # fmt: skip
    assert "balanced_accuracy" in set(pd.read_csv(metrics, sep="\t")["metric"])
    table = pd.read_csv(out, sep="\t")
    assert len(table) == 18 and {"label", "pred", "prob_A_fold1"} <= set(table.columns)
    assert main([*args, "--features-root", str(tmp_path), "--out", str(tmp_path / "x.tsv")]) == 2
    assert "teacher ta's features are missing" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()


def test_the_cli_predicts_several_models_into_one_file_each(classification, tmp_path, capsys):
    from shazam.cli import main

    root, sheet, spec, models = classification
    sheet.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    args = ["predict", "--model", "abmil-ta", "abmil-tb", "--models-dir", str(models),
            "--runs", "2", "--slides", str(tmp_path / "slides.tsv"), "--labels",
            str(root / "labels.csv"), "--features-root", str(root / "results")]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "p.tsv")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "has no {model} but 2 models are given (abmil-ta, abmil-tb)" in err
    assert main([*args, "--out", str(tmp_path / "{model}.tsv"),
                 "--metrics-out", str(tmp_path / "m.tsv")]) == 2  # fmt: skip
    assert "--metrics-out" in capsys.readouterr().err
    assert not (tmp_path / "abmil-ta.tsv").exists()  # refused before predicting anything
    assert main([*args, "--out", str(tmp_path / "{model}.tsv"),
                 "--metrics-out", str(tmp_path / "{model}.metrics.tsv")]) == 0  # fmt: skip
    for m in ("abmil-ta", "abmil-tb"):
        got = pd.read_csv(tmp_path / f"{m}.tsv", sep="\t", keep_default_na=False)
        alone = predict_cohort(spec, models, m, 2, sheet, root / "results",
                               labels=root / "labels.csv", **QUIET)  # fmt: skip
        np.testing.assert_allclose(got["prob_A"], alone["prob_A"], rtol=1e-6)
        assert len(got) == 18 and list(got["label"]) == list(alone["label"])
        metrics = pd.read_csv(tmp_path / f"{m}.metrics.tsv", sep="\t")
        assert set(metrics["model"]) == {m} and "auc_macro" in set(metrics["metric"])


BOOT = EvalConfig(n_boot=50)


def test_external_metrics_are_the_reports(classification):
    """On a fold's own test cases, the fold's external metrics are its metrics.json's."""
    root, sheet, spec, models = classification
    fold = models / "abmil-ta" / "fold_0"
    test = sheet[sheet["case_id"].isin(set(pd.read_csv(fold / "predictions.csv")["case_id"]))]
    table = predict_cohort(spec, models, "abmil-ta", 2, test, root / "results",
                           labels=root / "labels.csv", **QUIET)  # fmt: skip
    m = external_metrics(table, spec, "abmil-ta", BOOT).set_index(["estimate", "metric"])
    internal = json.loads((fold / "metrics.json").read_text())
    for metric in ("balanced_accuracy", "auc_macro", "f1_macro", "n_cases"):
        assert m.loc[("fold_0", metric), "value"] == pytest.approx(internal[metric])
    ens = m.loc[("ensemble", "auc_macro")]
    assert ens["n_boot"] > 0 and ens["ci_low"] <= ens["value"] <= ens["ci_high"]
    assert set(m.index.get_level_values(0)) == {"ensemble", "fold_0", "fold_1"}


def test_external_survival_metrics_say_what_needs_training_data(survival):
    root, sheet, spec, models = survival
    table = predict_cohort(spec, models, "shazam", 1, sheet, root / "results",
                           labels=root / "labels.csv", **QUIET)  # fmt: skip
    m = external_metrics(table, spec, "shazam", BOOT).set_index(["estimate", "metric"])
    assert 0 <= m.loc[("ensemble", "c_index"), "value"] <= 1
    assert pd.isna(m.loc[("ensemble", "c_index_ipcw"), "value"])
    assert m.loc[("ensemble", "c_index_ipcw"), "reason"]
    # the ensemble's ranks order the cases as the one fold's risks: the same C-index
    assert m.loc[("ensemble", "c_index"), "value"] == m.loc[("fold_0", "c_index"), "value"]


def test_external_comparison_against_the_internally_chosen_teacher(classification):
    root, sheet, spec, models = classification
    tables = {n: predict_cohort(spec, models, n, 2, sheet, root / "results",
                                labels=root / "labels.csv", **QUIET)
              for n in ("abmil-ta", "abmil-tb")}  # fmt: skip
    summary = pd.DataFrame({"model": ["abmil-ta", "abmil-tb", "concat"],
                            "metric": "balanced_accuracy", "mean": [0.9, 0.6, 1.0],
                            "val_mean": [0.7, 0.8, 1.0]})  # fmt: skip
    base = internal_baseline(summary, spec)
    assert base == "abmil-tb"  # chosen on validation, not on test (nor the fusion)
    pair, (n_rows, n_cases) = external_pair(tables["abmil-ta"], tables[base], spec,
                                            ("abmil-ta", base), cfg=BOOT)  # fmt: skip
    ba = {n: external_metrics(t, spec, n, BOOT).set_index(["estimate", "metric"])
          .loc[("ensemble", "balanced_accuracy"), "value"] for n, t in tables.items()}  # fmt: skip
    assert pair.per_fold[0] == pytest.approx(ba["abmil-ta"] - ba["abmil-tb"])
    assert pair.b == "abmil-tb" and pair.n_valid > 0
    assert n_rows == n_cases == sheet["case_id"].nunique()


def test_early_fusion_of_teachers_out_of_alphabetical_order_is_rebuilt_in_training_order(tmp_path):
    # config.json's widths are written with sorted keys; concat's per-teacher norms follow the
    # teachers' order, so the model must be rebuilt in that order (the demo's toy_vit, toy_cnn)
    sheet, spec = make_cohort(tmp_path, n=18)
    out = tmp_path / "models" / spec.name / "concat" / "fold_0"
    train_fold("concat", spec, rotate_fold(tmp_path, 0), sheet, ["tb", "ta"], out, CFG,
               features_root=tmp_path / "results", **QUIET)  # fmt: skip
    assert list(json.loads((out / "config.json").read_text())["dims"]) == ["ta:high", "tb:high"]
    pred = pd.read_csv(out / "predictions.csv")
    test = sheet[sheet["case_id"].isin(set(pred["case_id"]))]
    got = predict_cohort(spec, out.parent.parent, "concat", 1, test, tmp_path / "results",
                         cohort="own", **QUIET)  # fmt: skip
    for c in ("prob_A", "prob_B"):
        np.testing.assert_array_equal(got[f"{c}_fold0"], pred[c].to_numpy(np.float32))
