"""What slide patches and ROI images share on the way to a teacher.

The loader is built to keep a GPU busy:
- worker processes, each with its own OpenSlide handle (opened lazily inside the worker);
- grouped reads: runs of horizontally adjacent patches (CLAM's row-major order) are read as one
  region at the patch file's pyramid level and cut into patches;
- workers return uint8 batches only (4× less to copy than float), pinned for non-blocking
  transfer; resizing to the teacher's input, centre crop and normalisation run in batch as
  tensor ops on the compute device;
- one forward pass per batch with hooks capturing every level.

:class:`PatchBatches` (slide patches) and :class:`ImageBatches` (ROI images) both yield
``(uint8 (B, S, S, 3), row indices, read errors)``; :class:`TeacherRun` holds one loaded teacher
and runs it over either (:func:`embed_batches`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..device import autocast_dtype, process_age, select_device
from ..images import WHITE, fit_image
from ..slides import JpegTiledLevel, rgba_to_rgb
from ..teachers import TeacherSpec
from .params import ExtractParams

log = logging.getLogger(__name__)


def error_reason(e: BaseException) -> str:
    """One line for a read error: the exception's first message line, prefixed with its type
    when that is not an OpenSlide or OS error (whose messages say what they are)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if name.startswith("OpenSlide") or isinstance(e, OSError):
        return msg or name
    return f"{name}: {msg}" if msg else name


# --------------------------------------------------------------------------- slide patches


def group_runs(coords: np.ndarray, step0: int, max_run: int) -> list[tuple[int, int]]:
    """Split row indices into [start, end) runs of horizontally adjacent patches (same y,
    x advancing by exactly ``step0``), each at most ``max_run`` long; order is preserved."""
    runs = []
    n = len(coords)
    i = 0
    while i < n:
        j = i + 1
        while (
            j < n
            and j - i < max_run
            and coords[j, 1] == coords[i, 1]
            and coords[j, 0] - coords[j - 1, 0] == step0
        ):
            j += 1
        runs.append((i, j))
        i = j
    return runs


@dataclass
class PatchGeometry:
    level: int
    downsample: float
    size: int  # patch side at `level`
    size0: int  # patch side at level 0
    step0: int  # grid step at level 0 (for grouping)
    target_size: int = 0  # patch side at target_mpp (0: unknown)

    @property
    def reduce(self) -> int:
        """Integer box-reduction applied in the workers: when the read level is at least 2×
        finer than the target (a 40× scan read at level 0 for 20×), patches are reduced to
        about the target size right after decoding, so less data is copied and resized."""
        if self.target_size <= 0:
            return 1
        f = self.size // self.target_size
        return f if f >= 2 and self.size % f == 0 else 1


def read_geometry(attrs: dict) -> PatchGeometry:
    """The patch geometry recorded in a patch file's ``coords`` attrs (ours or CLAM's)."""
    ds = attrs["downsample"]
    ds = float(ds[0] if np.ndim(ds) else ds)
    return PatchGeometry(
        level=int(attrs["patch_level"]),
        downsample=ds,
        size=int(attrs["patch_size"]),
        size0=int(attrs.get("patch_size_level0", round(int(attrs["patch_size"]) * ds))),
        step0=int(attrs.get("step_size_level0", attrs.get("patch_size_level0", 0)) or 0),
        target_size=int(attrs.get("target_patch_size", 0)),
    )


