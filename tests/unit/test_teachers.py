import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from shazam.teachers import REGISTRY, UnknownTeacherError, get_spec
from shazam.teachers.build import (
    LevelExtractor,
    TeacherWeightsError,
    build_architecture,
    build_model,
    check,
    input_view,
    load_state_dict,
    resolve_weights,
)

REAL = ["virchow2", "uni2_h", "uni", "gigapath", "h_optimus_0", "h_optimus_1"]
DOCUMENTED_HIGH = {
    "virchow2": 2560,
    "uni2_h": 1536,
    "uni": 1024,
    "gigapath": 1536,
    "h_optimus_0": 1536,
    "h_optimus_1": 1536,
}


def test_registry_has_required_teachers():
    assert set(REAL) | {"toy_vit", "toy_cnn"} <= set(REGISTRY)
    assert REGISTRY["toy_vit"].family != REGISTRY["toy_cnn"].family
    assert REGISTRY["h_optimus_0"].mean == (0.707223, 0.578729, 0.703617)
    assert REGISTRY["virchow2"].embedding == "cls_mean"
    # low/mid = class token after blocks floor(L/3) and floor(2L/3) (1-based)
    assert (REGISTRY["virchow2"].low_block, REGISTRY["virchow2"].mid_block) == (9, 20)
    with pytest.raises(UnknownTeacherError, match="unknown teacher 'nope'; registered: virchow2"):
        get_spec("nope")


@pytest.mark.parametrize("name", ["toy_vit", "toy_cnn"])
def test_toy_teachers_check(name):
    shapes = check(get_spec(name))
    assert {lv: s[-1] for lv, s in shapes.items()} == get_spec(name).dims


@pytest.mark.parametrize("name", REAL)
def test_real_architectures_give_the_documented_dims(name):
    """Every real architecture, built offline on the meta device (every layer's shape logic,
    no memory), gives the documented dims at every level."""
    spec = get_spec(name)
    shapes = check(spec, batch=1, meta=True)
    assert shapes["high"] == [1, DOCUMENTED_HIGH[name]]
    assert {lv: s[-1] for lv, s in shapes.items()} == spec.dims


@pytest.mark.slow
@pytest.mark.parametrize("name", ["virchow2", "uni"])
def test_real_architectures_run_with_random_weights(name):
    """Two real teachers (the class ⊕ mean-token embedding and the pooled one) run a real
    forward pass with random weights: finite outputs of the documented dims. The others
    share their timm code paths; each would cost a 1B-parameter forward pass here."""
    import gc

    spec = get_spec(name)
    model, w = build_model(spec, random_weights=True)
    assert w.kind == "random"
    with torch.inference_mode():
        out = LevelExtractor(spec, model)(torch.randn(1, 3, spec.input_size, spec.input_size))
    assert {lv: t.shape[-1] for lv, t in out.items()} == spec.dims
    assert all(torch.isfinite(t).all() for t in out.values())
    del model, out
    gc.collect()


def test_toy_weights_are_fixed_by_seed():
    a = build_architecture(get_spec("toy_vit")).state_dict()
    b = build_architecture(get_spec("toy_vit")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rng_state = torch.random.get_rng_state()
    build_architecture(get_spec("toy_cnn"))
    assert torch.equal(rng_state, torch.random.get_rng_state())  # global RNG untouched


def _manual_levels(spec, model, x):
    """Reference: walk the model by hand and take the low/mid outputs directly."""
    if spec.family == "cnn":
        h = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        outs = []
        for name in spec.stages:
            h = model.get_submodule(name)(h)
            outs.append(h.mean(dim=(2, 3)))
        return outs[spec.low_block], outs[spec.mid_block]
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    outs = []
    for blk in model.blocks:
        h = blk(h)
        outs.append(h[:, 0])
    return outs[spec.low_block], outs[spec.mid_block]


@pytest.mark.parametrize("name", ["toy_vit", "toy_cnn"])
def test_hooks_capture_the_right_blocks(name):
    spec = get_spec(name)
    model, _ = build_model(spec)
    ext = LevelExtractor(spec, model)
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        out = ext(x)
        low, mid = _manual_levels(spec, model, x)
        ref_high = model(x)
    torch.testing.assert_close(out["low"], low)
    torch.testing.assert_close(out["mid"], mid)
    if spec.embedding == "cls_mean":  # class token ⊕ mean of patch tokens (prefix excluded)
        n = model.num_prefix_tokens
        ref_high = torch.cat([ref_high[:, 0], ref_high[:, n:].mean(1)], dim=-1)
    torch.testing.assert_close(out["high"], ref_high)
    # the low and mid levels differ from each other and from a neighbouring block
    assert not torch.allclose(out["low"], out["mid"][:, : out["low"].shape[1]])


def test_local_safetensors_and_torch_weights_roundtrip(tmp_path):
    from safetensors.torch import save_file

    spec = get_spec("toy_cnn")
    src = build_architecture(spec)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, tmp_path / "model.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ref = src(x)
        for path in (tmp_path / "model.safetensors", tmp_path, tmp_path / "w.pth"):
            model, w = build_model(spec, path)
            assert w.kind == "local" and "sha256:" in w.identity
            torch.testing.assert_close(model(x), ref)
    assert set(load_state_dict(tmp_path / "w.pth")) == set(sd)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(TeacherWeightsError, match="does not match the resnet10t"):
        build_model(get_spec("toy_cnn"), tmp_path / "bad.safetensors")
    with pytest.raises(TeacherWeightsError, match="teacher_weights.toy_cnn = .*does not exist"):
        build_model(get_spec("toy_cnn"), tmp_path / "missing.safetensors")


def test_gated_weights_offline_error_names_model_and_config_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherWeightsError) as e:
        resolve_weights(get_spec("uni2_h"))
    msg = str(e.value)
    assert "MahmoodLab/UNI2-h" in msg and "gated" in msg and "teacher_weights.uni2_h" in msg
    assert "HF_TOKEN" in msg


