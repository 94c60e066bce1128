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

REAL = [
    "virchow2", "virchow", "uni2_h", "uni", "phikon_v2", "gigapath", "h_optimus_0", "h_optimus_1"
]  # fmt: skip
DOCUMENTED_HIGH = {
    "virchow2": 2560,
    "virchow": 2560,
    "phikon_v2": 1024,
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
    assert (
        REGISTRY["virchow"].embedding == "cls_mean"
        and "reg_tokens" not in REGISTRY["virchow"].kwargs
    )
    assert (REGISTRY["virchow"].low_block, REGISTRY["virchow"].mid_block) == (9, 20)
    assert (REGISTRY["phikon_v2"].low_block, REGISTRY["phikon_v2"].mid_block) == (7, 15)
    assert REGISTRY["phikon_v2"].weights_layout == "hf_dinov2" and not REGISTRY["phikon_v2"].gated
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

    spec = get_spec(name)
    model, w = build_model(spec, random_weights=True)
    assert w.kind == "random"
    _assert_levels_run(spec, model)


def _assert_levels_run(spec, model) -> None:
    """One random patch through every level: the spec's dims, finite values; then free it."""
    import gc

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


def _offline_error(monkeypatch, tmp_path, teacher: str) -> str:
    """The message of resolving ``teacher``'s weights with the hub offline and no cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherWeightsError) as e:
        resolve_weights(get_spec(teacher))
    return str(e.value)


def test_gated_weights_offline_error_names_model_and_config_key(monkeypatch, tmp_path):
    msg = _offline_error(monkeypatch, tmp_path, "uni2_h")
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


# --------------------------------------------------------------------------- published layouts


def _dinov2_hf_shapes(dim: int, depth: int, patch: int = 16, grid: int = 14) -> dict:
    """Name -> shape of a transformers ``Dinov2Model`` checkpoint (owkin/phikon-v2's layout:
    MLP ratio 4, LayerScale, a mask token, no register tokens)."""
    shapes = {
        "embeddings.cls_token": (1, 1, dim),
        "embeddings.mask_token": (1, dim),
        "embeddings.position_embeddings": (1, grid * grid + 1, dim),
        "embeddings.patch_embeddings.projection.weight": (dim, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (dim,),
        "layernorm.weight": (dim,),
        "layernorm.bias": (dim,),
    }
    linears = {
        "attention.attention.query": (dim, dim),
        "attention.attention.key": (dim, dim),
        "attention.attention.value": (dim, dim),
        "attention.output.dense": (dim, dim),
        "mlp.fc1": (4 * dim, dim),
        "mlp.fc2": (dim, 4 * dim),
    }
    for i in range(depth):
        _block_shapes(shapes, f"encoder.layer.{i}.", linears, dim,
                      ("layer_scale1.lambda1", "layer_scale2.lambda1"))  # fmt: skip
    return shapes


def _block_shapes(shapes: dict, prefix: str, linears: dict, dim: int, scales: tuple) -> None:
    """One transformer block's tensors: each linear's weight and bias, the two norms' weight
    and bias, and the LayerScale vectors (``scales``)."""
    for lin, (n_out, n_in) in linears.items():
        shapes[f"{prefix}{lin}.weight"], shapes[f"{prefix}{lin}.bias"] = (n_out, n_in), (n_out,)
    for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", *scales):
        shapes[prefix + name] = (dim,)


def _virchow_timm_shapes() -> dict:
    """Name -> shape of paige-ai/Virchow's timm checkpoint: ViT-H/14 at 224 px (16 × 16
    patches + the class token, no registers), packed SwiGLU MLP of 6832 → 3416, LayerScale."""
    dim, hidden = 1280, 6832
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 16 * 16 + 1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    linears = {
        "attn.qkv": (3 * dim, dim),
        "attn.proj": (dim, dim),
        "mlp.fc1": (hidden, dim),
        "mlp.fc2": (dim, hidden // 2),
    }
    for i in range(32):
        _block_shapes(shapes, f"blocks.{i}.", linears, dim, ("ls1.gamma", "ls2.gamma"))
    return shapes


PUBLISHED = {
    "phikon_v2": lambda: _dinov2_hf_shapes(1024, 24),
    "virchow": _virchow_timm_shapes,
}


def _random_state(shapes: dict, dtype=torch.float32, seed: int = 0) -> dict:
    """A state dict with these names and shapes and random values."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (0.02 * torch.randn(s, generator=gen)).to(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_layout_matches_the_architecture(name):
    """The published checkpoint's names and shapes, converted by the record's layout (on the
    meta device: no memory), are exactly the architecture's: nothing missing or unexpected."""
    from shazam.teachers.build import empty_architecture
    from shazam.teachers.convert import to_timm

    spec = get_spec(name)
    model = empty_architecture(spec)
    own = model.state_dict()
    published = {k: torch.empty(s, device="meta") for k, s in PUBLISHED[name]().items()}
    sd = to_timm(spec.weights_layout, published, own)
    assert set(sd) == set(own)
    assert all(tuple(sd[k].shape) == tuple(own[k].shape) for k in own)
    assert model.num_prefix_tokens == 1  # class token only: cls_mean averages every other token


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_checkpoint_loads_and_runs(name, tmp_path):
    """A full-size checkpoint laid out like the published one (random values, half precision
    to halve the file) loads through the local-weights path and gives every level's dims."""

    from safetensors.torch import save_file

    spec = get_spec(name)
    save_file(_random_state(PUBLISHED[name](), torch.float16), tmp_path / "model.safetensors")
    model, w = build_model(spec, tmp_path)
    assert w.kind == "local" and w.path.endswith("model.safetensors")
    _assert_levels_run(spec, model)


