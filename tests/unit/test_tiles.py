"""Tile-level (ROI) path: extraction, splits, the v1 classifier and its training (the image
listing: test_images.py)."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import textured, tile_spec

from shazam.extraction import ExtractParams, extract_tiles
from shazam.formats import export_pt, read_tile_features, write_tile_features
from shazam.images import load_images
from shazam.losses import cosine_huber
from shazam.models import registry
from shazam.models.tile import ShazamV1
from shazam.splits import task_folds
from shazam.stores import FeatureStore
from shazam.tasks import LabelError, TaskSpec
from shazam.training import TrainConfig, train_fold

CPU = ExtractParams(batch_size=3, num_workers=0, device="cpu", dtype="float32")


# --------------------------------------------------------------------------- the v1 model


def test_v1_shapes_follow_the_tutorial_table():
    """[B, C_i] → [B, d] ×T → [B, T, d] → [B, d] → [B, classes]."""
    B, d, classes = 5, 16, 3
    dims = {"t0:high": 12, "t1:high": 20, "t2:high": 7}
    m = ShazamV1(dims, classes, d=d, layers=2, heads=2, dropout=0.0)
    feats = {k: torch.randn(B, c) for k, c in dims.items()}
    mapped = []
    for mp in m.mappers:
        mp.register_forward_hook(lambda _m, _i, o: mapped.append(tuple(o.shape)))
    out = m(feats, torch.ones(B, 1, dtype=torch.bool))
    assert [tuple(feats[k].shape) for k in dims] == [(B, 12), (B, 20), (B, 7)]
    assert mapped == [(B, d)] * 3
    assert out["tokens"].shape == (B, 3, d)
    assert out["fused"].shape == (B, d)
    assert out["logits"].shape == (B, classes)
    # the mapper and head are exactly the tutorial's layer sequences (dropout aside)
    layers = [type(x).__name__ for x in m.mappers[0] if not isinstance(x, torch.nn.Dropout)]
    assert layers == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU"]
    assert [type(x).__name__ for x in m.head] == ["Linear", "ReLU", "LayerNorm", "Linear"]
    assert len(m.blocks.layers) == 2


def test_v1_distillation_is_cosine_plus_huber_to_fixed_teacher_vectors():
    dims = {"a:high": 6, "b:high": 9}
    m = ShazamV1(dims, 2, d=8, layers=1, dropout=0.0, distill_weight=0.5).eval()
    feats = {k: torch.randn(4, c, requires_grad=True) for k, c in dims.items()}
    out = m(feats)
    # by hand, with the targets explicitly detached
    by_hand = (
        0.5
        * torch.stack(
            [
                cosine_huber(p(out["fused"]), F.normalize(feats[k], dim=-1).detach())
                for p, k in zip(m.distill, dims, strict=True)
            ]
        ).mean()
    )
    torch.testing.assert_close(out["aux_loss"], by_hand)
    # same gradient w.r.t. the inputs: no gradient flows into the targets
    g_model = torch.autograd.grad(out["aux_loss"], list(feats.values()), retain_graph=True)
    g_hand = torch.autograd.grad(by_hand, list(feats.values()))
    for a, b in zip(g_model, g_hand, strict=True):
        torch.testing.assert_close(a, b)
    nodistill = registry.build("shazam-v1-nodistill", dims, 2, ["a", "b"], student={"d_model": 8})
    assert "aux_loss" not in nodistill(feats)


def test_tile_model_names_and_baselines():
    assert registry.roster(["x"], tile=True) == ["mlp-x"]
    assert registry.roster(["x", "y"], ["shazam-nodistill", "shazam-nogate"], tile=True) == [
        "mlp-x", "mlp-y", "concat-mlp", "shazam-v1", "shazam-v1-nodistill",
    ]  # fmt: skip
    dims = {"x:high": 5, "y:high": 7}
    feats = {k: torch.randn(3, c) for k, c in dims.items()}
    for name in ("mlp-y", "concat-mlp"):
        assert registry.build(name, dims, 4, ["x", "y"], d=8)(feats)["logits"].shape == (3, 4)
    with pytest.raises(ValueError, match="unknown model 'shazam-v1-nogate'"):
        registry.build("shazam-v1-nogate", dims, 4, ["x", "y"])


# --------------------------------------------------------------------------- extraction


def test_folder_dataset_with_mixed_sizes_extracts_in_listing_order(tmp_path):
    root = tmp_path / "ds"
    sizes = {"A/x1.png": (40, 60), "A/x2.jpg": (224, 224), "B/y1.png": (300, 180),
             "B/sub/y2.tif": (100, 100)}  # fmt: skip
    for i, (name, (h, w)) in enumerate(sizes.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        colour = (230, 140, 190) if name.startswith("A") else (90, 40, 140)
        textured(h, w, colour, i).save(root / name)
    spec = tile_spec(root, mpp=0.25, case_pattern=r"[xy]")  # case = the file name's letter
    out = tmp_path / "f.h5"
    res = extract_tiles(spec, "toy_cnn", out, CPU, progress=False)
    assert res["n_images"] == 4
    feats, rows, attrs = read_tile_features(out, levels=("low", "mid", "high"))
    # classes are [B, A]: B's images first, each class's files sorted, labels follow
    assert list(rows["image_id"]) == ["B/sub/y2.tif", "B/y1.png", "A/x1.png", "A/x2.jpg"]
    assert list(rows["y"]) == [0, 0, 1, 1]
    assert list(rows["case_id"]) == ["y", "y", "x", "x"]
    assert feats["high"].shape == (4, 512) and feats["low"].shape == (4, 128)
    with h5py.File(out) as f:
        assert f["image_size"][:].tolist() == [[100, 100], [300, 180], [40, 60], [224, 224]]
        # resize: the whole image reaches the 224 px input
        np.testing.assert_allclose(
            f["mpp_effective"][1], 0.25 * np.sqrt(300 * 180) / 224, rtol=1e-5
        )
    assert attrs["teacher"] == "toy_cnn" and json.loads(attrs["classes"]) == ["B", "A"]
    assert attrs["mpp_source"] == "declared"
    # a row is that image's own features: the same image alone gives the same vector
    (tmp_path / "solo.csv").write_text(f"path,label\n{root / 'A/x1.png'},A\n")
    solo = tile_spec(tmp_path / "solo.csv", mpp=0.25, image_level_splits=True)
    extract_tiles(solo, "toy_cnn", tmp_path / "s.h5", CPU, progress=False)
    alone, _, _ = read_tile_features(tmp_path / "s.h5")
    np.testing.assert_allclose(alone["high"][0], feats["high"][2], rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats["high"][2], feats["high"][3])

    # the seed's .pt: a (features, labels) tuple of tensors, loadable with weights_only=True
    assert export_pt(out, tmp_path / "f.pt") == (4, 512)
    x, y = torch.load(tmp_path / "f.pt", weights_only=True)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(x.numpy(), feats["high"].astype(np.float32))
    assert [p.name for p in tmp_path.glob(".f.pt*")] == []  # no temporary left behind
    # the same features give the same bytes (the archive is not named after the temporary)
    export_pt(out, tmp_path / "g.pt")
    assert (tmp_path / "f.pt").read_bytes() == (tmp_path / "g.pt").read_bytes()


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    textured(8, 8, (200, 100, 200), 0).save(tmp_path / "A/ok.png")
    (tmp_path / "B/bad.png").write_bytes(b"not a png")
    with pytest.raises(LabelError, match=r"image B/bad.png \(.*bad.png\): cannot open"):
        spec = tile_spec(tmp_path, image_level_splits=True)
        extract_tiles(spec, "toy_cnn", tmp_path / "f.h5", CPU, progress=False)
    assert not (tmp_path / "f.h5").exists()


# --------------------------------------------------------------------------- splits


def _csv_dataset(tmp_path, n_cases=12, per_case=2, split=None):
    rows = []
    for c in range(n_cases):
        for k in range(per_case):
            name = f"c{c}_{k}.png"
            textured(8, 8, (200, 100, 200), c).save(tmp_path / name)
            row = {"path": name, "label": "AB"[c % 2], "case_id": f"case{c}"}
            if split is not None:
                row["split"] = split(c)
            rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def test_generated_folds_are_case_level_and_stratified(tmp_path):
    spec = tile_spec(_csv_dataset(tmp_path), folds=3)
    cohort, folds = task_folds(spec)
    assert len(cohort.cases) == 12 and (cohort.cases["n_slides"] == 2).all()
    tested = []
    for f in folds:
        assert set(f["split"]) == {"train", "val", "test"}
        test = cohort.cases.set_index("case_id").loc[f.loc[f["split"] == "test", "case_id"]]
        assert sorted(test["label"].value_counts().tolist()) == [2, 2]
        tested += list(test.index)
    assert sorted(tested) == sorted(cohort.cases["case_id"])
    # without case ids, only on the explicit opt-in, every image is its own case
    (tmp_path / "t.csv").write_text(
        "path,label\n" + "".join(f"c{c}_0.png,{'AB'[c % 2]}\n" for c in range(12))
    )
    cohort, _ = task_folds(tile_spec(tmp_path / "t.csv", folds=3, image_level_splits=True))
    assert list(cohort.cases["case_id"]) == sorted(f"c{c}_0.png" for c in range(12))


def test_folds_of_a_class_folder_keep_each_source_slide_on_one_side(tmp_path):
    """CRC-100K-style folders: several crops per source slide, the slide only in the file
    name. With case_pattern, no slide has crops on two sides (train/val/test) of any fold."""
    root = tmp_path / "ds"
    sources = {"A": ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0004"],
               "B": ["TCGA-BB-0005", "TCGA-BB-0006", "TCGA-BB-0007", "TCGA-BB-0008"]}  # fmt: skip
    for c, slides in sources.items():
        (root / c).mkdir(parents=True)
        for s in slides:
            for k in range(4):
                textured(8, 8, (200, 100, 200), k).save(root / c / f"{s}-01Z-00-DX1_crop{k}.png")
    spec = tile_spec(root, folds=4, val_fraction=0.2, case_pattern=r"(TCGA-\w\w-\w{4})")
    images = load_images(spec)
    source = images["image_id"].str.split("/").str[1].str[:12]  # the test's own reading
    cohort, folds = task_folds(spec)
    assert len(cohort.cases) == 8 and (cohort.cases["n_slides"] == 4).all()
    tested = []
    for f in folds:
        side = images["case_id"].map(dict(zip(f["case_id"], f["split"], strict=True)))
        assert set(side) == {"train", "val", "test"}
        per_source = side.groupby(source.to_numpy()).nunique()
        assert (per_source == 1).all(), per_source[per_source > 1]
        tested += sorted(set(source[(side == "test").to_numpy()]))
    assert sorted(tested) == sorted(sources["A"] + sources["B"])  # each slide tested once


def test_image_level_splits_are_stated_at_the_top_of_the_answer():
    from shazam.evaluate.document import Doc
    from shazam.evaluate.narrative import ReportContext
    from shazam.evaluate.stats import EvalConfig
    from shazam.evaluate.verdict import IMAGE_LEVEL_SPLITS, answer

    def answer_text(**kw):
        ctx = ReportContext(
            spec=tile_spec("x.csv", **kw), runs={}, summary=pd.DataFrame(), pairs=[],
            chosen={}, dataset=pd.DataFrame(), software={}, teachers_df=pd.DataFrame(),
            figures={}, teachers=["a"], singles=["mlp-a"], cfg=EvalConfig(), settings={},
        )  # fmt: skip
        doc = Doc()
        answer(ctx, doc)
        return doc.markdown()

    text = answer_text(image_level_splits=True)
    assert text.startswith("## Answer\n\n**Splits are by image, not by case**")
    assert IMAGE_LEVEL_SPLITS in text and "optimistic" in text
    assert "Splits are by image" not in answer_text(case_pattern="x")


def test_dataset_split_is_kept_and_val_is_carved_from_train(tmp_path):
    csv = _csv_dataset(tmp_path, split=lambda c: "test" if c >= 8 else "train")
    spec = tile_spec(csv, splits="dataset", val_fraction=0.25)
    assert spec.n_folds == 1
    _, folds = task_folds(spec)
    (f,) = folds
    split = dict(zip(f["case_id"], f["split"], strict=True))
    assert all(split[f"case{c}"] == "test" for c in range(8, 12))
    assert sorted(split[f"case{c}"] for c in range(8)) == ["train"] * 6 + ["val"] * 2
    # one case in two splits is an error naming it
    df = pd.read_csv(csv)
    df.loc[0, "split"] = "test"
    df.to_csv(csv, index=False)
    with pytest.raises(LabelError, match="case0 \\(test, train\\)"):
        task_folds(spec)


# --------------------------------------------------------------------------- training


def _write_features(root, task, teachers, n=60, seed=0):
    """Synthetic tile features where class 1 is shifted along one direction."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    images = pd.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(n)],
            "case_id": [f"case{i // 2}" for i in range(n)],
            "y": y,
        }  # fmt: skip
    )
    for t, c in teachers.items():
        x = rng.normal(size=(n, c)).astype(np.float32)
        x[:, 0] += 4.0 * y
        write_tile_features(
            root / "tile_features" / task / f"{t}.h5", images, {"high": x},
            np.zeros((n, 2), np.int32), np.zeros(n, np.float32), {"teacher": t},
        )  # fmt: skip
    return images


