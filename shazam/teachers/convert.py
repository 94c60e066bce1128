"""Checkpoint layouts: a published state dict, renamed into the timm architecture's names.

A record's ``weights_layout`` (:data:`shazam.teachers.registry.WEIGHT_LAYOUTS`) says how its
published checkpoint names the tensors; :func:`to_timm` converts it when the weights are
loaded, before :func:`shazam.teachers.build.assign_weights` checks every key and shape.
"""

from __future__ import annotations

import math
import re

import torch

# transformers Dinov2Layer module -> timm Block module (query/key/value are fused apart)
_DINOV2_LAYER = {
    "norm1": "norm1",
    "attention.output.dense": "attn.proj",
    "layer_scale1": "ls1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale2": "ls2",
}
_DINOV2_PARAM = {"weight": "weight", "bias": "bias", "lambda1": "gamma"}
_DINOV2_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_DINOV2_DROP = ("embeddings.mask_token",)  # masked-image pre-training only
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_QKV = re.compile(r"attention\.attention\.(query|key|value)$")


def hf_dinov2_to_timm(sd: dict, target: dict | None = None) -> dict:
    """A transformers ``Dinov2Model`` state dict in timm ``VisionTransformer`` names.

    query/key/value become the fused ``attn.qkv`` (concatenated in that order, which is how
    timm splits it: ``reshape(B, N, 3, heads, head_dim)``); ``mask_token`` is dropped; LayerScale
    ``lambda1`` becomes ``gamma``. ``target`` (the architecture's own state dict, shapes only)
    lets a position embedding stored for another grid be resampled to the architecture's, as
    transformers' Dinov2Model (recent versions) does at every forward: bicubic, no antialiasing,
    in float32. Keys it does not know keep their names, so the loader reports them as
    unexpected. A state dict already in timm names (no ``embeddings.cls_token``) is returned
    as is.
    """
    if "embeddings.cls_token" not in sd:
        return sd
    out: dict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in _DINOV2_DROP:
            continue
        if k in _DINOV2_TOP:
            out[_DINOV2_TOP[k]] = v
            continue
        m = _LAYER_KEY.match(k)
        if m is None:
            out[k] = v
            continue
        i, module, param = int(m[1]), m[2], m[3]
        q = _QKV.match(module)
        if q is not None:
            qkv.setdefault((i, param), {})[q[1]] = v
        elif module in _DINOV2_LAYER:
            out[f"blocks.{i}.{_DINOV2_LAYER[module]}.{_DINOV2_PARAM[param]}"] = v
        else:
            out[k] = v
    for (i, param), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:  # incomplete: leave it for the loader
            for name, v in parts.items():
                out[f"encoder.layer.{i}.attention.attention.{name}.{param}"] = v
            continue
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    if target is not None and "pos_embed" in out and "pos_embed" in target:
        out["pos_embed"] = _resample_pos_embed(out["pos_embed"], tuple(target["pos_embed"].shape))
    return out


def _resample_pos_embed(pos: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(1, 1 + g², D) → ``shape`` = (1, 1 + G², D): the patch part resampled on a square grid
    (the class token's position is kept), as transformers' ``interpolate_pos_encoding``."""
    if tuple(pos.shape) == shape or pos.ndim != 3 or pos.shape[-1] != shape[-1]:
        return pos  # same grid, or not a shape this can fix: the loader reports it
    g, big_g = math.isqrt(pos.shape[1] - 1), math.isqrt(shape[1] - 1)
    if g * g != pos.shape[1] - 1 or big_g * big_g != shape[1] - 1:
        return pos
    cls, patch = pos[:, :1], pos[:, 1:]
    grid = patch.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(
        grid, size=(big_g, big_g), mode="bicubic", align_corners=False
    )
    patch = grid.permute(0, 2, 3, 1).reshape(1, big_g * big_g, -1).to(pos.dtype)
    return torch.cat([cls, patch], dim=1)


CONVERTERS = {"timm": None, "hf_dinov2": hf_dinov2_to_timm}


def to_timm(layout: str, sd: dict, target: dict | None = None) -> dict:
    """``sd`` (in the ``layout`` a record declares) in the timm architecture's names."""
    try:
        fn = CONVERTERS[layout]
    except KeyError:
        raise ValueError(f"unknown weights layout '{layout}' ({', '.join(CONVERTERS)})") from None
    return sd if fn is None else fn(sd, target)
