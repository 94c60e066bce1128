"""Build any registered teacher with timm, load its weights, and run it with level hooks."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .convert import to_timm
from .registry import TeacherSpec

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")


class TeacherWeightsError(RuntimeError):
    """Weights could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    kind: str  # builtin | random | local | hub
    path: str | None
    identity: str  # what goes into the feature file's provenance


# --------------------------------------------------------------------------- architecture


def _timm_kwargs(spec: TeacherSpec) -> dict:
    import timm.layers

    kw = dict(spec.kwargs)
    if isinstance(kw.get("mlp_layer"), str):
        kw["mlp_layer"] = getattr(timm.layers, kw["mlp_layer"])
    if isinstance(kw.get("act_layer"), str):
        kw["act_layer"] = getattr(nn, kw["act_layer"])
    return kw


def build_architecture(spec: TeacherSpec) -> nn.Module:
    """The timm architecture with initial weights (fixed-seed for toy teachers).

    This is the slow path: timm initialises every parameter (17 s for Virchow2 on a CPU).
    Teachers with weights go through :func:`empty_architecture` instead."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed if spec.seed is not None else 0)
        model = timm.create_model(spec.arch, pretrained=False, **_timm_kwargs(spec))
    return model.eval()


def empty_architecture(spec: TeacherSpec) -> nn.Module:
    """The architecture on the meta device: shapes only, no memory, no initialisation."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(spec.arch, pretrained=False, **_timm_kwargs(spec))
    return model.eval()


def random_architecture(spec: TeacherSpec, seed: int = 0) -> nn.Module:
    """Real architecture, random weights, quickly: allocated empty, then every floating
    parameter drawn N(0, 0.02²) from a seeded generator (for architecture checks and
    benchmarks; timm's own truncated-normal init of a 1B-parameter ViT takes minutes)."""
    model = empty_architecture(spec).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                t.normal_(0.0, 0.02, generator=gen)
            else:
                t.zero_()
    return model


