import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from shazam.models import registry
from shazam.stores import FeatureStore, split_checkpoint, standardize_store
from shazam.tasks import TaskSpec
from shazam.training import TrainConfig, train_fold

OUT_FILES = ["model.safetensors", "config.json", "history.csv", "predictions.csv", "metrics.json"]


def make_cohort(tmp_path, n=24, dim=16, teachers=("ta", "tb"), signal=3.0, seed=0, survival=False):
    """Feature files for n cases (one slide each) whose bags carry the class in a few dims."""
    rng = np.random.default_rng(seed)
    y = np.array([i % 2 for i in range(n)])
    rows = []
    for i in range(n):
        sid = f"s{i:03d}"
        npatch = int(rng.integers(20, 60))
        coords = np.stack([np.arange(npatch) * 256, np.zeros(npatch, int)], 1)
        for t in teachers:
            x = rng.normal(size=(npatch, dim)).astype(np.float32)
            x[:, :3] += signal * (y[i] - 0.5)
            p = tmp_path / "results" / "features" / t / f"{sid}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                f["features"] = x.astype(np.float16)
                f["coords"] = coords
        rows.append((sid, f"{sid}.svs", f"c{i:03d}"))
    sheet = pd.DataFrame(rows, columns=["slide_id", "path", "case_id"])
    if survival:
        t = np.where(y == 1, rng.uniform(1, 10, n), rng.uniform(20, 60, n))
        labels = pd.DataFrame({"case_id": sheet["case_id"], "months": t.round(2),
                               "censorship": (rng.random(n) < 0.2).astype(int)})  # fmt: skip
        labels.loc[:3, "censorship"] = 0
        labels.to_csv(tmp_path / "labels.csv", index=False)
        spec = TaskSpec("os", "survival", str(tmp_path / "labels.csv"), time_col="months",
                        event_col="censorship", n_bins=3, folds=3)  # fmt: skip
    else:
        pd.DataFrame({"case_id": sheet["case_id"], "label": np.where(y, "B", "A")}).to_csv(
            tmp_path / "labels.csv", index=False
        )
        spec = TaskSpec(
            "sub", "classification", str(tmp_path / "labels.csv"), classes=("A", "B"), folds=3
        )
    split = np.array(["train"] * n, dtype=object)
    split[n - 6 :] = "test"
    split[n - 12 : n - 6] = "val"
    pd.DataFrame({"case_id": sheet["case_id"], "split": split}).to_csv(
        tmp_path / "fold.csv", index=False
    )
    return sheet, spec


CFG = TrainConfig(
    epochs=8, lr=3e-3, accumulate=4, batch_bags=4, max_patches=32, d_model=32, dropout=0.0
)