@pytest.mark.parametrize("model", ["mlp-a", "concat-mlp", "shazam-v1"])
def test_train_tile_fold_writes_slide_model_outputs_and_learns(tmp_path, model):
    spec = TaskSpec.from_config(
        "roi", {"type": "tile_classification", "images": "unused.csv", "classes": ["n", "p"]}
    )
    images = _write_features(tmp_path, "roi", {"a": 10, "b": 6})
    cases = sorted(set(images["case_id"]))
    split = ["test"] * 8 + ["val"] * 4 + ["train"] * (len(cases) - 12)
    fold = tmp_path / "fold_0.csv"
    pd.DataFrame({"case_id": cases, "split": split}).to_csv(fold, index=False)
    cfg = TrainConfig.for_task(
        spec,
        {"epochs": 25, "lr": 3e-3, "dropout": 0.0, "d_model": 16},
        {"batch_size": 8, "patience": 5},
    )
    assert cfg.accumulate == cfg.batch_bags == 8
    out = tmp_path / "out"
    m = train_fold(
        model, spec, fold, None, ["a", "b"], out, cfg, features_root=tmp_path, log=lambda *_: None,
        shazam_cfg={"d_model": 16, "layers": 1},
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.safetensors", "config.json", "history.csv", "predictions.csv", "metrics.json"]
    )
    assert m["balanced_accuracy"] >= 0.8 and "val" in m
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns[:4]) == ["image_id", "case_id", "label", "pred"]
    assert len(pred) == 16 and set(pred["case_id"]) == set(cases[:8])  # whole test cases
    history = pd.read_csv(out / "history.csv")
    conf = json.loads((out / "config.json").read_text())
    # early stopping: the run ends `patience` epochs after the selected one, or at the budget
    assert len(history) == conf["epochs_run"]
    assert len(history) == 25 or len(history) == conf["selected_epoch"] + 6
    assert conf["teachers"] == (["a"] if model == "mlp-a" else ["a", "b"])


