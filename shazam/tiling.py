"""Tissue segmentation and MPP-exact patch grids, written as CLAM-compatible ``.h5`` files.

Pipeline per slide (DESIGN §3.2, §8):
1. open the slide and resolve its level-0 MPP (:mod:`shazam.slides`);
2. read one low-resolution level (about ``seg_mpp`` µm/px, reduced strip by strip if the
   pyramid is too fine) — level 0 is never read whole;
3. tissue mask: HSV saturation, median blur, Otsu threshold (floored so a blank slide stays
   blank), morphological closing, then component and hole filters expressed in µm²;
4. a patch grid at ``target_mpp`` × ``patch_size`` in level-0 pixels, so a 40× scan gets
   patches twice as wide (in level-0 pixels) as a 20× scan and both cover the same tissue;
5. the tissue fraction of every grid cell from an integral image of the mask (vectorised);
6. atomic writes of the patch file, a QC record and a QC thumbnail.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import __version__
from .formats import write_patch_file
from .io import atomic_path, write_json_atomic
from .slides import (
    MPP,
    BadSlideError,
    Slide,
    describe_mpp_source,
    magnification,
    mpp_override_hint,
)


@dataclass(frozen=True)
class TilingParams:
    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: int = 0
    min_tissue_fraction: float = 0.25
    default_mpp: float | None = None
    on_bad_slide: str = "fail"  # fail | skip
    seg_mpp: float = 16.0
    blur_um: float = 48.0
    close_um: float = 64.0
    min_saturation: int = 20
    min_component_area_um2: float = 10_000.0
    max_hole_area_um2: float = 5_000.0
    # a level-0 MPP outside [min_mpp, max_mpp] is not a whole-slide scan (a 72-dpi TIFF says
    # 352.8 µm/px): such a slide is a bad slide until the sheet's `mpp` column gives its scale
    min_mpp: float = 0.05
    max_mpp: float = 10.0
    # a patch narrower than this many level-0 pixels would feed the teacher up-sampled pixels
    min_patch_px_level0: int = 32

    def __post_init__(self):
        if not 0 < self.min_mpp < self.max_mpp:
            raise ValueError(
                "tiling.min_mpp and tiling.max_mpp must satisfy 0 < min_mpp < max_mpp, got "
                f"{self.min_mpp} and {self.max_mpp}"
            )
        if self.min_patch_px_level0 < 1:
            raise ValueError(
                f"tiling.min_patch_px_level0 must be at least 1, got {self.min_patch_px_level0}"
            )
        if self.patch_size <= 0:
            raise ValueError(f"tiling.patch_size must be positive, got {self.patch_size}")
        if not 0 <= self.overlap < self.patch_size:
            raise ValueError(
                f"tiling.overlap must be in [0, patch_size), got {self.overlap} "
                f"for patch_size {self.patch_size}"
            )
        if not self.target_mpp > 0:
            raise ValueError(f"tiling.target_mpp must be positive, got {self.target_mpp}")
        if not 0 <= self.min_tissue_fraction <= 1:
            raise ValueError(
                f"tiling.min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}"
            )
        if self.on_bad_slide not in ("fail", "skip"):
            raise ValueError(f"tiling.on_bad_slide must be fail or skip, got {self.on_bad_slide}")


# --------------------------------------------------------------------------- pure geometry


def patch_geometry(
    slide_mpp: float, target_mpp: float, patch_size: int, overlap: int = 0
) -> tuple[int, int]:
    """Patch size and grid step in level-0 pixels for a patch of ``patch_size`` px at
    ``target_mpp``. Rounded to whole level-0 pixels (the physical error is < 1 level-0 px)."""
    scale = target_mpp / slide_mpp
    size0 = max(1, int(round(patch_size * scale)))
    step0 = max(1, int(round((patch_size - overlap) * scale)))
    return size0, step0


def grid_coords(width: int, height: int, size0: int, step0: int) -> np.ndarray:
    """Top-left corners (x, y), int64 (N, 2), of every full patch inside the level-0 bounds,
    row-major (y outer, x inner) like CLAM."""
    if width < size0 or height < size0:
        return np.zeros((0, 2), dtype=np.int64)
    xs = np.arange(0, width - size0 + 1, step0, dtype=np.int64)
    ys = np.arange(0, height - size0 + 1, step0, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def integral_image(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column: ii[y, x] = mask[:y, :x].sum()."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=ii[1:, 1:])
    return ii


def box_fractions(
    ii: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Mean of the mask over half-open boxes [x0, x1) × [y0, y1) in mask pixels, vectorised."""
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    x0 = np.clip(x0, 0, w)
    x1 = np.clip(x1, 0, w)
    y0 = np.clip(y0, 0, h)
    y1 = np.clip(y1, 0, h)
    area = (x1 - x0) * (y1 - y0)
    s = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return np.where(area > 0, s / np.maximum(area, 1), 0.0)