def assign_weights(spec: TeacherSpec, model: nn.Module, sd: dict, source: str) -> nn.Module:
    """Put a state dict into an architecture built on the meta device (``assign=True``: the
    tensors are adopted, not copied, so a memory-mapped file stays mapped). A checkpoint
    stored in another float dtype is cast to the architecture's, as a copying load would."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        layout = "" if spec.weights_layout == "timm" else f" (read as {spec.weights_layout})"
        raise TeacherWeightsError(
            f"teacher {spec.name}: {source}{layout} does not match the {spec.arch} architecture "
            f"({len(missing)} missing keys e.g. {missing[:3]}, {len(unexpected)} unexpected "
            f"e.g. {unexpected[:3]}, {len(shape)} of another shape e.g. {shape[:3]}); is it "
            "the right checkpoint for this teacher?"
        )
    sd = {
        k: v.to(own[k].dtype) if v.is_floating_point() and v.dtype != own[k].dtype else v
        for k, v in sd.items()
    }
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a tensor outside the state dict (none in the registry's timm models today)
        raise TeacherWeightsError(
            f"teacher {spec.name}: {len(left)} tensor(s) are not in {source} and have no "
            f"value, e.g. {left[:3]}"
        )
    return model.eval()


# --------------------------------------------------------------------------- weights


def resolve_weights(spec: TeacherSpec, local: str | os.PathLike | None = None) -> Weights:
    """Where the weights come from: local file/dir → Hugging Face hub → clear error.

    The hub token is read by huggingface_hub from ``HF_TOKEN`` (never passed, logged or
    stored here); ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured by the library.
    """
    if spec.seed is not None and local is None:
        return Weights("builtin", None, f"builtin:{spec.name}:seed{spec.seed}")
    if local is not None:
        path = _weights_file(spec, Path(local))
        return Weights("local", str(path), f"file:{path.name}:sha256:{file_sha256(path)[:16]}")
    if spec.hf_repo is None:
        raise TeacherWeightsError(f"teacher {spec.name}: no weight source configured")
    return _download(spec)


def _weights_file(spec: TeacherSpec, p: Path) -> Path:
    if p.is_file():
        return p
    if p.is_dir():
        for name in WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        found = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + sorted(p.glob("*.pth"))
        if len(found) == 1:
            return found[0]
        raise TeacherWeightsError(
            f"teacher {spec.name}: no weight file in {p} (looked for {', '.join(WEIGHT_FILES)})"
        )
    raise TeacherWeightsError(
        f"teacher {spec.name}: teacher_weights.{spec.name} = {p} does not exist"
    )


def _download(spec: TeacherSpec) -> Weights:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    local = (
        f"download the weights and set teacher_weights.{spec.name}: "
        "/path/to/model.safetensors (or its folder) in the config"
    )
    hint = (
        f"{spec.hf_repo} is gated: accept its terms on the Hugging Face hub and export "
        f"HF_TOKEN, or {local}"
        if spec.gated
        else f"{spec.hf_repo} is public: connect to the hub once to cache it, or {local}"
    )
    last: Exception | None = None
    for filename in WEIGHT_FILES[:2]:
        try:
            path = hf_hub_download(spec.hf_repo, filename)
        # LocalEntryNotFoundError subclasses EntryNotFoundError: test it first
        except LocalEntryNotFoundError:
            raise TeacherWeightsError(
                f"teacher {spec.name}: weights for {spec.hf_repo} are not cached and the hub "
                f"cannot be reached (offline?); {hint}"
            ) from None
        except EntryNotFoundError as e:
            last = e
            continue
        except (GatedRepoError, RepositoryNotFoundError) as e:
            raise TeacherWeightsError(
                f"teacher {spec.name}: access to {spec.hf_repo} denied ({type(e).__name__}); {hint}"
            ) from None
        except Exception as e:  # network and HTTP errors
            raise TeacherWeightsError(
                f"teacher {spec.name}: could not fetch {spec.hf_repo}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; {hint}"
            ) from None
        # .../snapshots/<commit>/<file>: the commit pins the exact weights
        commit = Path(path).parent.name
        return Weights("hub", path, f"hf:{spec.hf_repo}@{commit}/{filename}")
    raise TeacherWeightsError(f"teacher {spec.name}: {spec.hf_repo} has no weight file ({last})")


def file_sha256(path: Path) -> str:
    """SHA-256 of a weight file, cached beside the user's cache by (path, size, mtime) so
    thousands of per-slide jobs do not re-hash a multi-GB checkpoint."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shazam" / "sha256"
    entry = cache / hashlib.sha256(key.encode()).hexdigest()
    if entry.is_file():
        return entry.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        from ..io import write_text_atomic

        write_text_atomic(entry, digest)
    except OSError:  # read-only home: just do not cache
        pass
    return digest


def load_state_dict(path: str | os.PathLike) -> dict:
    """Tensors from a safetensors file (memory-mapped: pages are read when first used and
    shared by every process on the node), or from a torch checkpoint loaded with
    ``weights_only=True`` (never arbitrary pickles; mapped too when its format allows).
    Common wrappers are unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "teacher"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_model(
    spec: TeacherSpec,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
) -> tuple[nn.Module, Weights]:
    """Architecture + weights. ``random_weights`` gives the real architecture with random
    weights (architecture checks). A teacher with a weight file is built on the meta device
    and adopts the file's tensors: no random initialisation, no second copy."""
    if random_weights:
        return random_architecture(spec), Weights("random", None, f"random:{spec.name}")
    w = resolve_weights(spec, weights)
    if w.path is None:  # built-in toy weights: the fixed-seed initialisation is the weights
        return build_architecture(spec), w
    t0 = time.perf_counter()
    model = empty_architecture(spec)
    # a checkpoint published in another layout (e.g. transformers) gets timm's tensor names
    sd = to_timm(spec.weights_layout, load_state_dict(w.path), model.state_dict())
    model = assign_weights(spec, model, sd, w.path)
    log.debug("teacher %s built from %s in %.2fs", spec.name, w.path, time.perf_counter() - t0)
    return model, w


# --------------------------------------------------------------------------- input views

