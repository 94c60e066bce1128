"""The external report of a tile task: prediction tables with a row per image
(:func:`shazam.predict.tile_table`), rows identified by ``image_id``, the bootstrap drawing
whole cases; and an unlabelled image set's short report."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from shazam.cli import main
from shazam.evaluate import EvalConfig
from shazam.evaluate import tables as report_tables
from shazam.evaluate.external import METRIC_COLUMNS, external_pair
from shazam.evaluate.external_report import (
    COMPARISON_COLUMNS,
    external_report,
    late_fusion_table,
    read_predictions,
)
from shazam.predict import tile_table, write_table
from shazam.tasks import TaskSpec

TILE = TaskSpec.from_config(
    "roi", {"type": "tile_classification", "images": "x.csv", "classes": ["A", "B"], "folds": 2}
)
BOOT = EvalConfig(n_boot=40)
CASES = [f"k{i}" for i in range(10)]
IMAGES = [f"img{i:02d}" for i in range(30)]  # 3 images per case
OF_CASE = [CASES[i // 3] for i in range(30)]
UNLABELLED_IMAGE = "img29"  # its case k9 keeps two labelled images
SKILL = {"mlp-a": 0.1, "mlp-b": 0.45, "concat-mlp": 0.3, "shazam-v1": 0.5}


def tile_tables(labelled=True, skills=SKILL, seed=0):
    """Each model's image table (2 folds): probabilities following the images' class with
    weight ``skill``; the cases alternate A/B, every image of a case has its class."""
    rng = np.random.default_rng(seed)
    y = np.array([i // 3 % 2 for i in range(30)])
    seen = np.where(np.array(IMAGES) == UNLABELLED_IMAGE, -1, y) if labelled else -np.ones(30)
    rows = pd.DataFrame({"image_id": IMAGES, "case_id": OF_CASE, "y": seen.astype(int)})
    out = {}
    for model, skill in skills.items():
        probs = []
        for _ in range(2):
            p = skill * y + (1 - skill) * rng.random(30)
            probs.append(np.stack([1 - p, p], axis=1))
        out[model] = tile_table(TILE, rows, probs, "ext", lambda m: None)
    return out


def tile_summary():
    """The internal summary: mlp-a has the best mean validation score, mlp-b the best test."""
    return pd.DataFrame({"model": list(SKILL), "metric": TILE.primary_metric, "mean": [0.7, 0.9,
                         0.8, 0.8], "val_mean": [0.8, 0.6, 0.9, 0.9]})  # fmt: skip


def test_a_tile_cohort_is_scored_per_image_and_counted_in_images_and_cases(tmp_path):
    tables = tile_tables()
    assert len(tables["shazam-v1"]) == 30 and "label" in tables["shazam-v1"]
    head = external_report(TILE, "ext", tables, tile_summary(), tmp_path, BOOT)
    m = pd.read_csv(tmp_path / "metrics.tsv", sep="\t").set_index(["model", "estimate", "metric"])
    for model in (*SKILL, "late-fusion"):  # n_cases: the rows scored, images
        assert m.loc[(model, "ensemble", "n_cases"), "value"] == 29
        assert m.loc[(model, "fold_1", "n_cases"), "value"] == 29
    t = tables["shazam-v1"].iloc[:29]
    ba = balanced_accuracy_score(t["label"], t["pred"])
    assert m.loc[("shazam-v1", "ensemble", "balanced_accuracy"), "value"] == pytest.approx(ba)
    comp = pd.read_csv(tmp_path / "comparison.tsv", sep="\t").set_index("baseline")
    assert list(comp.index) == ["mlp-a", "concat-mlp", "late-fusion", "mlp-b"]
    assert (comp["student"] == "shazam-v1").all() and (comp["n_cases"] == 29).all()
    base = m.loc[("mlp-a", "ensemble", "balanced_accuracy"), "value"]
    assert comp.loc["mlp-a", "delta"] == pytest.approx(ba - base, abs=1e-6)
    assert head["n_cases"] == 10 and head["n_images"] == 29 and head["labelled"]
    assert head["baseline_internal"] == "mlp-a" and head["baseline_oracle"] == "mlp-b"
    md = (tmp_path / "report.md").read_text()
    answer = md.split("## Answer")[1].split("##")[0]
    assert "(10 cases, 29 images with a label)" in answer and "**shazam-v1**" in answer
    assert "on the 10 cases, 29 images both scored" in answer
    left = md.split("## Images left out")[1].split("##")[0]
    assert "list 10 cases, 30 images of cohort ext; 29 images have a label" in left
    assert f"**1** without a label (the image set gives none): {UNLABELLED_IMAGE}" in left
    assert "without patches" not in left  # an image set has no slides
    assert "a drawn case brings all its images" in md.split("## Protocol")[1]
    assert (tmp_path / "figures" / "roc.png").exists()


def test_tile_late_fusion_is_aligned_on_images():
    tables = tile_tables()
    shuffled = tables["mlp-b"].sample(frac=1, random_state=1).reset_index(drop=True)
    late = late_fusion_table({**tables, "mlp-b": shuffled}, ["mlp-a", "mlp-b"], TILE)
    late = late.set_index("image_id")
    assert len(late) == 29 and UNLABELLED_IMAGE not in late.index
    a, b = (t.set_index("image_id").loc[late.index] for t in (tables["mlp-a"], shuffled))
    np.testing.assert_allclose(late["prob_B_fold1"], (a["prob_B_fold1"] + b["prob_B_fold1"]) / 2)
    assert list(late["case_id"]) == list(a["case_id"])


def test_the_paired_comparison_reads_the_common_images_and_draws_whole_cases(monkeypatch):
    tables = tile_tables()
    seen = []
    real = report_tables.paired_bootstrap

    def spy(*args):
        seen.append(args[-1])  # the clusters: per fold, each case's rows
        return real(*args)

    monkeypatch.setattr(report_tables, "paired_bootstrap", spy)
    fewer = tables["mlp-a"].iloc[6:]  # without the images of cases k0 and k1
    pair, n = external_pair(tables["shazam-v1"], fewer, TILE, ("shazam-v1", "mlp-a"), cfg=BOOT)
    assert n == (23, 8)
    common = tables["shazam-v1"].iloc[6:29]
    ba = [balanced_accuracy_score(t["label"], t["pred"]) for t in (common, fewer.iloc[:-1])]
    assert pair.mean == pytest.approx(ba[0] - ba[1])
    (clusters,) = seen[0]  # one fold: the cohort; 8 cases of 3, 3, …, 2 images
    assert [len(c) for c in clusters] == [3] * 7 + [2]


def test_tile_tables_are_checked_by_image(tmp_path):
    tables = tile_tables()
    twice = pd.concat([tables["mlp-b"], tables["mlp-b"].iloc[[4]]], ignore_index=True)
    with pytest.raises(ValueError, match=r"image\(s\) img04 have more than one row"):
        external_report(TILE, "ext", {**tables, "mlp-b": twice}, tile_summary(), tmp_path, BOOT)
    short = tables["mlp-b"].iloc[1:]
    with pytest.raises(ValueError, match="list different images .* img00.*same image set"):
        external_report(TILE, "ext", {**tables, "mlp-b": short}, tile_summary(), tmp_path, BOOT)
    moved = tables["mlp-b"].copy()
    moved.loc[3, "case_id"] = "k0"
    with pytest.raises(ValueError, match="give image img03 a different case_id or label"):
        external_report(TILE, "ext", {**tables, "mlp-b": moved}, tile_summary(), tmp_path, BOOT)


def test_an_unlabelled_image_set_gives_the_short_report(tmp_path):
    tables = tile_tables(labelled=False)
    assert "label" not in tables["shazam-v1"]
    head = external_report(TILE, "ext", tables, tmp_path / "no-summary.tsv", tmp_path, BOOT)
    assert head["labelled"] is False and head["n_cases"] == 10 and head["n_images"] == 30
    assert list(pd.read_csv(tmp_path / "metrics.tsv", sep="\t").columns) == METRIC_COLUMNS
    assert len(pd.read_csv(tmp_path / "metrics.tsv", sep="\t")) == 0
    comp = pd.read_csv(tmp_path / "comparison.tsv", sep="\t")
    assert list(comp.columns) == COMPARISON_COLUMNS and comp.empty
    assert (tmp_path / "figures").is_dir() and (tmp_path / "report.html").stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    assert "no labels, so no metric and no comparison" in md and "## Answer" not in md
    rows = md.split("## Predictions per model")[1].split("##")[0]
    for model, t in tables.items():
        n = t["pred"].value_counts()
        assert f"| {model} | 30 | 10 | {n.get('A', 0)} | {n.get('B', 0)} |" in rows
    assert "predicted A" in rows and "## Protocol" in md


def test_the_cli_takes_the_tile_student_by_default(tmp_path):
    paths = []
    for model, table in tile_tables().items():
        paths.append(tmp_path / f"{model}.tsv")
        write_table(table, paths[-1])
    tile_summary().to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    assert read_predictions(paths)["mlp-a"]["image_id"].iloc[0] == "img00"
    rc = main(["external-report", "--spec", TILE.to_json(), "--cohort", "ext", "--predictions",
               *map(str, paths), "--summary", str(tmp_path / "summary.tsv"), "--evaluation",
               '{"n_boot": 20}', "--out-dir", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    comp = pd.read_csv(tmp_path / "out" / "comparison.tsv", sep="\t")
    assert (comp["student"] == "shazam-v1").all() and comp["baseline"].iloc[0] == "mlp-a"
