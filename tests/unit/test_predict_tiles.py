"""Prediction for tile tasks: trained fold models on another image set (shazam.predict
predict_tiles), its extraction with a task's settings (extract-tiles --images), and the CLI."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import textured, tile_spec

from shazam.cli import main
from shazam.evaluate.external import external_metrics
from shazam.evaluate.stats import EvalConfig
from shazam.extraction import ExtractParams, extract_tiles
from shazam.formats import read_tile_features, write_tile_features
from shazam.images import load_images
from shazam.predict import load_fold_model, predict_tiles, tile_table
from shazam.tasks import LabelError, TaskSpec
from shazam.training import TrainConfig, train_fold
from tests.unit.test_tiles import _write_features

CFG = TrainConfig(epochs=3, lr=3e-3, batch_bags=8, accumulate=8, d_model=16, dropout=0.0)
STUDENT = {"d_model": 16, "layers": 1}
CPU = ExtractParams(batch_size=3, num_workers=0, device="cpu", dtype="float32")
QUIET = {"log": lambda s: None}
MODELS = ("mlp-a", "concat-mlp", "shazam-v1")


def _train(root, spec, model, folds=2, teachers=("a", "b")):
    """``folds`` folds of ``model`` on the task's features under ``root``: the test cases
    move by 8 cases per fold."""
    cases = sorted(set(pd.read_csv(root / "cases.csv")["case_id"]))
    for k in range(folds):
        split = np.roll(["test"] * 8 + ["val"] * 4 + ["train"] * (len(cases) - 12), 8 * k)
        fold = root / f"fold_{k}.csv"
        pd.DataFrame({"case_id": cases, "split": split}).to_csv(fold, index=False)
        out = root / "models" / spec.name / model / f"fold_{k}"
        train_fold(model, spec, fold, None, list(teachers), out, CFG, features_root=root,
                   shazam_cfg=STUDENT, **QUIET)  # fmt: skip
    return root / "models" / spec.name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic tile features of teachers a (10 wide) and b (6 wide), every tile model
    trained on 2 folds (the student on 1)."""
    root = tmp_path_factory.mktemp("tiles")
    spec = TaskSpec.from_config(
        "roi",
        {
            "type": "tile_classification",
            "images": "unused.csv",
            "classes": ["n", "p"],
            "folds": 2,
        },  # fmt: skip
    )
    _write_features(root, "roi", {"a": 10, "b": 6}).to_csv(root / "cases.csv", index=False)
    for m in MODELS:  # the student on one fold: it is the slowest to train
        models = _train(root, spec, m, folds=1 if m == "shazam-v1" else 2)
    files = {t: root / "tile_features" / "roi" / f"{t}.h5" for t in ("a", "b")}
    return root, spec, models, files


def _subset(files: dict, ids, out_dir) -> dict:
    """The tile feature files of ``files`` restricted to the images ``ids`` (an image set of
    its own)."""
    out = {}
    for t, path in files.items():
        feats, rows, attrs = read_tile_features(path)
        keep = rows["image_id"].isin(set(ids)).to_numpy()
        out[t] = out_dir / f"{t}.h5"
        n = int(keep.sum())
        write_tile_features(out[t], rows[keep], {"high": feats["high"][keep]},
                            np.zeros((n, 2), np.int32), np.zeros(n, np.float32), attrs)  # fmt: skip
    return out


@pytest.mark.parametrize("model", MODELS)
def test_a_folds_own_test_images_reproduce_its_predictions(trained, tmp_path, model):
    root, spec, models, files = trained
    pred = pd.read_csv(models / model / "fold_0" / "predictions.csv")
    own = _subset(files, pred["image_id"], tmp_path)
    fm = load_fold_model(models / model / "fold_0")
    assert fm.levels == ["high"] and fm.standardizer is not None
    table = predict_tiles(spec, models, model, 1, own, cohort="own", **QUIET)
    assert list(table["image_id"]) == list(pred["image_id"])
    assert list(table["case_id"]) == list(pred["case_id"])
    assert list(table["label"]) == list(pred["label"]) and (table["note"] == "").all()
    for c in ("prob_n", "prob_p"):  # same weights, same standardiser, same batches: exact
        np.testing.assert_array_equal(table[f"{c}_fold0"], pred[c].to_numpy(np.float32))
        np.testing.assert_array_equal(table[c], table[f"{c}_fold0"])