TEXTURE_WINDOW = 15  # px of the local-contrast window (at the teacher's input size)
TEXTURE_EPS = 4.0  # grey levels added to the local SD: flat glass is not blown up to noise


def input_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """What a teacher sees of a batch of patches: float (B, 3, H, W) in 0..255, same shape out.

    ``full``: the patch itself. ``colour``: the patch's mean colour everywhere (pooling over
    the whole patch removes every spatial structure). ``texture``: luminance normalised by its
    local mean and SD (a ``TEXTURE_WINDOW`` box), mapped back to grey 128 ± 48 per SD on all
    three channels, so stain colour and brightness are gone and only structure is left.
    """
    if view == "full":
        return x
    if view == "colour":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    if view == "texture":
        g = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        k, pad = TEXTURE_WINDOW, TEXTURE_WINDOW // 2

        def local_mean(t):  # a k × k box mean, as a row pass then a column pass
            t = F.avg_pool2d(F.pad(t, (pad,) * 4, mode="reflect"), (1, k), stride=1)
            return F.avg_pool2d(t, (k, 1), stride=1)

        mu = local_mean(g)
        sd = (local_mean(g * g) - mu * mu).clamp_min(0).sqrt()
        z = (g - mu) / (sd + TEXTURE_EPS)
        return (128.0 + 48.0 * z).clamp(0, 255).expand_as(x).contiguous()
    raise ValueError(f"unknown teacher input view '{view}' (full, colour or texture)")


# --------------------------------------------------------------------------- running


class LevelExtractor(nn.Module):
    """Runs a teacher once per batch and returns every configured level.

    Hooks on ``model.blocks[low_block]`` / ``[mid_block]`` capture intermediate outputs during
    the single forward pass (the seed pipeline ran each batch twice to get them).
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module, levels=("low", "mid", "high")):
        super().__init__()
        self.spec = spec
        # convolutions run faster on channels-last tensors (oneDNN on CPUs, tensor cores)
        self.channels_last = spec.family == "cnn"
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.levels = tuple(lv for lv in levels if lv in spec.dims)
        self._captured: dict[str, torch.Tensor] = {}
        self._handles = []
        blocks = (
            [model.get_submodule(name) for name in spec.stages] if spec.stages else model.blocks
        )
        for lv, idx in (("low", spec.low_block), ("mid", spec.mid_block)):
            if lv in self.levels and idx is not None:
                self._handles.append(blocks[idx].register_forward_hook(self._hook(lv)))

    def _hook(self, level: str):
        captured = self._captured  # not self: no model <-> hook reference cycle

        def fn(_module, _inputs, output):
            captured[level] = output

        return fn

    def _pool_intermediate(self, t: torch.Tensor) -> torch.Tensor:
        if self.spec.family == "cnn":
            return t.mean(dim=(2, 3))
        return t[:, 0]  # class token

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The canonical embedding of a batch of normalised images."""
        feats = self.model.forward_features(x)
        if self.spec.embedding == "cls_mean":
            n = self.model.num_prefix_tokens
            return torch.cat([feats[:, 0], feats[:, n:].mean(dim=1)], dim=-1)
        return self.model.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._captured.clear()
        out = {"high": self.embed(x)}
        for lv in ("low", "mid"):
            if lv in self.levels:
                out[lv] = self._pool_intermediate(self._captured[lv])
        self._captured.clear()
        return {lv: out[lv] for lv in self.levels}


def check(spec: TeacherSpec, batch: int = 2, meta: bool = False) -> dict[str, list[int]]:
    """Build the real architecture with random weights (offline), run one batch, return the
    output shape of every level. ``meta``: shapes only, on the meta device (no memory, no
    arithmetic; every layer's shape logic still runs)."""
    if meta:
        model, x = empty_architecture(spec), torch.empty(batch, 3, *[spec.input_size] * 2)
        x = x.to("meta")
    else:
        model, _ = build_model(spec, random_weights=True)
        x = torch.randn(batch, 3, spec.input_size, spec.input_size)
    with torch.inference_mode():
        out = LevelExtractor(spec, model)(x)
    return {lv: list(t.shape) for lv, t in out.items()}