@pytest.mark.parametrize("model", ["abmil-ta", "concat"])
def test_training_learns_and_writes_every_output(tmp_path, model):
    sheet, spec = make_cohort(tmp_path)
    out = tmp_path / "m"
    m = train_fold(model, spec, tmp_path / "fold.csv", sheet, ["ta", "tb"], out, CFG,
                   features_root=tmp_path / "results", log=lambda s: None)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    assert m["balanced_accuracy"] == 1.0 and m["val"]["balanced_accuracy"] == 1.0
    for k in ("auc_macro", "f1_weighted", "f1_macro", "accuracy", "confusion", "n_cases"):
        assert k in m and k in m["val"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == model and cfg["n_cases"] == {"train": 12, "val": 6, "test": 6}
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["case_id", "label", "pred", "prob_A", "prob_B"] and len(pred) == 6
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == CFG.epochs and "val_balanced_accuracy" in hist
    # the weights load back into the architecture (safetensors, no pickle), strictly; the
    # input standardisation travels with them, one mean and SD per teacher:level used
    state, scaler = split_checkpoint(load_file(out / "model.safetensors"))
    net = registry.build(model, cfg["dims"], 2, cfg["teachers"], CFG.d_model, CFG.dropout)
    net.load_state_dict(state)
    assert set(scaler.stats) == set(cfg["dims"]) and cfg["train"]["standardize"] is True


def raw_rows(tmp_path, sid, teacher="ta"):
    with h5py.File(tmp_path / "results" / "features" / teacher / f"{sid}.h5") as f:
        return torch.from_numpy(f["features"][:])


def test_standardisation_uses_training_cases_only(tmp_path):
    sheet, _ = make_cohort(tmp_path, teachers=("ta",))
    fold = pd.read_csv(tmp_path / "fold.csv")
    train = list(fold.loc[fold["split"] == "train", "case_id"])
    test = list(fold.loc[fold["split"] == "test", "case_id"])
    ids = list(fold["case_id"])
    store = FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path / "results")
    raw = {c: raw_rows(tmp_path, "s" + c[1:]).float() for c in ids}
    sc = standardize_store(store, train)
    # the training rows of a batch are now centred and scaled, per dimension; the files are
    # not rewritten
    x = store.batch(train)[0]["ta:high"]
    assert x.mean(0).abs().max() < 1e-4 and (x.std(0) - 1).abs().max() < 1e-4
    assert torch.equal(raw_rows(tmp_path, "s" + train[0][1:]).float(), raw[train[0]])
    # every bag gets the same transform (test bags included), from training statistics only
    mean, sd = sc.stats["ta:high"]
    c = test[0]
    torch.testing.assert_close(store.batch([c])[0]["ta:high"], (raw[c] - mean) / sd)
    # the statistics are those of the training rows, computed in one streaming pass
    xt = torch.cat([raw[c] for c in train]).double()
    torch.testing.assert_close(mean.double(), xt.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sd.double(), xt.std(0), atol=1e-5, rtol=1e-5)
    # poisoning the test bags leaves the statistics unchanged
    poisoned = FeatureStore.from_arrays(
        {c: {"ta:high": raw[c].half() * 0 + 100 if c in test else raw[c].half()} for c in ids}
    )
    sc2 = standardize_store(poisoned, train)
    torch.testing.assert_close(sc2.stats["ta:high"], sc.stats["ta:high"])
    # idempotent for the same training cases; refused for others (it would apply twice)
    assert standardize_store(store, list(reversed(train))) is sc
    with pytest.raises(ValueError, match="other training cases"):
        standardize_store(store, train[:-1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_overfits_a_tiny_separable_set(tmp_path, precision):
    sheet, spec = make_cohort(tmp_path, n=24, signal=1.5)
    cfg = TrainConfig(epochs=40, lr=5e-3, accumulate=2, batch_bags=2, d_model=32, dropout=0.0,
                      precision=precision)  # fmt: skip
    from shazam.cohorts import build_cohort
    from shazam.training import Engine, Targets

    cohort = build_cohort(spec, sheet)
    cases = cohort.cases.set_index("case_id")
    ids = list(cases.index[:12])
    store = FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path / "results")
    torch.manual_seed(0)
    eng = Engine(
        registry.build("abmil-ta", store.dims, 2, ["ta"], 32, 0.0),
        spec,
        store,
        Targets(spec, cases),
        cfg,
    )
    assert eng.amp == (torch.bfloat16 if precision == "bf16" else None)
    eng.fit(ids, ids, log=lambda s: None)
    assert eng.evaluate(ids)["metrics"]["accuracy"] == 1.0


def test_batches_pack_bags_in_the_autocast_dtype(tmp_path):
    sheet, _ = make_cohort(tmp_path, n=4)
    ids = ["c000", "c001", "c002"]
    store = FeatureStore.for_slides(sheet, ["ta", "tb"], ids, root=tmp_path / "results")
    raw = {(c, t): raw_rows(tmp_path, "s" + c[1:], t) for c in ids for t in ("ta", "tb")}
    for dtype in (torch.float32, torch.bfloat16):
        feats, mask = store.batch(ids, dtype=dtype)  # full bags, packed bag after bag
        assert mask.sum(1).tolist() == [store.size(c) for c in ids]
        for t in ("ta", "tb"):
            assert feats[f"{t}:high"].dtype == dtype
            want = torch.cat([raw[c, t] for c in ids]).to(dtype)
            assert torch.equal(feats[f"{t}:high"], want)
    rng = np.random.default_rng(0)
    feats, mask = store.batch(ids, max_patches=10, rng=rng, dtype=torch.bfloat16)
    assert mask.sum(1).tolist() == [10, 10, 10]
    # each subsampled bag is a subset of its own rows (same rows for both teachers)
    for i, c in enumerate(ids):
        got = feats["ta:high"][i * 10 : (i + 1) * 10].float()
        full = raw[c, "ta"].to(torch.bfloat16).float()
        hits = (got[:, None, :] == full[None]).all(-1)
        assert hits.any(1).all()
        rows_a = hits.float().argmax(1)
        got_b = feats["tb:high"][i * 10 : (i + 1) * 10]
        assert torch.equal(got_b, raw[c, "tb"][rows_a].to(torch.bfloat16))
    # reuse: the same values, gathered into the store's buffers (grown when needed)
    for dtype in (torch.float16, torch.float32):
        for cases in (ids[:2], ids, ids[:1]):
            want, _ = store.batch(cases, dtype=dtype)
            got, _ = store.batch(cases, dtype=dtype, reuse=True)
            for k in want:
                assert torch.equal(got[k], want[k])
        again, _ = store.batch(ids[:1], dtype=dtype, reuse=True)
        assert again["ta:high"].data_ptr() == got["ta:high"].data_ptr()  # no new buffer
    # read ahead in the background: the same batches, in order, in two buffers in turn
    plan = [(ids[:2], [None, None]), (ids[2:], [None]), (ids[:1], [np.arange(5)])]
    for ahead in (False, True):  # read ahead only (CPU), or gather ahead (GPU)
        seen = []
        for (cases, picks), (got, _) in zip(plan, store.batches(plan, ahead=ahead), strict=True):
            assert torch.equal(got["ta:high"], store.gather(cases, picks)[0]["ta:high"])
            seen.append(got["ta:high"].data_ptr())
        assert (seen[0] == seen[2] != seen[1]) if ahead else (seen[0] == seen[1] == seen[2])


def test_dropout_keeps_one_minus_p_and_scales():
    from shazam.models.abmil import Dropout

    for p in (0.1, 0.25, 0.5):
        d = Dropout(p).train()
        torch.manual_seed(0)
        x = torch.ones(256, 1024, requires_grad=True)
        y = d(x)
        kept = y != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 0.005, p
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
        # each of the four 16-bit lanes of a 64-bit draw is unbiased
        lanes = kept.view(-1, 4).float().mean(0)
        assert (lanes - (1 - p)).abs().max() < 0.01, (p, lanes)
        (g,) = torch.autograd.grad(y.sum(), x)  # the gradient is the same mask
        assert torch.equal(g, y.detach())
        torch.manual_seed(0)
        assert torch.equal(d(x), y)  # seeded by torch.manual_seed
        bf = d(x.detach().bfloat16())
        assert bf.dtype == torch.bfloat16
    d = Dropout(0.25).eval()
    x = torch.randn(8, 8)
    assert d(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_training_precision_policy(monkeypatch):
    from shazam import device
    from shazam.device import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("auto", cpu) is None  # extraction: fp32 on CPU
    assert autocast_dtype("fp32", cpu, cpu_bf16=True) is None
    for native in (True, False):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda n=native: n)
        want = torch.bfloat16 if native else None
        assert autocast_dtype("auto", cpu, cpu_bf16=True) == want  # training


def test_selection_never_reads_test(tmp_path):
    """Poisoned test labels leave training history and the selected epoch unchanged."""
    sheet, spec = make_cohort(tmp_path, signal=0.8)
    (m0, h0), (m1, h1) = _before_and_after(
        tmp_path, sheet, spec, lambda: _change_labels(tmp_path, ["test"], label=lambda v: "A")
    )
    pd.testing.assert_frame_equal(h0, h1)
    assert m0["selected_epoch"] == m1["selected_epoch"] and m0["val"] == m1["val"]
    assert m0["accuracy"] != m1["accuracy"] or m0["confusion"] != m1["confusion"]


def _before_and_after(tmp_path, sheet, spec, poison):
    """(metrics, history) of abmil-ta trained on the fold as it is, then after ``poison()``."""
    res = []
    for poisoned in (False, True):
        if poisoned:
            poison()
        out = tmp_path / f"m{poisoned}"
        m = train_fold("abmil-ta", spec, tmp_path / "fold.csv", sheet, ["ta"], out, CFG,
                       features_root=tmp_path / "results", log=lambda s: None)  # fmt: skip
        res.append((m, pd.read_csv(out / "history.csv").drop(columns=["seconds"])))
    return res


def _change_labels(tmp_path, splits, **change):
    """Rewrite the label file: for the cases of ``splits``, each column's values through
    ``change[column]``."""
    lab = pd.read_csv(tmp_path / "labels.csv")
    fold = pd.read_csv(tmp_path / "fold.csv")
    rows = lab["case_id"].isin(fold.loc[fold["split"].isin(splits), "case_id"])
    for col, f in change.items():
        lab.loc[rows, col] = f(lab.loc[rows, col])
    lab.to_csv(tmp_path / "labels.csv", index=False)


def test_survival_selection_never_reads_test(tmp_path):
    """Poisoned test times and events (all censored, far beyond training follow-up) leave the
    history, the selected epoch, every val metric and the log-rank cut-off unchanged."""
    sheet, spec = make_cohort(tmp_path, survival=True)
    (m0, h0), (m1, h1) = _before_and_after(
        tmp_path, sheet, spec,
        lambda: _change_labels(tmp_path, ["test"], months=lambda t: t * 5 + 100,
                               censorship=lambda c: c * 0 + 1),
    )  # fmt: skip
    pd.testing.assert_frame_equal(h0, h1)
    assert m0["selected_epoch"] == m1["selected_epoch"] and m0["val"] == m1["val"]
    assert m0["val"]["ibs"] is not None and m0["val"]["logrank_p"] is not None
    assert m0["risk_cutoff"] == m1["risk_cutoff"] == m0["val"]["risk_cutoff"]
    # the test metrics did see the poison
    assert m0["n_events"] > 0 and m1["n_events"] == 0 and m1["c_index"] is None
    assert m1["n_beyond_followup"] == 6


def test_survival_training_outputs_and_bins_from_train(tmp_path):
    from shazam.training.fold import fold_items

    sheet, spec = make_cohort(tmp_path, survival=True)
    out = tmp_path / "m"
    m = train_fold("abmil-ta", spec, tmp_path / "fold.csv", sheet, ["ta"], out, CFG,
                   features_root=tmp_path / "results", log=lambda s: None)  # fmt: skip
    for k in ("c_index", "c_index_ipcw", "ibs", "td_auc_mean", "logrank_p", "n_events",
              "n_beyond_followup", "risk_cutoff"):  # fmt: skip
        assert k in m
    assert m["c_index"] is not None and m["c_index"] > 0.7
    pred = pd.read_csv(out / "predictions.csv")
    assert {"risk", "hazard_0", "surv_2", "time", "event"} <= set(pred.columns)
    bins = json.loads((out / "config.json").read_text())["bins"]
    # changing only validation and test times leaves the bins unchanged
    _change_labels(tmp_path, ["val", "test"], months=lambda t: t * 7)
    train_fold("abmil-ta", spec, tmp_path / "fold.csv", sheet, ["ta"], tmp_path / "m2", CFG,
               features_root=tmp_path / "results", log=lambda s: None)  # fmt: skip
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["bins"] == bins

    def fold_bins():
        return fold_items(spec, "abmil-ta", ["ta"], tmp_path / "fold.csv", sheet=sheet,
                          root=tmp_path / "results").meta["bins"]  # fmt: skip

    assert fold_bins() == bins
    _change_labels(tmp_path, ["train"], months=lambda t: t * 7)  # training times do move them
    assert fold_bins() != bins


def test_unpack_places_packed_rows_with_and_without_padding():
    from shazam.models.abmil import unpack

    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = unpack(rows, mask)
    assert torch.equal(out[0], rows[:4]) and torch.equal(out[1, :3], rows[4:])
    assert torch.equal(out[1, 3], torch.zeros(3))
    full = torch.ones(2, 4, dtype=torch.bool)  # equal bags: a view, same layout
    rows8 = torch.cat([rows, rows[:1]])
    out = unpack(rows8, full)
    assert (
        out.shape == (2, 4, 3) and torch.equal(out[0], rows8[:4]) and torch.equal(out[1], rows8[4:])
    )


def test_a_case_without_patches_is_left_out_and_listed(tmp_path):
    """A case whose only slide has no patches (skipped or without tissue) is not scored on a
    constant prediction: it is left out of every split of the fold and listed."""
    sheet, spec = make_cohort(tmp_path)
    empty = sheet["slide_id"].iloc[-1]  # a test case's only slide
    for t in ("ta", "tb"):
        with h5py.File(tmp_path / "results" / "features" / t / f"{empty}.h5", "w") as f:
            f["features"] = np.zeros((0, 16), np.float16)
            f["coords"] = np.zeros((0, 2), np.int64)
    out = tmp_path / "m"
    m = train_fold("abmil-ta", spec, tmp_path / "fold.csv", sheet, ["ta", "tb"], out, CFG,
                   features_root=tmp_path / "results", log=lambda s: None)  # fmt: skip
    case = sheet["case_id"].iloc[-1]
    assert m["no_patches"] == {"test": [case]} and m["n_cases"] == 5
    pred = pd.read_csv(out / "predictions.csv")
    assert case not in set(pred["case_id"]) and len(pred) == 5
    assert json.loads((out / "config.json").read_text())["no_patches"] == {"test": [case]}
