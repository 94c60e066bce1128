"""Attention heatmaps of one slide under one trained slide model (issue 17, package level).

For a fold's model (``results/models/{task}/{model}/fold_{k}/``: ``config.json`` and
``model.safetensors`` with its ``input_scaler.*``) and one slide's feature files:

* every patch's **attention score**, aligned with the patch coordinates, in an h5
  (:func:`write_attention_h5`): ``coords`` (N, 2) level-0 pixels with the patch geometry in its
  attrs, ``attention`` (N,) float32, and the file's attrs naming the model, fold, slide, teachers
  and levels. The score, per model:

  - single-teacher ABMIL and early fusion (``concat``): the gated-attention softmax weights over
    the slide's patches (they sum to 1);
  - the student: each teacher's and level's own gated-attention softmax (``teacher_attention/
    {teacher}:{level}``, each sums to 1), the slide's **gate weights** per level (``gate``
    (levels, teachers), each row sums to 1), and the combined score in ``attention``: the
    gate-weighted mean of the teachers' attention at the top level,
    ``Σ_t gate[top, t] · attention[t, top]`` — a convex combination, so it sums to 1 too. (The
    gate scales each teacher's slide token before the student's self-attention; this mixes
    the teachers' patch weights in the proportion the gate gives their tokens. It is a
    summary, not an exact attribution through the self-attention blocks.)

* a PNG overlay on the slide thumbnail, in the frame and scale of tiling's QC thumbnail
  (``results/qc/tiling/{slide}.png``: the same image, at most 1,024 px on its longer side, at
  the top-left of the PNG), with a colour bar of the attention × N (1 = uniform attention);
* a montage PNG of the top-k and bottom-k patches, each read from the slide at the patch's own
  level and size (the patch file's ``patch_level`` / ``patch_size``), labelled with its score;
* optionally a GeoJSON FeatureCollection of the patch squares (level-0 pixels) with the score,
  which QuPath opens (``objectType`` detection, the score as a measurement).

Memory is bounded whatever the bag: the features are read ``rows`` rows at a time
(:meth:`FeatureStore.bag_chunks`) and pooled by the online softmax
(:class:`~shazam.models.abmil.PoolStream`), which keeps N float32 scores per teacher and level,
not the (N, d) activations.

:func:`load_fold_model` is :mod:`shazam.predict`'s loader (a fold's network, weights and input
standardisation), the one that prediction on a new cohort uses.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from . import __version__, layout
from .io import atomic_path, write_text_atomic
from .predict import FoldModel
from .predict import load_fold_model as _load_fold_model

SCORE_ROWS = 4096  # feature rows per scoring chunk


# --------------------------------------------------------------------------- a fold's model


def load_fold_model(fold_dir: str | os.PathLike, device="cpu") -> FoldModel:
    """A fold's slide model (:func:`shazam.predict.load_fold_model`: its network, weights and
    input standardisation from ``config.json`` and ``model.safetensors``), on ``device``."""
    fm = _load_fold_model(fold_dir, device)
    if fm.spec.family != "slide":
        raise ValueError(f"{fold_dir}: heatmaps are for slide models, not {fm.name}")
    fm.model.to(device)
    return fm


# --------------------------------------------------------------------------- one slide's bag


def slide_bag(fm: FoldModel, slide_id: str, features_root=layout.RESULTS):
    """(the feature store of one slide as an item named ``slide_id``, standardised as in
    training; its patches' level-0 coords (N, 2) in the store's row order; the coords attrs of
    the first teacher's feature file — the patch geometry)."""
    import pandas as pd

    from .stores import FeatureStore

    sheet = pd.DataFrame({"slide_id": [slide_id], "case_id": [slide_id]})
    store = FeatureStore.for_slides(sheet, fm.teachers, [slide_id], fm.levels, features_root)
    for k, c in store.dims.items():
        want = fm.config["dims"].get(k)
        if want is not None and want != c:
            raise ValueError(f"slide {slide_id}: {k} features are {c} wide, the model's {want}")
    store.standardizer = fm.standardizer
    path = layout.at(layout.FEATURES, features_root, teacher=fm.teachers[0], slide=slide_id)
    with h5py.File(path, "r") as f:
        coords = f["coords"][:].astype(np.int64)
        attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
    parts = store.items[slide_id]
    if parts:
        rows = parts[0][2][0]
        if isinstance(rows, np.ndarray):  # the patches every teacher has
            coords = coords[rows]
    else:
        coords = coords[:0]
    return store, coords, attrs


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v.item() if hasattr(v, "item") else v


# --------------------------------------------------------------------------- scores


@torch.no_grad()
def score_chunks(model: torch.nn.Module, chunks) -> dict:
    """Per-patch attention of one bag given as row chunks ({key: (n, C)}, consumed once).

    Returns ``logits`` (n_out,), ``attention`` (N,) — the model's score, for the student the
    combined one (module docstring) — and for the student also ``per_key`` {``teacher:level``:
    (N,)} and ``gate`` {level: (T,)}; arrays are float32 numpy."""
    if not hasattr(model, "gates"):  # ABMIL, ConcatABMIL: the model's own streaming pass
        out = model.forward_chunks(chunks)
        return {"logits": _np(out["logits"][0]), "attention": _np(out["attention"][0])}
    streams = [p.stream() for p in model.pool]
    for chunk in chunks:
        for i, k in enumerate(model.keys):
            streams[i].update(model.proj[i](chunk[k]))
    ends = [s.end() for s in streams]
    vecs, _ = model._levels(ends)
    fused, gates = model._fuse(vecs)
    per_key = {k: _np(a[0]) for k, (_, a) in zip(model.keys, ends, strict=True)}
    gate = {lv: _np(g[0]) for lv, g in zip(model.levels, gates, strict=True)}
    return {
        "logits": _np(model.head(fused[-1])[0]),
        "attention": combined_attention(per_key, gate, model.teachers, model.levels[-1]),
        "per_key": per_key,
        "gate": gate,
    }


def combined_attention(per_key: dict, gate: dict, teachers: list[str], level: str) -> np.ndarray:
    """The student's combined score: Σ_t gate[level][t] · attention[t:level] (sums to 1)."""
    w = gate[level]
    return sum(float(w[i]) * per_key[f"{t}:{level}"] for i, t in enumerate(teachers)).astype(
        np.float32
    )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# --------------------------------------------------------------------------- files


def write_attention_h5(path, coords, scores: dict, attrs: dict, coord_attrs: dict) -> None:
    """``coords`` + ``attention`` (+ the student's ``teacher_attention/*`` and ``gate``),
    atomically. ``attrs``: the file's (model, fold, …); ``coord_attrs``: the patch geometry."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for k, v in coord_attrs.items():
            d.attrs[k] = _attr(v)
        f.create_dataset("attention", data=np.asarray(scores["attention"], np.float32))
        if "per_key" in scores:
            g = f.create_group("teacher_attention")
            for k, a in scores["per_key"].items():
                ds = g.create_dataset(k, data=a)
                ds.attrs["teacher"], ds.attrs["level"] = k.split(":")
            levels = list(scores["gate"])
            gd = f.create_dataset("gate", data=np.stack([scores["gate"][lv] for lv in levels]))
            gd.attrs["levels"], gd.attrs["teachers"] = _attr(levels), _attr(attrs["teachers"])
        for k, v in attrs.items():
            f.attrs[k] = _attr(v)


def _attr(v):
    """An h5 attribute value: None as "none", a list of strings as variable-length strings."""
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        return np.asarray(v, dtype=h5py.string_dtype())
    return np.asarray(v) if isinstance(v, (list, tuple)) else v


def read_attention_h5(path) -> dict:
    """The arrays and attrs of an attention h5 (``gate`` as {level: (T,)})."""
    with h5py.File(path, "r") as f:
        out = {"coords": f["coords"][:], "attention": f["attention"][:],
               "attrs": {k: _plain(v) for k, v in f.attrs.items()},
               "coord_attrs": {k: _plain(v) for k, v in f["coords"].attrs.items()}}  # fmt: skip
        if "gate" in f:
            levels = [_plain(x) for x in f["gate"].attrs["levels"]]
            out["gate"] = dict(zip(levels, f["gate"][:], strict=True))
            out["per_key"] = {k: v[:] for k, v in f["teacher_attention"].items()}
    return out


def write_geojson(path, coords, size0: int, scores) -> None:
    """The patches as a GeoJSON FeatureCollection of level-0 squares with their ``score``
    (QuPath: File → Import objects; each a detection with the score as a measurement)."""
    feats = []
    for (x, y), s in zip(np.asarray(coords).tolist(), np.asarray(scores).tolist(), strict=True):
        ring = [[x, y], [x + size0, y], [x + size0, y + size0], [x, y + size0], [x, y]]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "detection", "score": s,
                                     "measurements": {"score": s}}})  # fmt: skip
    write_text_atomic(path, json.dumps({"type": "FeatureCollection", "features": feats}))


# --------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class Geometry:
    """Where a patch is read: ``size`` px at ``level``, covering ``size0`` level-0 px."""

    level: int
    size: int
    size0: int

    @classmethod
    def from_attrs(cls, attrs: dict) -> Geometry:
        ds = attrs.get("downsample", 1.0)
        ds = float(ds[0] if np.ndim(ds) else ds)
        size = int(attrs["patch_size"])
        size0 = int(attrs.get("patch_size_level0") or round(size * ds))
        return cls(int(attrs.get("patch_level", 0)), size, size0)


def thumbnail(slide):
    """The slide's overview as tiling's QC thumbnail draws it (PIL RGB, ≤ 1,024 px)."""
    from PIL import Image

    from .tiling import THUMBNAIL_MAX_SIDE, _thumbnail_rgb

    img = Image.fromarray(_thumbnail_rgb(slide, None, math.inf))
    scale = THUMBNAIL_MAX_SIDE / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR)
    return img


def heat_grid(coords, scores, size0: int, level0_dims, shape) -> np.ndarray:
    """(H, W) float image of the scores painted as patch squares (NaN: no patch; the max where
    patches overlap) in a frame of ``shape`` over the level-0 extent ``level0_dims``."""
    h, w = shape
    grid = np.full((h, w), np.nan, np.float32)
    sx, sy = w / level0_dims[0], h / level0_dims[1]
    for (x, y), s in zip(np.asarray(coords).tolist(), np.asarray(scores).tolist(), strict=True):
        x0, y0 = int(x * sx), int(y * sy)
        x1 = max(x0 + 1, int(math.ceil((x + size0) * sx)))
        y1 = max(y0 + 1, int(math.ceil((y + size0) * sy)))
        cell = grid[y0:y1, x0:x1]
        np.fmax(cell, s, out=cell)
    return grid


def draw_overlay(path, thumb, coords, scores, size0: int, level0_dims, title: str = "") -> None:
    """The heatmap over ``thumb`` (its pixels kept 1:1 at the top-left) with a colour bar of
    attention × N (1 = uniform), written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = thumb.size
    n = max(len(scores), 1)
    rel = np.asarray(scores, np.float64) * n
    grid = heat_grid(coords, rel, size0, level0_dims, (h, w))
    vmax = float(np.percentile(rel, 99.5)) if len(rel) else 1.0
    dpi, bar = 100, 120  # px right of the thumbnail for the colour bar and its labels
    top = 24 if title else 0
    fig = Figure(figsize=((w + bar) / dpi, (h + top) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    W, H = w + bar, h + top
    ax = fig.add_axes((0, 0, w / W, h / H))
    ax.imshow(np.asarray(thumb), interpolation="nearest")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="jet", alpha=0.45, vmin=0,
                   vmax=max(vmax, 1e-6), interpolation="nearest")  # fmt: skip
    ax.set_axis_off()
    cax = fig.add_axes(((w + 12) / W, 0.08, 16 / W, 0.84 * h / H))
    fig.colorbar(im, cax=cax).set_label("attention × N (1 = uniform)", fontsize=8)
    cax.tick_params(labelsize=7)
    if title:
        fig.text(4 / W, 1 - 4 / H, title, fontsize=8, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def draw_montage(path, slide, coords, scores, geom: Geometry, k: int = 8, tile: int = 160):
    """Top-k (first row) and bottom-k (second row) patches, each read at its level and size,
    shown at ``tile`` px and labelled with rank and score; PNG, atomically. Returns the rows
    (indices into ``coords``) shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    k = min(k, len(order))
    top, bottom = order[:k], order[::-1][:k]
    rows = [("top", top), ("bottom", bottom)]
    dpi = 100
    fig = Figure(figsize=(max(k, 1) * (tile + 10) / dpi, 2 * (tile + 30) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    n = max(len(scores), 1)
    for r, (what, idx) in enumerate(rows):
        for c, i in enumerate(idx):
            x, y = (int(v) for v in coords[i])
            rgb = slide.read_region((x, y), geom.level, (geom.size, geom.size))
            img = Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR)
            ax = fig.add_subplot(2, max(k, 1), r * max(k, 1) + c + 1)
            ax.imshow(np.asarray(img))
            ax.set_title(f"{what} {c + 1}: {scores[i] * n:.3g}", fontsize=7)
            ax.set_axis_off()
    fig.text(0.5, 0.005, "attention × N (1 = uniform)", ha="center", fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.04, wspace=0.05, hspace=0.25)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return np.concatenate([top, bottom])


# --------------------------------------------------------------------------- one slide


@dataclass
class Heatmap:
    """What :func:`slide_heatmap` computed and wrote."""

    slide_id: str
    coords: np.ndarray  # (N, 2) level-0
    attention: np.ndarray  # (N,) the model's score (the student's combined one)
    logits: np.ndarray
    per_key: dict | None  # the student's {teacher:level: (N,)}
    gate: dict | None  # the student's {level: (T,)}
    files: dict  # kind -> path: h5, overlay, montage, geojson


def slide_heatmap(
    fold_dir: str | os.PathLike,
    slide_id: str,
    out_dir: str | os.PathLike,
    slide_path: str | os.PathLike | None = None,
    features_root: str | os.PathLike = layout.RESULTS,
    patches_h5: str | os.PathLike | None = None,
    top_k: int = 8,
    geojson: bool = False,
    rows: int = SCORE_ROWS,
    device: str = "cpu",
    mpp: float | None = None,
    fold_model: FoldModel | None = None,
) -> Heatmap:
    """Score one slide with the model of ``fold_dir`` and write under ``out_dir``:
    ``{slide}.h5`` (always), ``{slide}.png`` and ``{slide}_montage.png`` (when ``slide_path``
    is given: the pictures read the slide), ``{slide}.geojson`` (``geojson``). The patch
    geometry comes from ``patches_h5`` (the patch file) when given, else from the feature
    file's coords attrs; ``mpp`` overrides the slide's (as the sheet's ``mpp`` column does;
    default: the tiling's ``slide_mpp`` attr). ``fold_model``: already loaded (many slides)."""
    fm = fold_model or load_fold_model(fold_dir, device)
    store, coords, attrs = slide_bag(fm, slide_id, features_root)
    if patches_h5 is not None:
        from .formats import read_patch_file

        attrs = {k: _plain(v) for k, v in read_patch_file(patches_h5)[1].items()}
    if not len(coords):
        raise ValueError(f"slide {slide_id} has no patches: no heatmap to draw")
    scores = score_chunks(fm.model, store.bag_chunks(slide_id, rows, device, torch.float32))
    out = Path(out_dir)
    files = {"h5": out / f"{slide_id}.h5"}
    meta = {"model": fm.name, "fold": fm.fold, "slide_id": slide_id, "teachers": fm.teachers,
            "levels": fm.levels, "score": _describe(fm), "logits": scores["logits"],
            "shazam_version": __version__}  # fmt: skip
    write_attention_h5(files["h5"], coords, scores, meta, attrs)
    geom = Geometry.from_attrs(attrs) if "patch_size" in attrs else None
    if geojson:
        if geom is None:
            raise ValueError(f"slide {slide_id}: no patch_size attr to draw patch squares")
        files["geojson"] = out / f"{slide_id}.geojson"
        write_geojson(files["geojson"], coords, geom.size0, scores["attention"])
    if slide_path is not None:
        if geom is None:
            raise ValueError(f"slide {slide_id}: no patch_size attr; pass the patch file")
        files.update(_pictures(out, slide_id, slide_path, coords, scores, geom, attrs, mpp,
                               top_k, title=f"{fm.name} fold {fm.fold} — {slide_id}"))  # fmt: skip
    return Heatmap(slide_id, coords, scores["attention"], scores["logits"],
                   scores.get("per_key"), scores.get("gate"), files)  # fmt: skip


def _pictures(out, slide_id, slide_path, coords, scores, geom, attrs, mpp, top_k, title):
    from .slides import Slide

    mpp = mpp if mpp is not None else attrs.get("slide_mpp")
    files = {"overlay": out / f"{slide_id}.png", "montage": out / f"{slide_id}_montage.png"}
    with Slide(slide_id, slide_path, mpp_override=mpp) as slide:
        thumb = thumbnail(slide)
        draw_overlay(files["overlay"], thumb, coords, scores["attention"], geom.size0,
                     slide.dimensions, title)  # fmt: skip
        draw_montage(files["montage"], slide, coords, scores["attention"], geom, top_k)
    return files


def _describe(fm: FoldModel) -> str:
    if fm.student:
        return (f"gate-weighted mean of the teachers' attention at the {fm.levels[-1]} level: "
                "sum_t gate[t] * attention[t]")  # fmt: skip
    return "gated-attention softmax weights over the slide's patches"