def test_the_ensemble_is_the_mean_of_the_folds(trained):
    root, spec, models, files = trained
    table = predict_tiles(spec, models, "concat-mlp", 2, files, **QUIET)
    assert len(table) == 60 and list(table.columns) == [
        "image_id", "case_id", "label", "pred", "prob_n", "prob_p", "prob_n_fold0",
        "prob_p_fold0", "prob_n_fold1", "prob_p_fold1", "note"]  # fmt: skip
    for c in ("n", "p"):
        mean = (table[f"prob_{c}_fold0"] + table[f"prob_{c}_fold1"]) / 2
        np.testing.assert_allclose(table[f"prob_{c}"], mean, rtol=1e-6)
    assert list(table["pred"]) == list(np.where(table["prob_p"] > table["prob_n"], "p", "n"))
    assert list(table["label"]) == ["n", "p"] * 30
    m = external_metrics(table, spec, "concat-mlp", EvalConfig(n_boot=30))
    m = m.set_index(["estimate", "metric"])
    assert m.loc[("ensemble", "n_cases"), "value"] == 60  # a row per image
    ens = m.loc[("ensemble", "balanced_accuracy")]
    assert ens["n_boot"] > 0 and ens["ci_low"] <= ens["value"] <= ens["ci_high"]


def test_a_partly_labelled_image_set_scores_its_labelled_images():
    spec = tile_spec("unused.csv", image_level_splits=True)  # classes B, A
    rows = pd.DataFrame({"image_id": list("uvwxyz"), "case_id": ["c1", "c1", "c2", "c2", "c3",
                         "c3"], "y": [0, 1, 0, 1, -1, 1]})  # fmt: skip
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.1, 0.9]])
    lines = []
    table = tile_table(spec, rows, [p, p[::-1]], "ext", lines.append)
    assert list(table["label"]) == ["B", "A", "B", "A", None, "A"]
    assert list(table["note"]) == ["", "", "", "", "no label", ""]
    assert lines == ["cohort ext: 1 of 6 image(s) without a label"]
    np.testing.assert_allclose(table["prob_A"], (p[:, 1] + p[::-1, 1]) / 2)
    m = external_metrics(table, spec, "m", EvalConfig(n_boot=20)).set_index(["estimate", "metric"])
    assert m.loc[("fold_0", "n_cases"), "value"] == 5  # the unlabelled image is not scored
    # B: 2 of 2 right, A: 2 of 3
    assert m.loc[("fold_0", "balanced_accuracy"), "value"] == pytest.approx(5 / 6)


def test_a_missing_teacher_or_width_is_named(trained, tmp_path):
    root, spec, models, files = trained
    said = (r"cohort ext: no tile feature file of teacher\(s\) b — model concat-mlp "
            r"\(.*fold_0\) reads teachers a, b")  # fmt: skip
    with pytest.raises(ValueError, match=said):
        predict_tiles(spec, models, "concat-mlp", 2, {"a": files["a"]}, cohort="ext", **QUIET)
    _write_features(tmp_path, "roi", {"a": 7})
    with pytest.raises(ValueError, match=r"a:high features are 7 wide, model mlp-a .* on 10"):
        predict_tiles(spec, models, "mlp-a", 2, {"a": tmp_path / "tile_features/roi/a.h5"},
                      **QUIET)  # fmt: skip


# --------------------------------------------------------------------------- other image sets