def test_tile_store_rejects_files_of_different_datasets(tmp_path):
    _write_features(tmp_path, "roi", {"a": 4}, n=6)
    _write_features(tmp_path / "other", "roi", {"b": 4}, n=8)
    with pytest.raises(ValueError, match="list different images"):
        FeatureStore.for_tiles(
            {
                "a": tmp_path / "tile_features/roi/a.h5",
                "b": tmp_path / "other/tile_features/roi/b.h5",
            }
        )
    store, rows = FeatureStore.for_tiles({"a": tmp_path / "tile_features/roi/a.h5"})
    feats, mask = store.batch(["img003", "img001"])
    assert feats["a:high"].shape == (2, 4) and mask.shape == (2, 1) and mask.all()
    assert store.dims == {"a:high": 4} and list(rows["y"]) == [0, 1, 0, 1, 0, 1]


def test_tile_task_definition_is_checked():
    with pytest.raises(LabelError, match="needs `images`"):
        TaskSpec.from_config("roi", {"type": "tile_classification", "classes": ["a", "b"]})
    with pytest.raises(LabelError, match="fit must be resize or crop"):
        tile_spec("x.csv", fit="squash")
    with pytest.raises(LabelError, match="give `labels`"):
        TaskSpec.from_config("s", {"type": "classification", "classes": ["a", "b"]})
    spec = tile_spec("x.csv")
    assert spec.kind == "classification" and spec.is_tile and spec.n_folds == 5
    assert TaskSpec.from_json(spec.to_json()) == spec
