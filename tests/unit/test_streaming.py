"""forward_chunks (one bag as row chunks, streaming softmax) equals forward on that bag."""

import pytest
import torch

from shazam.models.abmil import ABMIL, ConcatABMIL, unpack
from shazam.models.shazam import Shazam

TEACHERS, LEVELS = ["a", "b"], ["low", "mid", "high"]
DIMS = {
    f"{t}:{lv}": c + 4 * j
    for t, c in zip(TEACHERS, (24, 40), strict=True)
    for j, lv in enumerate(LEVELS)
}


def make(kind: str, **kw):
    torch.manual_seed(0)
    if kind == "abmil":
        return ABMIL(DIMS["a:high"], 3, d=16, key="a:high").eval()
    if kind == "concat":
        return ConcatABMIL({k: c for k, c in DIMS.items() if k.endswith(":high")}, 3, d=16).eval()
    return Shazam(DIMS, TEACHERS, LEVELS, 3, d=16, layers=1, heads=2, **kw).eval()


MODELS = {
    "abmil": {},
    "concat": {},
    "shazam": {},
    "shazam-nogate": {"gate": False, "distill_weight": 0.0},
    "shazam-distill": {"distill_weight": 1.0},
    "shazam-agreement": {"distill_target": "agreement"},
}


def bag(n: int, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(n, c, generator=g) * 2 + 0.5).to(dtype) for k, c in DIMS.items()}


def chunked(feats: dict[str, torch.Tensor], size: int):
    n = len(next(iter(feats.values())))
    for i in range(0, n, size):
        yield {k: x[i : i + size] for k, x in feats.items()}


def check(whole: dict, streamed: dict, tol: float) -> None:
    assert set(whole) == set(streamed)
    for k, x in whole.items():
        y = streamed[k]
        assert y.shape == x.shape, k
        torch.testing.assert_close(y.float(), x.float(), rtol=tol, atol=tol, msg=k)
    assert streamed["attention"].dtype == torch.float32


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [97, 1])
def test_chunks_equal_forward_fp32(name, size):
    m = make(name.split("-")[0], **MODELS[name])
    feats = bag(1000 if size > 1 else 150)  # row-by-row on a shorter bag: fast
    n = len(feats["a:high"])
    with torch.no_grad():
        whole = m(feats, torch.ones(1, n, dtype=torch.bool))
    check(whole, m.forward_chunks(chunked(feats, size)), 1e-5)


@pytest.mark.parametrize("name", ["abmil", "concat", "shazam", "shazam-distill"])
def test_chunks_equal_forward_bf16_autocast(name):
    m = make(name.split("-")[0], **MODELS[name])
    feats = bag(1000, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = m(feats, torch.ones(1, 1000, dtype=torch.bool))
        streamed = m.forward_chunks(chunked(feats, 97))
    check(whole, streamed, 3e-2)


@pytest.mark.parametrize("name", list(MODELS))
def test_empty_bag(name):
    m = make(name.split("-")[0], **MODELS[name])
    empty = bag(0)
    with torch.no_grad():
        whole = m(empty, torch.zeros(1, 0, dtype=torch.bool))
    for chunks in ([empty], []):  # one empty chunk, or none at all
        out = m.forward_chunks(iter(chunks))
        check(whole, out, 1e-6)
        assert out["attention"].shape == (1, 0)
    if "slide" in whole:
        assert (whole["slide"] == 0).all()


def test_grad_enabled_does_not_break():
    m = make("shazam", distill_weight=1.0)
    out = m.forward_chunks(chunked(bag(50), 7))
    assert out["logits"].shape == (1, 3) and torch.isfinite(out["aux_loss"])


@pytest.mark.parametrize("name", ["abmil", "concat", "shazam"])
def test_packed_batch_per_bag_equals_chunks(name):
    m = make(name, distill_weight=1.0) if name == "shazam" else make(name)
    lens = [37, 120, 1, 64]
    bags = [bag(n, seed=i) for i, n in enumerate(lens)]
    feats = {k: torch.cat([b[k] for b in bags]) for k in DIMS}
    mask = torch.arange(max(lens))[None, :] < torch.tensor(lens)[:, None]
    with torch.no_grad():
        whole = m(feats, mask)
    for i, (n, b) in enumerate(zip(lens, bags, strict=True)):
        out = m.forward_chunks(chunked(b, 13))
        torch.testing.assert_close(out["logits"][0], whole["logits"][i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["attention"][0], whole["attention"][i, :n])
        assert (whole["attention"][i, n:] == 0).all()
        if "gate" in whole:
            torch.testing.assert_close(out["gate"][0], whole["gate"][i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_teacher_target_is_the_old_unpack_formula(dtype):
    m = make("shazam")
    lens = [5, 0, 9, 3]
    mask = torch.arange(max(lens))[None, :] < torch.tensor(lens)[:, None]
    g = torch.Generator().manual_seed(1)
    feats = {k: torch.randn(sum(lens), c, generator=g).to(dtype) for k, c in DIMS.items()}
    for li in range(len(LEVELS)):
        for ti, t in enumerate(TEACHERS):
            new = m.distillation_targets(feats, mask, None, li, ti)
            x = unpack(feats[f"{t}:{LEVELS[li]}"].float(), mask)  # the former code
            w = mask.unsqueeze(-1).to(x.dtype)
            old = torch.nn.functional.normalize((x * w).sum(1) / w.sum(1).clamp_min(1), dim=-1)
            torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
            assert not new.requires_grad and (new[1] == 0).all()