def _dinov2_reference(sd: dict, x: torch.Tensor, heads: int, eps: float = 1e-6):
    """transformers' Dinov2Model forward, written out from its state dict: the class token of
    the last hidden state (after the final norm) and of each layer's output."""
    import math

    import torch.nn.functional as F

    dim = sd["embeddings.cls_token"].shape[-1]
    patch = sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
    w = "embeddings.patch_embeddings.projection."
    h = F.conv2d(x, sd[w + "weight"], sd[w + "bias"], stride=patch).flatten(2).transpose(1, 2)
    h = torch.cat([sd["embeddings.cls_token"].expand(len(x), -1, -1), h], dim=1)
    pos = sd["embeddings.position_embeddings"]
    if pos.shape[1] != h.shape[1]:  # interpolate_pos_encoding: bicubic, float32
        g, big_g = math.isqrt(pos.shape[1] - 1), math.isqrt(h.shape[1] - 1)
        grid = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(big_g, big_g), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    h = h + pos
    layers = []
    for i in range(len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")})):
        p = f"encoder.layer.{i}."

        def lin(name, t, p=p):
            return F.linear(t, sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"])

        y = F.layer_norm(h, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        q, k, v = (
            lin(f"attention.attention.{n}", y).view(len(x), -1, heads, dim // heads).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        a = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5, dim=-1) @ v
        a = a.transpose(1, 2).reshape(len(x), -1, dim)
        h = h + lin("attention.output.dense", a) * sd[p + "layer_scale1.lambda1"]
        y = F.layer_norm(h, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = h + lin("mlp.fc2", F.gelu(lin("mlp.fc1", y))) * sd[p + "layer_scale2.lambda1"]
        layers.append(h[:, 0])
    out = F.layer_norm(h, (dim,), sd["layernorm.weight"], sd["layernorm.bias"], eps)
    return out[:, 0], layers


def _tiny_phikon(depth: int = 3, dim: int = 32, heads: int = 4):
    """phikon_v2's record (timm architecture, layout, embedding), narrow and shallow."""
    spec = get_spec("phikon_v2")
    return replace(
        spec,
        kwargs={**spec.kwargs, "embed_dim": dim, "depth": depth, "num_heads": heads},
        low_block=0,
        mid_block=1,
        dims={"low": dim, "mid": dim, "high": dim},
    )


@pytest.mark.parametrize("grid", [14, 20])
def test_converted_dinov2_checkpoint_computes_what_transformers_does(grid, tmp_path):
    """A small Dinov2-layout checkpoint (random values, mask token included), loaded through
    the normal local-weights path, gives transformers' class token (last_hidden_state[:, 0])
    and per-layer class tokens: the q/k/v fusion order, LayerScale and final norm are right.
    grid 20: a position embedding stored for another grid is resampled as transformers does."""
    from safetensors.torch import save_file

    spec = _tiny_phikon()
    sd = _random_state(_dinov2_hf_shapes(32, 3, grid=grid))
    for k in sd:  # LayerScale and LayerNorm gains near 1: every block changes the tokens
        if k.endswith(("lambda1", "norm1.weight", "norm2.weight", "layernorm.weight")):
            sd[k] += 1.0
    save_file(sd, tmp_path / "model.safetensors")
    model, w = build_model(spec, tmp_path / "model.safetensors")
    assert w.kind == "local"
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = LevelExtractor(spec, model)(x)
        ref_high, ref_layers = _dinov2_reference(sd, x, heads=4)
    torch.testing.assert_close(out["high"], ref_high, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["low"], ref_layers[spec.low_block], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["mid"], ref_layers[spec.mid_block], rtol=1e-4, atol=1e-5)
    # the check can fail: with query and key swapped the class token changes
    swapped = dict(sd)
    for i in range(3):
        q, k = (f"encoder.layer.{i}.attention.attention.{n}.weight" for n in ("query", "key"))
        swapped[q], swapped[k] = sd[k], sd[q]
    with torch.inference_mode():
        assert not torch.allclose(_dinov2_reference(swapped, x, heads=4)[0], ref_high, atol=1e-4)


def test_incomplete_dinov2_checkpoint_is_a_clear_error(tmp_path):
    spec = _tiny_phikon()
    shapes = _dinov2_hf_shapes(32, 3)
    del shapes["encoder.layer.1.attention.attention.key.weight"]
    from safetensors.torch import save_file

    save_file(_random_state(shapes), tmp_path / "model.safetensors")
    with pytest.raises(TeacherWeightsError, match=r"\(read as hf_dinov2\).*1 missing keys"):
        build_model(spec, tmp_path / "model.safetensors")


def test_public_weights_offline_error_does_not_say_gated(monkeypatch, tmp_path):
    msg = _offline_error(monkeypatch, tmp_path, "phikon_v2")
    assert "owkin/phikon-v2 is public" in msg and "teacher_weights.phikon_v2" in msg
    assert "gated" not in msg
