"""Attention heatmaps (shazam.heatmaps): aligned scores, the signal found, the pictures."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import tissue_image
from PIL import Image

from shazam.heatmaps import load_fold_model, read_attention_h5, slide_heatmap, thumbnail
from shazam.slides import Slide
from shazam.tasks import TaskSpec
from shazam.training import TrainConfig, train_fold

COLS, ROWS, SIZE = 8, 6, 256  # the patch grid covers the 2048 × 1536 test slide
NEEDLE = [(x, y) for x in (5, 6) for y in (1, 2)]  # grid cells carrying the class signal
LEVELS = {"high": "features", "mid": "features_mid", "low": "features_low"}
CFG = TrainConfig(epochs=20, lr=1e-2, accumulate=4, batch_bags=4, max_patches=48, d_model=32,
                  dropout=0.0, seed=0)  # fmt: skip
ATTRS = {"patch_size": SIZE, "patch_level": 0, "patch_size_level0": SIZE,
         "downsample": (1.0, 1.0), "slide_mpp": 0.5}  # fmt: skip


def grid():
    coords = np.array([(x * SIZE, y * SIZE) for y in range(ROWS) for x in range(COLS)], np.int64)
    inside = np.array([(x, y) in NEEDLE for y in range(ROWS) for x in range(COLS)])
    return coords, inside


def needle_cohort(root, teachers, levels=("high",), n=24, dim=16, seed=0):
    """n one-slide cases on the grid; class B's slides carry the signal in the needle only."""
    rng = np.random.default_rng(seed)
    coords, inside = grid()
    y = np.array([i % 2 for i in range(n)])
    for i in range(n):
        for t in teachers:
            p = root / "results" / "features" / t / f"s{i:03d}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                d = f.create_dataset("coords", data=coords)
                for k, v in ATTRS.items():
                    d.attrs[k] = v
                for lv in levels:
                    x = rng.normal(size=(len(coords), dim)).astype(np.float32)
                    x[inside, :3] += 4.0 * y[i]
                    f[LEVELS[lv]] = x.astype(np.float16)
    sheet = pd.DataFrame({"slide_id": [f"s{i:03d}" for i in range(n)],
                          "path": [f"s{i:03d}.svs" for i in range(n)],
                          "case_id": [f"c{i:03d}" for i in range(n)]})  # fmt: skip
    pd.DataFrame({"case_id": sheet["case_id"], "label": np.where(y, "B", "A")}).to_csv(
        root / "labels.csv", index=False
    )
    split = np.array(["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4)
    pd.DataFrame({"case_id": sheet["case_id"], "split": split}).to_csv(
        root / "fold.csv", index=False
    )
    spec = TaskSpec("sub", "classification", str(root / "labels.csv"), classes=("A", "B"), folds=3)
    return sheet, spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ABMIL and a student (two teachers, three levels) trained once on the needle cohort,
    and the test slide file."""
    root = tmp_path_factory.mktemp("heat")
    sheet, spec = needle_cohort(root, ("ta", "tb"), ("low", "mid", "high"))
    folds = {}
    for model, cfg, shz in (("abmil-ta", CFG, None),
                            ("shazam", CFG.__class__(**{**CFG.__dict__, "epochs": 2}),
                             {"layers": 1})):  # fmt: skip
        folds[model] = root / "models" / model / "fold_0"
        train_fold(model, spec, root / "fold.csv", sheet, ["ta", "tb"], folds[model], cfg,
                   features_root=root / "results", log=lambda s: None, shazam_cfg=shz)  # fmt: skip
    from shazam.demo import write_svs

    slide = root / "s.svs"
    write_svs(slide, tissue_image(1536, 2048, tissue_box=(256, 256, 1792, 1280)), 0.5, 20)
    return root, folds, slide


def test_abmil_attention_aligned_sums_to_one_and_points_at_the_needle(trained, tmp_path):
    root, folds, slide = trained
    hm = slide_heatmap(folds["abmil-ta"], "s021", tmp_path, slide_path=slide,
                       features_root=root / "results", geojson=True, top_k=4)  # fmt: skip
    got = read_attention_h5(hm.files["h5"])
    coords, inside = grid()
    np.testing.assert_array_equal(got["coords"], coords)  # row i is patch i of the features
    assert got["attention"].shape == (len(coords),) and got["attention"].dtype == np.float32
    assert abs(got["attention"].sum() - 1) < 1e-5
    assert got["attrs"]["model"] == "abmil-ta" and got["attrs"]["fold"] == "0"
    assert got["attrs"]["teachers"] == ["ta"] and got["coord_attrs"]["patch_size"] == SIZE
    a = got["attention"]
    assert a[inside].mean() >= 3 * a[~inside].mean(), (a[inside].mean(), a[~inside].mean())
    # the pictures: valid PNGs; the overlay is the QC thumbnail's frame (tiling's reader: level
    # 1 of the 2048 × 1536 slide) 1:1, plus a colour bar (right) and a title line (top)
    with Slide("s", slide, 0.5) as s:
        thumb = thumbnail(s)
    assert thumb.size == (512, 384)
    with Image.open(hm.files["overlay"]) as im:
        assert im.format == "PNG" and im.size == (512 + 120, 384 + 24)
    with Image.open(hm.files["montage"]) as im:
        assert im.format == "PNG" and im.width >= 4 * 100 and im.height >= 200
    gj = json.loads(hm.files["geojson"].read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(coords)
    ring = gj["features"][9]["geometry"]["coordinates"][0]
    assert ring[0] == [SIZE, SIZE] and ring[2] == [2 * SIZE, 2 * SIZE]
    assert gj["features"][9]["properties"]["score"] == pytest.approx(float(a[9]))


def test_scores_do_not_depend_on_the_chunk_size(trained, tmp_path):
    root, folds, _ = trained
    fm = load_fold_model(folds["shazam"])
    kw = dict(features_root=root / "results", fold_model=fm)
    whole = slide_heatmap(folds["shazam"], "s003", tmp_path / "a", **kw)
    chunked = slide_heatmap(folds["shazam"], "s003", tmp_path / "b", rows=7, **kw)
    np.testing.assert_allclose(chunked.attention, whole.attention, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(chunked.logits, whole.logits, rtol=1e-4, atol=1e-5)


def test_student_gate_per_teacher_and_level_and_combined_score(trained, tmp_path):
    root, folds, _ = trained
    hm = slide_heatmap(folds["shazam"], "s021", tmp_path, features_root=root / "results")
    assert list(hm.gate) == ["low", "mid", "high"]
    for w in hm.gate.values():
        assert w.shape == (2,) and abs(w.sum() - 1) < 1e-5
    assert sorted(hm.per_key) == sorted(f"{t}:{lv}" for t in ("ta", "tb")
                                        for lv in ("low", "mid", "high"))  # fmt: skip
    for a in hm.per_key.values():
        assert abs(a.sum() - 1) < 1e-5
    g = hm.gate["high"]
    want = g[0] * hm.per_key["ta:high"] + g[1] * hm.per_key["tb:high"]
    np.testing.assert_allclose(hm.attention, want, rtol=1e-5)
    got = read_attention_h5(hm.files["h5"])  # the h5 holds the same
    np.testing.assert_allclose(got["gate"]["mid"], hm.gate["mid"])
    np.testing.assert_allclose(got["per_key"]["tb:low"], hm.per_key["tb:low"])
    assert got["attrs"]["levels"] == ["low", "mid", "high"] and "gate" in got["attrs"]["score"]


def test_cli_heatmap(trained, tmp_path):
    from shazam.cli import main

    root, folds, slide = trained
    rc = main(["heatmap", "--model-dir", str(folds["abmil-ta"]), "--slide-id", "s001",
               "--slide", str(slide), "--features-root", str(root / "results"),
               "--out", str(tmp_path), "--top-k", "2"])  # fmt: skip
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} == {"s001.h5", "s001.png", "s001_montage.png"}


def test_cli_selection_writes_the_index_and_the_files_it_names(trained, tmp_path):
    """Test cases per class of the fold's test split, an external cohort and a chosen slide
    without patches (kept, noted, no files)."""
    from shazam.cli import main
    from shazam.heatmap_select import INDEX_COLUMNS

    root, folds, slide = trained
    for t in ("ta", "tb"):  # a blank slide: feature files with no rows
        with h5py.File(root / "results" / "features" / t / "blank.h5", "w") as f:
            f.create_dataset("coords", data=np.zeros((0, 2), np.int64))
            f["features"] = np.zeros((0, 16), np.float16)
    slides = {f"s{i:03d}": f"c{i:03d}" for i in range(24)} | {"blank": "cblank"}
    for sid in slides:  # one slide file each (a sheet lists a file once)
        if not (root / f"{sid}.svs").exists():
            (root / f"{sid}.svs").hardlink_to(slide)
    sheet = pd.DataFrame({"slide_id": list(slides), "path": [f"{s}.svs" for s in slides],
                          "case_id": list(slides.values())})  # fmt: skip
    sheet.to_csv(root / "slides.csv", index=False)
    pd.DataFrame({"slide_id": ["s005"], "path": ["s005.svs"], "case_id": ["x5"]}).to_csv(
        root / "ext.csv", index=False
    )
    out = tmp_path / "hm"
    rc = main(["heatmap", "--model-dir", str(folds["abmil-ta"]), "--out", str(out),
               "--slides", str(root / "slides.csv"), "--test-of", str(root / "fold.csv"),
               "--labels", str(root / "labels.csv"), "--per-class", "1",
               "--external", "oslo", str(root / "ext.csv"), "none", "--slide-id", "blank",
               "--features-root", str(root / "results"), "--top-k", "2"])  # fmt: skip
    assert rc == 0
    index = pd.read_csv(out / "index.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert tuple(index.columns) == INDEX_COLUMNS
    # the fold's test cases are c020 (A), c021 (B), c022 (A), c023 (B): the first of each class
    assert index[["slide_id", "case_id", "source", "label", "note"]].values.tolist() == [
        ["s020", "c020", "test", "A", ""], ["s021", "c021", "test", "B", ""],
        ["s005", "x5", "external:oslo", "", ""], ["blank", "cblank", "chosen", "", "no patches"],
    ]  # fmt: skip
    assert set(index["model"]) == {"abmil-ta"} and set(index["fold"]) == {"0"}
    drawn = index[index["note"] == ""]
    assert drawn["overlay"].tolist() == ["s020.png", "s021.png", "s005.png"]
    assert drawn["montage"].tolist() == ["s020_montage.png", "s021_montage.png", "s005_montage.png"]
    assert drawn["h5"].tolist() == ["s020.h5", "s021.h5", "s005.h5"]
    assert (index["geojson"] == "").all()
    blank = index.iloc[3]
    assert (blank[["overlay", "montage", "h5"]] == "").all()
    named = {f for col in ("overlay", "montage", "h5") for f in index[col] if f}
    assert named | {"index.tsv"} == {p.name for p in out.iterdir()}