def _images(folder, names, colour=(200, 100, 200)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        textured(12, 12, colour, i).save(folder / name)


def test_an_external_listing_needs_neither_labels_nor_case_ids(tmp_path):
    spec = tile_spec(tmp_path / "task.csv", case_pattern=r"c\d")  # classes B, A
    _images(tmp_path / "ext", ["c1_x.png", "c2_y.png", "c2_z.png"])
    (tmp_path / "ext" / "ext.csv").write_text("path\nc1_x.png\nc2_y.png\nc2_z.png\n")
    got = load_images(spec, tmp_path / "ext" / "ext.csv")
    assert list(got["y"]) == [-1, -1, -1] and list(got["label"]) == ["", "", ""]
    assert list(got["case_id"]) == ["c1", "c2", "c2"] and set(got["split"]) == {""}
    # no case_pattern, no case_id column: each image its own case (no refusal)
    alone = load_images(tile_spec(tmp_path / "task.csv"), tmp_path / "ext")
    assert list(alone["case_id"]) == ["c1_x.png", "c2_y.png", "c2_z.png"]
    assert list(alone["y"]) == [-1, -1, -1]
    # labels in part: the given ones are checked against the task's classes
    (tmp_path / "ext" / "l.csv").write_text("path,label\nc1_x.png,A\nc2_y.png,\nc2_z.png,C\n")
    with pytest.raises(LabelError, match=r"l.csv, line 4, column label: label 'C' is not one "
                       r"of the task's classes \['B', 'A'\]"):  # fmt: skip
        load_images(spec, tmp_path / "ext" / "l.csv")
    # a folder: class subfolders (some classes may be absent), not a class → named
    _images(tmp_path / "byclass", ["A/c3_a.png", "A/c4_a.png"])
    got = load_images(spec, tmp_path / "byclass")
    assert list(got["label"]) == ["A", "A"] and list(got["y"]) == [1, 1]
    assert list(got["case_id"]) == ["c3", "c4"]
    _images(tmp_path / "byclass", ["C/c5_c.png"])
    with pytest.raises(LabelError, match=r"subfolder per class \['B', 'A'\]; not a class: C"):
        load_images(spec, tmp_path / "byclass")


def test_an_unlabelled_image_set_extracts_and_predicts(tmp_path, capsys):
    # the task: labelled images of 16 cases, its own extraction and one trained fold
    rows = [{"path": f"c{c}.png", "label": "BA"[c % 2], "case_id": f"case{c}"} for c in range(16)]
    for c in range(16):
        _images(tmp_path / "task", [f"c{c}.png"], (60 + 120 * (c % 2),) * 3)
    pd.DataFrame(rows).to_csv(tmp_path / "task" / "t.csv", index=False)
    spec = tile_spec(tmp_path / "task" / "t.csv")
    own = tmp_path / "tile_features" / "roi" / "toy_cnn.h5"
    extract_tiles(spec, "toy_cnn", own, CPU, progress=False)
    with h5py.File(own) as f:  # the task's own extraction: no attr of an external set
        assert "images" not in f.attrs and "n_unlabelled" not in f.attrs
    pd.DataFrame(rows)[["case_id"]].drop_duplicates().to_csv(tmp_path / "cases.csv", index=False)
    models = _train(tmp_path, spec, "mlp-toy_cnn", folds=1, teachers=["toy_cnn"])

    # another image set without labels nor case ids, extracted through the CLI
    _images(tmp_path / "ext", ["u1.png", "u2.png", "u3.png"])
    (tmp_path / "ext" / "ext.csv").write_text("path\nu1.png\nu2.png\nu3.png\n")
    ext = tmp_path / "ext.h5"
    assert main(["extract-tiles", "--spec", spec.to_json(), "--teacher", "toy_cnn", "--out",
                 str(ext), "--extraction", json.dumps({"batch_size": 2, "num_workers": 0,
                 "device": "cpu", "dtype": "float32"}),  # fmt: skip
                 "--images", str(tmp_path / "ext" / "ext.csv")]) == 0  # fmt: skip
    with h5py.File(ext) as f:
        assert f["labels"][:].tolist() == [-1, -1, -1] and f.attrs["n_unlabelled"] == 3
        assert f.attrs["images"] == str(tmp_path / "ext" / "ext.csv")
    table = predict_tiles(spec, models, "mlp-toy_cnn", 1, {"toy_cnn": ext}, **QUIET)
    assert list(table["image_id"]) == ["u1.png", "u2.png", "u3.png"] and "label" not in table
    np.testing.assert_allclose(table["prob_A"] + table["prob_B"], 1.0, rtol=1e-6)
    assert (table["note"] == "").all()
    # the CLI: one file per model, no metrics without labels
    args = ["predict", "--model", "mlp-toy_cnn", "--models-dir", str(models), "--runs", "1",
            "--tile-features", f"toy_cnn={ext}"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "{model}.tsv")]) == 0
    back = pd.read_csv(tmp_path / "mlp-toy_cnn.tsv", sep="\t", keep_default_na=False)
    np.testing.assert_allclose(back["prob_A"], table["prob_A"], rtol=1e-6)
    assert main([*args, "--out", str(tmp_path / "p.tsv"), "--metrics-out",
                 str(tmp_path / "m.tsv")]) == 2  # fmt: skip
    assert "the prediction table has no labels — predict with an image set with labels" in (
        capsys.readouterr().err
    )
    # an unlabelled set is never trained on
    (tmp_path / "again" / "tile_features" / "roi").mkdir(parents=True)
    (tmp_path / "again" / "tile_features" / "roi" / "toy_cnn.h5").write_bytes(ext.read_bytes())
    with pytest.raises(ValueError, match="holds unlabelled images"):
        train_fold("mlp-toy_cnn", spec, tmp_path / "fold_0.csv", None, ["toy_cnn"],
                   tmp_path / "x", CFG, features_root=tmp_path / "again", **QUIET)  # fmt: skip


def test_the_cli_predicts_several_tile_models_with_metrics(trained, tmp_path, capsys):
    root, spec, models, files = trained
    args = ["predict", "--model", "mlp-a", "concat-mlp", "--models-dir", str(models),
            "--runs", "2", "--cohort", "ext", "--tile-features",
            *(f"{t}={p}" for t, p in files.items())]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "p.tsv")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "p.tsv").exists()
    assert main([*args, "--slides", "s.tsv", "--out", str(tmp_path / "{model}.tsv")]) == 2
    assert "is a tile task: give the image set's --tile-features" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "{model}.tsv"),
                 "--metrics-out", str(tmp_path / "{model}.metrics.tsv")]) == 0  # fmt: skip
    for m in ("mlp-a", "concat-mlp"):
        table = pd.read_csv(tmp_path / f"{m}.tsv", sep="\t", keep_default_na=False)
        alone = predict_tiles(spec, models, m, 2, files, **QUIET)
        np.testing.assert_allclose(table["prob_p"], alone["prob_p"], rtol=1e-6)
        metrics = pd.read_csv(tmp_path / f"{m}.metrics.tsv", sep="\t")
        assert set(metrics["model"]) == {m} and set(metrics["estimate"]) == {
            "ensemble", "fold_0", "fold_1"}  # fmt: skip
