import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from shazam.models import registry
from shazam.models.shazam import Shazam
from shazam.tasks import TaskSpec
from shazam.training import TrainConfig, train_fold

LEVELS = ["low", "mid", "high"]


def dims_for(teachers, levels, base=12):
    return {
        f"{t}:{lv}": base + 4 * i + j for i, t in enumerate(teachers) for j, lv in enumerate(levels)
    }


def batch(dims, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(max(lens))[None, :] < torch.tensor(lens)[:, None]
    feats = {k: torch.randn(int(mask.sum()), c, generator=g) for k, c in dims.items()}
    return feats, mask


@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("levels", [["high"], LEVELS])
def test_shapes_with_padded_bags(T, levels):
    teachers = [f"t{i}" for i in range(T)]
    dims = dims_for(teachers, levels)
    m = Shazam(dims, teachers, levels, n_out=3, d=16, layers=2, heads=2, dropout=0.0)
    feats, mask = batch(dims, [5, 9, 2])
    out = m(feats, mask)
    assert out["logits"].shape == (3, 3)
    assert out["gate"].shape == (3, T) and torch.allclose(out["gate"].sum(1), torch.ones(3))
    assert out["attention"].shape == (3, 9)
    assert torch.all(out["attention"][2, 2:] == 0)  # padding gets no attention
    assert out["aux_loss"].ndim == 0 and torch.isfinite(out["aux_loss"])


def test_padding_does_not_change_a_bag_output():
    teachers = ["a", "b"]
    dims = dims_for(teachers, LEVELS)
    m = Shazam(dims, teachers, LEVELS, n_out=2, d=16, layers=1, dropout=0.0).eval()
    feats, mask = batch(dims, [4, 7])
    alone = {k: v[:4] for k, v in feats.items()}
    with torch.no_grad():
        both = m(feats, mask)["logits"][0]
        single = m(alone, mask[:1, :4])["logits"][0]
    torch.testing.assert_close(both, single, atol=1e-5, rtol=1e-5)


def _gate_sensitivity(arrangement):
    torch.manual_seed(0)
    teachers = ["a", "b", "c"]
    dims = dims_for(teachers, ["high"])
    m = Shazam(dims, teachers, ["high"], n_out=2, d=16, layers=1, dropout=0.0,
               distill_weight=0.0, gate_arrangement=arrangement).eval()  # fmt: skip
    feats, mask = batch(dims, [6, 6])
    with torch.no_grad():
        before = m(feats, mask)["logits"].clone()
        m.gates[0][-1].bias[1] += 3.0  # raise teacher b's gate logit
        after = m(feats, mask)
    return before, after


def test_gate_changes_the_output():
    before, after = _gate_sensitivity("pre_attention")
    ours = float((after["logits"] - before).abs().max())
    # the seed's arrangement (LayerNorm after the gate) cancels the scale, up to LayerNorm's
    # eps: the same change of gate logit barely moves its output, so the test tells them apart
    before, after = _gate_sensitivity("seed_layernorm")
    seeds = float((after["logits"] - before).abs().max())
    assert ours > 0.05 and ours > 20 * seeds, (ours, seeds)


def test_distillation_targets_are_fixed_in_teacher_mode_only():
    teachers = ["a", "b"]
    dims = dims_for(teachers, LEVELS)
    for mode, fixed in (("teacher", True), ("agreement", False)):
        m = Shazam(
            dims, teachers, LEVELS, n_out=2, d=16, layers=1, dropout=0.0, distill_target=mode
        )
        feats, mask = batch(dims, [5, 3])
        pooled = []
        handle = m.pool[0].register_forward_hook(lambda mod, i, o, acc=pooled: acc.append(o[0]))
        m(feats, mask)
        handle.remove()
        v = torch.stack([pooled[0], pooled[0]], dim=1)  # stand-in (B, T, d) from the pool output
        tgt = m.distillation_targets(feats, mask, [v] * 3, 0, 0)
        assert (not tgt.requires_grad) == fixed
        if not fixed:  # the seed's targets are trainable: gradient reaches the student's pool
            g = torch.autograd.grad(tgt.sum(), m.pool[0].w.weight, allow_unused=True)[0]
            assert g is not None and g.abs().sum() > 0


def test_ablation_settings():
    cfg = {"levels": LEVELS, "distill_weight": 0.01}
    assert registry.ablation_names() == ["shazam-nogate", "shazam-nodistill", "shazam-high",
                                         "shazam-agreement"]  # fmt: skip

    def settings(name):
        return registry.parse(name).settings(cfg)

    assert settings("shazam").distill_weight == 0.01 and settings("shazam").gate is True
    assert settings("shazam-nogate").gate is False
    assert settings("shazam-nodistill").distill_weight == 0.0
    assert settings("shazam-high").levels == ("high",)
    assert settings("shazam-agreement").distill_target == "agreement"
    m = Shazam(dims_for(["a", "b"], LEVELS), ["a", "b"], LEVELS, 2, d=8, layers=1, gate=False)
    feats, mask = batch(dims_for(["a", "b"], LEVELS), [3, 3])
    assert torch.allclose(m(feats, mask)["gate"], torch.full((2, 2), 0.5))


def _cohort(tmp_path, survival):
    rng = np.random.default_rng(0)
    n = 18
    y = np.arange(n) % 2
    rows = []
    for i in range(n):
        sid = f"s{i:02d}"
        k = int(rng.integers(10, 30))
        for t, dim in (("ta", 10), ("tb", 14)):
            p = tmp_path / "results" / "features" / t / f"{sid}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                for ds in ("features", "features_low", "features_mid"):
                    x = rng.normal(size=(k, dim)).astype(np.float32)
                    x[:, 0] += 2.5 * (y[i] - 0.5)
                    f[ds] = x.astype(np.float16)
                f["coords"] = np.stack([np.arange(k) * 256, np.zeros(k, int)], 1)
        rows.append((sid, "x.svs", f"c{i:02d}"))
    sheet = pd.DataFrame(rows, columns=["slide_id", "path", "case_id"])
    if survival:
        pd.DataFrame({"case_id": sheet["case_id"], "m": np.where(y, 5.0, 40.0) + np.arange(n),
                      "c": 0}).to_csv(tmp_path / "l.csv", index=False)  # fmt: skip
        spec = TaskSpec("os", "survival", str(tmp_path / "l.csv"), time_col="m", event_col="c",
                        n_bins=2, folds=2)  # fmt: skip
    else:
        pd.DataFrame({"case_id": sheet["case_id"], "label": np.where(y, "B", "A")}).to_csv(
            tmp_path / "l.csv", index=False
        )
        spec = TaskSpec(
            "sub", "classification", str(tmp_path / "l.csv"), classes=("A", "B"), folds=2
        )
    split = ["train"] * 10 + ["val"] * 4 + ["test"] * 4
    pd.DataFrame({"case_id": sheet["case_id"], "split": split}).to_csv(
        tmp_path / "f.csv", index=False
    )
    return sheet, spec


@pytest.mark.parametrize("survival", [False, True])
def test_shazam_trains_on_a_tiny_set(tmp_path, survival):
    sheet, spec = _cohort(tmp_path, survival)
    cfg = TrainConfig(epochs=25, lr=2e-3, accumulate=2, batch_bags=2, d_model=16, dropout=0.0)
    m = train_fold("shazam", spec, tmp_path / "f.csv", sheet, ["ta", "tb"], tmp_path / "o", cfg,
                   features_root=tmp_path / "results", log=lambda s: None,
                   shazam_cfg={"layers": 1, "d_model": 16})  # fmt: skip
    key = "c_index" if survival else "balanced_accuracy"
    assert m["val"][key] >= 0.75 and m[key] >= 0.75
    assert set(m["gate_mean"]) == {"ta", "tb"} and abs(sum(m["gate_mean"].values()) - 1) < 1e-4


def test_distill_cosine_is_what_the_distillation_term_raises():
    teachers = ["a", "b"]
    dims = dims_for(teachers, LEVELS)
    m = Shazam(dims, teachers, LEVELS, 2, d=16, layers=1, dropout=0.0, distill_weight=1.0).eval()
    feats, mask = batch(dims, [6, 4, 8])
    cos = m.distill_cosine(feats, mask)
    assert cos.shape == (3, 2) and (cos.abs() <= 1).all()
    # distillation loss = mean over (level, teacher) of (1 - cos) + Huber: a step on it alone
    # raises the mean cosine
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        m(feats, mask)["aux_loss"].backward()
        opt.step()
    assert m.distill_cosine(feats, mask).mean() > cos.mean() + 0.2