class PatchBatches(torch.utils.data.Dataset):
    """Item i = batch i of the patch file (rows in file order) as uint8 (B, S, S, 3), the
    row indices, and per-row read errors. Errors are returned, not raised, so a worker never
    dies on one bad tile and the caller decides (fail with the coordinate, or skip).

    ``resize_to``: when set (CPU runs), workers also resize each patch to this size with
    Pillow (antialiased bilinear, uint8), in parallel; on a GPU the batch is resized there.
    ``fast_jpeg``: decode JPEG-tiled TIFF levels directly (verified against OpenSlide).
    """

    def __init__(
        self,
        slide_path: str,
        coords: np.ndarray,
        geom: PatchGeometry,
        batch_size: int,
        max_run: int = 16,
        resize_to: int | None = None,
        fast_jpeg: bool = True,
    ):
        self.slide_path = slide_path
        self.coords = np.asarray(coords, dtype=np.int64)
        self.geom = geom
        self.batch_size = batch_size
        self.max_run = max_run
        self.resize_to = resize_to
        self.fast_jpeg = fast_jpeg
        self._osr = None  # opened lazily, once per worker process
        self._fast = None  # JpegTiledLevel | False (checked, not usable) | None (not checked)

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    @property
    def n_rows(self) -> int:
        return len(self.coords)

    def _slide(self):
        if self._osr is None:
            import openslide

            self._osr = openslide.OpenSlide(self.slide_path)
        return self._osr

    def _reopen(self):
        # an OpenSlide handle is unusable after an error; start a fresh one
        with contextlib.suppress(Exception):
            self._osr.close()
        self._osr = None
        self._fast = False  # after an error, read through OpenSlide only

    def _read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Region at level-0 (x, y), (w, h) pixels of the patch level, reduced by
        ``geom.reduce``: decoded at reduced scale when the fast path allows, else box-reduced."""
        osr = self._slide()
        g = self.geom
        f = g.reduce
        if self._fast is None:
            self._fast = (
                self.fast_jpeg
                and JpegTiledLevel.open(
                    self.slide_path, osr.level_dimensions[g.level], osr, g.level
                )
            ) or False
        if self._fast:
            lx, ly = int(round(x / g.downsample)), int(round(y / g.downsample))
            if f > 1 and self._fast.can_scale(lx, ly, w, h, f):
                return self._fast.read(lx, ly, w, h, scale=f)
            region = self._fast.read(lx, ly, w, h)
        else:
            region = rgba_to_rgb(np.asarray(osr.read_region((int(x), int(y)), g.level, (w, h))))
        if f == 1:
            return region
        from PIL import Image

        return np.asarray(Image.fromarray(region).reduce(f))  # box filter: exact field of view

    def __getitem__(self, b: int):
        g = self.geom
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, len(self.coords))
        c = self.coords[lo:hi]
        s, f = g.size, g.reduce
        rs = s // f  # patch side after reduction
        side = self.resize_to or rs
        out = np.empty((hi - lo, side, side, 3), dtype=np.uint8)
        errors: list[tuple[int, str]] = []

        def put(k: int, crop: np.ndarray) -> None:
            if self.resize_to and crop.shape[0] != side:
                from PIL import Image

                crop = np.asarray(Image.fromarray(crop).resize((side, side), Image.BILINEAR))
            out[k] = crop

        for i, j in group_runs(c, g.step0, self.max_run):
            x0, y0 = c[i]
            offs = np.rint((c[i:j, 0] - x0) / g.downsample).astype(np.int64)
            width = int(offs[-1]) + s
            roffs = np.rint(offs / f).astype(np.int64)
            try:
                strip = self._read(x0, y0, width - width % f, s)
                for k, o in enumerate(roffs):
                    put(i + k, strip[:, o : o + rs])
            except Exception:
                # fall back to one read per patch to find which patches are bad
                self._reopen()
                for k in range(i, j):
                    try:
                        put(k, self._read(c[k, 0], c[k, 1], s, s))
                    except Exception as e:  # any kind: the caller's on_bad_patch decides
                        log.debug("patch %d at level-0 %s", lo + k, tuple(c[k]), exc_info=True)
                        errors.append((lo + k, error_reason(e)))
                        out[k] = 255
                        self._reopen()
        return torch.from_numpy(out), torch.arange(lo, hi), errors


# --------------------------------------------------------------------------- ROI images


class ImageBatches(torch.utils.data.Dataset):
    """Item i = batch i of the listing as uint8 (B, side, side, 3), its row indices and read
    errors (returned, not raised, as :class:`PatchBatches` does)."""

    def __init__(self, paths: list[str], batch_size: int, side: int, fit: str, scale: float):
        self.paths, self.batch_size, self.side = list(paths), batch_size, side
        self.fit, self.scale = fit, scale

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    @property
    def n_rows(self) -> int:
        return len(self.paths)

    def __getitem__(self, b: int):
        from PIL import Image

        lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(self.paths))
        out = np.full((hi - lo, self.side, self.side, 3), WHITE, dtype=np.uint8)
        errors = []
        for k in range(lo, hi):
            try:
                with Image.open(self.paths[k]) as img:
                    out[k - lo] = fit_image(img, self.side, self.fit, self.scale)
            except Exception as e:
                errors.append((k, error_reason(e)))
        return torch.from_numpy(out), torch.arange(lo, hi), errors


# --------------------------------------------------------------------------- to the teacher


def prepare(
    batch_u8: torch.Tensor,
    input_size: int,
    resize_to: int | None,
    mean,
    std,
    device: torch.device,
    view: str = "full",
) -> torch.Tensor:
    """uint8 (B, S, S, 3) → normalised float (B, 3, input, input) on ``device``: antialiased
    bilinear resize (to ``resize_to`` then centre crop, or straight to ``input_size``), the
    teacher's input view (:func:`~shazam.teachers.build.input_view`), then mean/std."""
    # float before permuting: converting a permuted (strided) uint8 view is several times slower
    x = batch_u8.to(device, non_blocking=True).float().permute(0, 3, 1, 2)
    target = resize_to or input_size
    if x.shape[-1] != target or x.shape[-2] != target:
        x = F.interpolate(
            x, size=(target, target), mode="bilinear", antialias=True, align_corners=False
        )
    if target != input_size:
        o = (target - input_size) // 2
        x = x[..., o : o + input_size, o : o + input_size]
    if view != "full":
        from ..teachers.build import input_view

        x = input_view(x, view)
    # (x/255 - mean)/std in two in-place passes
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    sd = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    return x.sub_(m).div_(sd)