def tissue_fractions(
    mask: np.ndarray, coords: np.ndarray, size0: int, level0_dims: tuple[int, int]
) -> np.ndarray:
    """Fraction of tissue under each level-0 patch, from a mask covering the whole slide."""
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    sx = mask.shape[1] / level0_dims[0]
    sy = mask.shape[0] / level0_dims[1]
    x0 = np.floor(coords[:, 0] * sx + 0.5).astype(np.int64)
    y0 = np.floor(coords[:, 1] * sy + 0.5).astype(np.int64)
    x1 = np.maximum(np.floor((coords[:, 0] + size0) * sx + 0.5).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.floor((coords[:, 1] + size0) * sy + 0.5).astype(np.int64), y0 + 1)
    return box_fractions(integral_image(mask), x0, y0, x1, y1).astype(np.float32)


# --------------------------------------------------------------------------- segmentation


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold for uint8 data: the t maximising between-class variance of
    {v <= t} vs {v > t}."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mu_t = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 (uint8)."""
    mx = rgb.max(axis=2).astype(np.int32)
    mn = rgb.min(axis=2).astype(np.int32)
    return ((mx - mn) * 255 // np.maximum(mx, 1)).astype(np.uint8)


def _disk(radius: int) -> np.ndarray:
    r = max(0, int(radius))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def segment_tissue(rgb: np.ndarray, px_um: float, p: TilingParams) -> tuple[np.ndarray, int]:
    """Boolean tissue mask of a low-resolution RGB image whose pixels are ``px_um`` µm wide.

    Returns the mask and the saturation threshold used.
    """
    sat = saturation(rgb)
    k = max(3, int(round(p.blur_um / px_um)) | 1)
    sat = ndimage.median_filter(sat, size=k)
    # Otsu separates tissue from glass; the floor keeps it from splitting the noise of an
    # empty slide into 'tissue' and 'background'.
    thr = max(otsu_threshold(sat), p.min_saturation)
    mask = sat > thr
    r = int(round(p.close_um / px_um))
    if r > 0:
        # pad so closing does not erode tissue touching the border
        mask = ndimage.binary_closing(np.pad(mask, r), structure=_disk(r))[r:-r, r:-r]
    px_area = px_um * px_um
    lab, n = ndimage.label(mask)
    if n:
        areas = np.bincount(lab.ravel())
        keep = areas * px_area >= p.min_component_area_um2
        keep[0] = False
        mask = keep[lab]
    # fill holes (background components not touching the border) smaller than the limit
    bg_lab, nb = ndimage.label(~mask)
    if nb:
        areas = np.bincount(bg_lab.ravel())
        border = np.unique(np.concatenate([bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]]))
        fill = areas * px_area < p.max_hole_area_um2
        fill[0] = False
        fill[border] = False
        mask = mask | fill[bg_lab]
    return mask, thr


def choose_seg_level(level_mpps: list[float], seg_mpp: float) -> tuple[int, int]:
    """(level, integer reduction factor) giving pixels of about ``seg_mpp`` µm: the coarsest
    level at least that fine, reduced by block means when it is much finer."""
    level = 0
    for i, m in enumerate(level_mpps):
        if m <= seg_mpp * 1.01:
            level = i
    factor = max(1, int(math.floor(seg_mpp / level_mpps[level] + 1e-6)))
    return level, factor


# --------------------------------------------------------------------------- QC thumbnail


THUMBNAIL_MAX_SIDE = 1024