def test_cli_teachers_list_and_check():
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "teachers", "list"], capture_output=True, text=True
    )
    assert p.returncode == 0
    for name in REGISTRY:
        assert name in p.stdout
    assert "hf:paige-ai/Virchow2" in p.stdout and "2560" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "teachers", "check", "toy_vit", "--random-weights"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "low       96  ok" in p.stdout and "high     192  ok" in p.stdout


def _stripes(colour, period, phase=0):
    """(1, 3, 64, 64) 0..255 image: vertical stripes of one colour on a lighter tint."""
    x = torch.arange(64, dtype=torch.float32)
    s = (torch.sin(2 * torch.pi * (x + phase) / period) > 0).float()  # 0/1 stripes
    c = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1)
    return (c * (0.55 + 0.45 * s).view(1, 1, 1, 64)).expand(1, 3, 64, 64).contiguous()


def test_colour_view_keeps_only_the_mean_colour():
    a = _stripes((230, 150, 190), period=8)
    b = a[..., torch.randperm(64)]  # same pixels, different texture
    assert torch.allclose(input_view(a, "colour"), input_view(b, "colour"), atol=1e-3)
    other = _stripes((170, 120, 210), period=8)
    assert (input_view(a, "colour") - input_view(other, "colour")).abs().max() > 10
    assert input_view(a, "full") is a


def test_texture_view_keeps_structure_not_colour():
    pink, purple = _stripes((230, 150, 190), 8), _stripes((170, 120, 210), 8)
    tp, tq = input_view(pink, "texture"), input_view(purple, "texture")
    assert (tp - tq).abs().mean() < 3  # stain colour and brightness are gone
    assert torch.equal(tp[:, 0], tp[:, 1])  # grey
    fine = input_view(_stripes((230, 150, 190), 4), "texture")
    assert (tp - fine).abs().mean() > 30  # a different texture stays different


def test_toy_teachers_are_complementary_by_their_views():
    assert get_spec("toy_vit").view == "colour" and get_spec("toy_cnn").view == "texture"
    assert all(REGISTRY[n].view == "full" for n in REAL)
    with pytest.raises(ValueError, match="view"):
        replace(get_spec("toy_vit"), view="sepia")
    with pytest.raises(ValueError, match="unknown teacher input view"):
        input_view(torch.zeros(1, 3, 8, 8), "sepia")


@pytest.mark.parametrize("name", ["toy_vit", "toy_cnn"])
def test_meta_device_build_equals_the_slow_path(name, tmp_path):
    """Built on the meta device and given the file's tensors (assign=True, memory-mapped), a
    teacher computes exactly what the initialise-then-copy path computes."""
    from safetensors.torch import save_file

    spec = get_spec(name)
    src = build_architecture(spec)
    with torch.no_grad():
        for i, p in enumerate(src.parameters()):
            p.add_(0.01 * (i % 7))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    slow = build_architecture(spec)
    slow.load_state_dict(load_state_dict(tmp_path / "w.safetensors"))
    fast, w = build_model(spec, tmp_path / "w.safetensors")
    assert w.kind == "local"
    assert not any(t.is_meta for t in (*fast.parameters(), *fast.buffers()))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        a, b = LevelExtractor(spec, slow)(x), LevelExtractor(spec, fast)(x)
    for lv in a:
        assert torch.equal(a[lv], b[lv]), lv


def test_half_precision_checkpoint_is_cast_like_a_copying_load(tmp_path):
    from safetensors.torch import save_file

    spec = get_spec("toy_vit")
    sd = {k: v.half() for k, v in build_architecture(spec).state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    fast, _ = build_model(spec, tmp_path / "w.safetensors")
    slow = build_architecture(spec)
    slow.load_state_dict(sd)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    for (k, a), b in zip(slow.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_with_a_wrong_shape_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    spec = get_spec("toy_vit")
    sd = build_architecture(spec).state_dict()
    sd["head.weight" if "head.weight" in sd else "cls_token"] = torch.zeros(1, 1, 7)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    with pytest.raises(TeacherWeightsError, match="1 of another shape"):
        build_model(spec, tmp_path / "w.safetensors")