def make_loader(ds: torch.utils.data.Dataset, num_workers: int, pin_memory: bool):
    kw = {}
    if num_workers > 0:
        kw = dict(prefetch_factor=4, persistent_workers=False)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=None,  # the dataset already yields batches
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **kw,
    )


def load_extractor(spec, weights, levels, device) -> tuple:
    """(LevelExtractor on ``device``, weights identity) for a registered teacher."""
    from ..teachers.build import LevelExtractor, build_model

    model, wsrc = build_model(spec, weights)
    return LevelExtractor(spec, model, levels).to(device), wsrc.identity


_FIRST_BATCH_SEEN = False


def embed_batches(loader, ext, device, amp, feats: dict, resize_to, on_errors=None, bar=None):
    """Run a teacher over a loader of ``(uint8 (B, S, S, 3), row indices, errors)`` batches —
    slide patches or tile images alike — and write every level into ``feats[level][rows]``.
    ``on_errors(errors)`` sees each batch's read errors first (and may raise)."""
    global _FIRST_BATCH_SEEN
    spec = ext.spec
    with torch.inference_mode():
        for batch, idx, errors in loader:
            if not _FIRST_BATCH_SEEN:  # the job's set-up cost, once per process
                _FIRST_BATCH_SEEN = True
                age = process_age()
                if age is not None:
                    log.info("first batch ready %.2fs after the process started", age)
            if errors and on_errors is not None:
                on_errors(errors)
            x = prepare(batch, spec.input_size, resize_to, spec.mean, spec.std, device, spec.view)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = ext(x)
            rows = idx.numpy()
            for lv, arr in feats.items():
                arr[rows] = out[lv].float().cpu().numpy().astype(arr.dtype)
            if bar is not None:
                bar.update(len(rows))


@dataclass
class TeacherRun:
    """One teacher ready to embed: its registry spec, the levels it gives of those asked for,
    the device (and the GPU lock held for it, released on exit), the model with its weights
    identity, and the autocast dtype. A context manager."""

    spec: TeacherSpec
    params: ExtractParams
    levels: tuple[str, ...]
    device: torch.device
    lock: object | None
    ext: torch.nn.Module
    identity: str
    amp: torch.dtype | None

    @classmethod
    def open(
        cls, spec: TeacherSpec, params: ExtractParams, weights=None, extractor=None
    ) -> TeacherRun:
        """``extractor``: an already built (LevelExtractor, weights identity) to reuse."""
        levels = tuple(lv for lv in params.levels if lv in spec.dims)
        device, lock = select_device(params.device)
        if extractor is None:
            extractor = load_extractor(spec, weights, levels, device)
        ext, identity = extractor
        amp = autocast_dtype(params.precision, device, spec.precision)
        return cls(spec, params, levels, device, lock, ext, identity, amp)

    def __enter__(self) -> TeacherRun:
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.close()

    def buffers(self, n: int) -> dict[str, np.ndarray]:
        """Zeroed (n, dims) arrays, one per level, in the storage dtype."""
        dtype = np.float16 if self.params.dtype == "float16" else np.float32
        return {lv: np.zeros((n, self.spec.dims[lv]), dtype=dtype) for lv in self.levels}

    def embed(self, ds, feats: dict, resize_to, on_errors, desc: str, unit: str, progress: bool):
        """Every batch of ``ds`` (:class:`PatchBatches` or :class:`ImageBatches`) through the
        teacher into ``feats``, with a progress bar of ``ds.n_rows`` ``unit``s."""
        from tqdm import tqdm

        workers = min(self.params.num_workers, len(ds))
        loader = make_loader(ds, workers, pin_memory=self.device.type == "cuda")
        bar = tqdm(
            total=ds.n_rows, desc=desc, unit=unit, file=sys.stderr, disable=not progress,
            mininterval=5.0,
        )  # fmt: skip
        embed_batches(loader, self.ext, self.device, self.amp, feats, resize_to, on_errors, bar)
        bar.close()

    def meta(self) -> dict:
        """The feature file attrs that describe the teacher and how it ran."""
        return {
            "teacher": self.spec.name,
            "teacher_arch": self.spec.arch,
            "weights": self.identity,
            "embedding": self.spec.embedding,
            "levels": ",".join(self.levels),
            "precision": str(self.amp).replace("torch.", "") if self.amp is not None else "float32",
            "device": self.device.type,
            "dtype": self.params.dtype,
        }