def _thumbnail_rgb(slide: Slide, seg_rgb: np.ndarray, seg_px_um: float) -> np.ndarray:
    """An RGB overview of at most about THUMBNAIL_MAX_SIDE px, read from the coarsest level
    within 2× of that resolution (so level 0 is only read when the slide has no pyramid);
    the segmentation image is reused when it is already that detailed."""
    w0, h0 = slide.dimensions
    thumb_um = max(w0, h0) * slide.mpp.value / THUMBNAIL_MAX_SIDE
    if seg_px_um <= thumb_um * 1.01:
        return seg_rgb
    level, _ = choose_seg_level(slide.level_mpps, 2 * thumb_um)
    factor = max(1, int(thumb_um // slide.level_mpps[level]))
    return slide.read_level_downsampled(level, factor)


def _draw_thumbnail(path, rgb, mask, coords, size0, level0_dims, reason: str | None = None):
    """QC picture: tissue contour in green, kept patches in blue."""
    from PIL import Image, ImageDraw

    if rgb is None:
        img = Image.new("RGB", (480, 80), (235, 235, 235))
        ImageDraw.Draw(img).text((8, 30), (reason or "no image")[:80], fill=(160, 0, 0))
    else:
        img = Image.fromarray(rgb)
        scale = THUMBNAIL_MAX_SIDE / max(img.size)
        if scale < 1:
            img = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                Image.BILINEAR,
            )
        if mask is not None and mask.any():
            m = np.asarray(Image.fromarray(mask).resize(img.size, Image.NEAREST))
            edge = m & ndimage.binary_dilation(~m, iterations=2)  # a 2-px band inside the contour
            over = np.asarray(img).copy()
            over[edge] = (0, 170, 0)
            img = Image.fromarray(over)
        sx = img.width / level0_dims[0]
        sy = img.height / level0_dims[1]
        draw = ImageDraw.Draw(img)
        for x, y in coords:
            draw.rectangle(
                [x * sx, y * sy, (x + size0) * sx - 1, (y + size0) * sy - 1],
                outline=(30, 60, 220),
            )
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


# --------------------------------------------------------------------------- one slide


def tile_slide(
    slide_id: str,
    path: str | os.PathLike,
    out_h5: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png: str | os.PathLike,
    params: TilingParams = TilingParams(),
    mpp_override: float | None = None,
    case_id: str | None = None,
) -> dict:
    """Tile one slide; write patch file, QC record and QC thumbnail. Returns the QC record.

    Every failure while opening, segmenting or tiling the slide goes through
    ``params.on_bad_slide``: with ``'fail'`` it raises :class:`BadSlideError` (nothing is
    written; an unexpected exception is its ``__cause__``, with the traceback), with ``'skip'``
    it writes a valid empty patch file and a QC record that says why (status ``skipped``, plus
    the ``traceback`` of an unexpected exception). A slide smaller than one patch (most often
    not a slide at all: a label, a macro image, a thumbnail) fails under ``'fail'`` and under
    ``'skip'`` gets a status of its own, ``too_small``, with an empty patch file.
    Errors writing the outputs are not the slide's and propagate unchanged.
    """
    t0 = time.perf_counter()
    qc: dict = {
        "slide_id": slide_id,
        "case_id": case_id,
        "path": os.fspath(path),
        "shazam_version": __version__,
        "params": asdict(params),
        "warnings": [],
    }
    stage = "opening"
    try:
        with Slide(slide_id, path, mpp_override, params.default_mpp) as slide:
            stage = "segmenting and tiling"
            result = _tile_open_slide(slide, params, qc)
    except MemoryError:
        raise  # the machine's limit, not the slide's: the job may succeed with more memory
    except Exception as e:
        bad = e if isinstance(e, BadSlideError) else _unexpected(slide_id, path, stage, e)
        if params.on_bad_slide == "fail":
            if bad is e:
                raise
            raise bad from e
        qc.update(status="skipped", reason=bad.reason, n_patches=0)
        if bad is not e:
            qc["traceback"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        attrs = _empty_attrs(slide_id, params, out_h5, bad.reason)
        write_patch_file(out_h5, np.zeros((0, 2)), np.zeros(0), attrs)
        _draw_thumbnail(out_png, None, None, [], 1, (1, 1), reason=f"skipped: {bad.reason}")
        qc["seconds"] = round(time.perf_counter() - t0, 4)
        write_json_atomic(out_json, qc)
        return qc
    coords, fractions, attrs, thumb_rgb, mask = result
    attrs.update(name=slide_id, save_path=os.fspath(Path(out_h5).parent))
    attrs["status"] = qc["status"]
    attrs["reason"] = qc.get("reason") or ""
    write_patch_file(out_h5, coords, fractions, attrs)
    if thumb_rgb is None:  # too small: no image worth drawing
        _draw_thumbnail(out_png, None, None, [], 1, (1, 1), reason=f"too small: {qc['reason']}")
    else:
        _draw_thumbnail(
            out_png,
            thumb_rgb,
            mask,
            coords,
            attrs["patch_size_level0"],
            (attrs["level0_width"], attrs["level0_height"]),
        )
    qc["seconds"] = round(time.perf_counter() - t0, 4)
    write_json_atomic(out_json, qc)
    return qc


def _unexpected(slide_id: str, path, stage: str, e: BaseException) -> BadSlideError:
    """A bad-slide error for an exception of a kind the reader does not know: its type, its
    message's first line and the innermost frame it came from, on one line."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" in {frames[-1].name} ({Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return BadSlideError(
        slide_id,
        path,
        f"unexpected error while {stage}: {type(e).__name__}"
        f"{': ' + msg if msg else ''}{where if frames else ''}",
    )


def check_scale(slide_id: str, path, mpp: MPP, size0: int, p: TilingParams, props=None) -> None:
    """Refuse (:class:`BadSlideError`) a level-0 MPP outside ``[min_mpp, max_mpp]`` or a
    patch narrower than ``min_patch_px_level0`` level-0 pixels; the message gives the value,
    where it came from, and that the sheet's ``mpp`` column overrides it."""
    src = describe_mpp_source(mpp, props)
    hint = mpp_override_hint(mpp)
    if not p.min_mpp <= mpp.value <= p.max_mpp:
        raise BadSlideError(
            slide_id,
            path,
            f"implausible scale: {mpp.value:.4g} µm/px at level 0 (from {src}) is outside "
            f"{p.min_mpp:g}–{p.max_mpp:g} µm/px (tiling.min_mpp, tiling.max_mpp), the range "
            f"of a whole-slide scan; {hint}",
        )
    if size0 < p.min_patch_px_level0:
        raise BadSlideError(
            slide_id,
            path,
            f"patch too coarse for the scan: {p.patch_size} px at {p.target_mpp:g} µm/px is "
            f"{size0} level-0 px at {mpp.value:.4g} µm/px (from {src}), under "
            f"tiling.min_patch_px_level0 = {p.min_patch_px_level0}; {hint}",
        )


def _too_small(w0: int, h0: int, mpp: float, size0: int, p: TilingParams, seg) -> str:
    """Why a slide cannot hold one patch or one segmentation pixel ('' when it can)."""
    seg_level, factor, (lw, lh), px_um = seg
    size = f"{w0} × {h0} px at level 0 ({w0 * mpp:.4g} × {h0 * mpp:.4g} µm at {mpp:.4g} µm/px)"
    if w0 < size0 or h0 < size0:
        return (
            f"slide is {size}, smaller than one patch: {p.patch_size} px at "
            f"{p.target_mpp:g} µm/px = {size0} × {size0} level-0 px ({size0 * mpp:.4g} µm)"
        )
    if lw // factor == 0 or lh // factor == 0:
        return (
            f"slide is {size}, smaller than one pixel of the tissue mask "
            f"({factor} px of level {seg_level} = {px_um:.4g} µm)"
        )
    return ""


def _tile_open_slide(slide: Slide, p: TilingParams, qc: dict):
    w0, h0 = slide.dimensions
    mpp = slide.mpp.value
    level_mpps = slide.level_mpps
    size0, step0 = patch_geometry(mpp, p.target_mpp, p.patch_size, p.overlap)
    check_scale(slide.slide_id, slide.path, slide.mpp, size0, p, slide.properties)
    # the mask must resolve a patch with a few pixels at least
    seg_mpp = min(p.seg_mpp, p.target_mpp * p.patch_size / 4)
    seg_level, factor = choose_seg_level(level_mpps, seg_mpp)
    px_um = level_mpps[seg_level] * factor
    patch_level = slide.best_level(p.target_mpp)
    ds = slide.level_downsamples[patch_level]
    if mpp > p.target_mpp * 1.02:
        qc["warnings"].append(
            f"slide is scanned at {mpp:.3f} µm/px, coarser than target {p.target_mpp} µm/px: "
            "patches will be upsampled"
        )
    geometry = dict(
        mpp=mpp,
        mpp_source=slide.mpp.source,
        vendor=slide.vendor,
        level0_width=w0,
        level0_height=h0,
        patch_size_level0=size0,
        step_level0=step0,
        patch_level=patch_level,
        seg_level=seg_level,
        seg_reduction=factor,
        seg_mpp=px_um,
    )
    lw, lh = slide.level_dimensions[patch_level]
    attrs = {
        # what CLAM's readers use
        "patch_size": int(round(size0 / ds)),
        "patch_level": int(patch_level),
        "downsample": (float(ds), float(ds)),
        "downsampled_level_dim": (int(lw), int(lh)),
        "level_dim": (int(lw), int(lh)),
        # magnification-aware readers (TRIDENT style)
        "patch_size_level0": int(size0),
        "step_size_level0": int(step0),
        "target_patch_size": int(p.patch_size),
        "target_mpp": float(p.target_mpp),
        "slide_mpp": float(mpp),
        "mpp_source": slide.mpp.source,
        "target_magnification": magnification(p.target_mpp),
        "level0_magnification": magnification(mpp),
        "overlap": int(p.overlap),
        "level0_width": int(w0),
        "level0_height": int(h0),
        "min_tissue_fraction": float(p.min_tissue_fraction),
        "seg_level": int(seg_level),
        "seg_mpp": float(px_um),
        "shazam_version": __version__,
    }
    seg = (seg_level, factor, slide.level_dimensions[seg_level], px_um)
    small = _too_small(w0, h0, mpp, size0, p, seg)
    if small:
        if p.on_bad_slide == "fail":  # most likely not a slide at all (a label, a thumbnail)
            raise BadSlideError(slide.slide_id, slide.path, f"too small to tile: {small}")
        qc.update(status="too_small", reason=small, n_patches=0, n_grid=0, **geometry)
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32), attrs, None, None

    seg_rgb = slide.read_level_downsampled(seg_level, factor)
    mask, thr = segment_tissue(seg_rgb, px_um, p)
    grid = grid_coords(w0, h0, size0, step0)
    frac_all = tissue_fractions(mask, grid, size0, (w0, h0))
    keep = frac_all >= p.min_tissue_fraction
    coords, fractions = grid[keep], frac_all[keep]
    status = "ok" if len(coords) else "no_tissue"
    qc.update(
        status=status,
        reason="" if status == "ok" else "no patch reaches tiling.min_tissue_fraction",
        n_patches=int(len(coords)),
        n_grid=int(len(grid)),
        tissue_fraction=round(float(mask.mean()), 5),
        **geometry,
        saturation_threshold=thr,
    )
    return coords, fractions, attrs, _thumbnail_rgb(slide, seg_rgb, px_um), mask


def _empty_attrs(slide_id, p: TilingParams, out_h5, reason) -> dict:
    return {
        "patch_size": int(p.patch_size),
        "patch_level": 0,
        "downsample": (1.0, 1.0),
        "downsampled_level_dim": (0, 0),
        "level_dim": (0, 0),
        "patch_size_level0": -1,
        "step_size_level0": -1,
        "target_patch_size": int(p.patch_size),
        "target_mpp": float(p.target_mpp),
        "slide_mpp": float("nan"),
        "mpp_source": "none",
        "target_magnification": magnification(p.target_mpp),
        "level0_magnification": float("nan"),
        "overlap": int(p.overlap),
        "level0_width": 0,
        "level0_height": 0,
        "min_tissue_fraction": float(p.min_tissue_fraction),
        "seg_level": -1,
        "seg_mpp": float("nan"),
        "shazam_version": __version__,
        "name": slide_id,
        "save_path": os.fspath(Path(out_h5).parent),
        "status": "skipped",
        "reason": reason,
    }


# --------------------------------------------------------------------------- cohort QC

QC_COLUMNS = [
    "slide_id",
    "case_id",
    "status",
    "reason",
    "n_patches",
    "n_grid",
    "tissue_fraction",
    "mpp",
    "mpp_source",
    "vendor",
    "level0_width",
    "level0_height",
    "patch_size_level0",
    "patch_level",
    "seg_level",
    "seg_mpp",
    "seconds",
    "warnings",
    "path",
]


def summarize_qc(json_paths: list[str | os.PathLike], out_tsv: str | os.PathLike) -> object:
    """Collect per-slide QC records into one cohort table (one row per slide)."""
    import json

    import pandas as pd

    rows = []
    for jp in json_paths:
        rec = json.loads(Path(jp).read_text())
        rec["warnings"] = "; ".join(rec.get("warnings") or [])
        rows.append({c: rec.get(c) for c in QC_COLUMNS})
    df = pd.DataFrame(rows, columns=QC_COLUMNS)
    with atomic_path(out_tsv) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return df


__all__ = [
    "TilingParams",
    "patch_geometry",
    "grid_coords",
    "integral_image",
    "box_fractions",
    "tissue_fractions",
    "otsu_threshold",
    "segment_tissue",
    "choose_seg_level",
    "tile_slide",
    "summarize_qc",
]
