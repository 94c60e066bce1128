"""Slide sheet loading and the one slide reader used by tiling, extraction and QC.

The reader wraps OpenSlide and adds what every stage needs on top of it: a microns-per-pixel
value with its provenance (resolution order: sheet override, scanner metadata, objective
power, configured default), level choice for a target resolution, and whole-level reads that
never hold level 0 in memory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .duplicates import listed_twice
from .tasks import join_errors

SLIDE_ID_PATTERN = r"[A-Za-z0-9._-]+"
_SLIDE_ID_RE = re.compile(rf"^{SLIDE_ID_PATTERN}$")
SHEET_COLUMNS = ("slide_id", "path", "case_id")

# Objective power -> MPP uses the common scanner convention 10 µm / power (20x -> 0.5 µm/px,
# 40x -> 0.25 µm/px), the same mapping TRIDENT and CLAM-derived tools assume.
MICRONS_AT_1X = 10.0


def magnification(mpp: float) -> float:
    """Objective magnification equivalent of a resolution (0.5 µm/px -> 20.0)."""
    return round(MICRONS_AT_1X / mpp, 3)


class SheetError(ValueError):
    """A problem in a sample sheet; the message names the file, the row and the column."""


class BadSlideError(RuntimeError):
    """A slide that cannot be used; the message names the slide id, its path and the reason."""

    def __init__(self, slide_id: str, path: str | os.PathLike, reason: str):
        self.slide_id = slide_id
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"slide {slide_id} ({self.path}): {reason}")


# --------------------------------------------------------------------------- sample sheet


def read_table(path: str | os.PathLike):
    """Read a CSV or TSV (chosen by extension; ``.tsv``/``.txt`` are tab separated) as strings."""
    import pandas as pd  # imported here: per-slide jobs never need it

    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)


def load_sheet(path: str | os.PathLike, check_files: bool = True):
    """Load and validate the slide sheet (DESIGN §3.1).

    Returns a frame indexed by nothing special with columns ``slide_id``, ``path`` (resolved
    against the sheet's folder when relative), ``case_id`` and ``mpp`` (float or NaN).
    Every problem found is reported at once, each naming the sheet, the line and the column.
    """
    path = Path(path)
    if not path.exists():
        raise SheetError(f"slide sheet {path}: file not found")
    df = read_table(path)
    errors: list[str] = []
    missing = [c for c in SHEET_COLUMNS if c not in df.columns]
    if missing:
        raise SheetError(
            f"slide sheet {path}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(df.columns) or 'none'} (required: {', '.join(SHEET_COLUMNS)})"
        )
    if df.empty:
        raise SheetError(f"slide sheet {path}: no rows")

    def where(i: int, col: str) -> str:
        # line numbers as an editor shows them: header is line 1
        return f"slide sheet {path}, line {i + 2}, column {col}"

    base = path.parent
    resolved: list[str] = []
    mpps: list[float] = []
    seen: dict[str, int] = {}
    has_mpp = "mpp" in df.columns
    stats: list[os.stat_result | None] = []
    for i, row in df.iterrows():
        full, mpp, st = _check_row(i, row, base, has_mpp, check_files, seen, where, errors)
        resolved.append(full)
        mpps.append(mpp)
        stats.append(st)
    sids, cases = list(df["slide_id"].str.strip()), list(df["case_id"].str.strip())
    errors += listed_twice(sids, cases, resolved, stats, check_files, where)
    if errors:
        raise SheetError(join_errors(errors, f"slide sheet {path}"))
    import pandas as pd

    out = pd.DataFrame(
        {
            "slide_id": df["slide_id"].str.strip(),
            "path": resolved,
            "case_id": df["case_id"].str.strip(),
            "mpp": mpps,
        }
    )
    return out


def _check_row(i, row, base: Path, has_mpp: bool, check_files: bool, seen: dict, where, errors):
    """(resolved path, MPP or NaN, the file's stat or None) of one sheet row; its problems are
    appended to ``errors``."""
    sid = row["slide_id"].strip()
    if not sid:
        errors.append(f"{where(i, 'slide_id')}: empty slide id")
    elif not _SLIDE_ID_RE.match(sid):
        errors.append(
            f"{where(i, 'slide_id')}: '{sid}' has characters outside [A-Za-z0-9._-]; "
            "rename the slide id (the file name may stay as it is)"
        )
    elif sid in seen:
        first = seen[sid] + 2
        errors.append(f"{where(i, 'slide_id')}: duplicate slide id '{sid}' (see line {first})")
    else:
        seen[sid] = i
    if not row["case_id"].strip():
        errors.append(f"{where(i, 'case_id')}: empty case id for slide '{sid}'")
    p = row["path"].strip()
    st = None
    if not p:
        errors.append(f"{where(i, 'path')}: empty path for slide '{sid}'")
        full_s = ""
    else:
        full = Path(os.path.expanduser(p))
        if not full.is_absolute():
            full = base / full
        full_s = os.path.normpath(full)
        if check_files:
            try:
                st = os.stat(full_s)
            except OSError:
                errors.append(f"{where(i, 'path')}: file not found for slide '{sid}': {full_s}")
    mpp = math.nan
    if has_mpp and row["mpp"].strip():
        try:
            mpp = float(row["mpp"])
        except ValueError:
            mpp = -1.0
        if not (mpp > 0 and math.isfinite(mpp)):
            errors.append(
                f"{where(i, 'mpp')}: '{row['mpp']}' is not a positive number "
                "(µm per pixel at level 0; leave empty to use the slide's metadata)"
            )
            mpp = math.nan
    return full_s, mpp, st


def sheet_frame(slide_id=(), path=(), case_id=()):
    """A slide sheet as :func:`load_sheet` returns it, from columns, with every MPP unknown
    (the demo's plan before its files exist; no sheet at all for tile-only configs)."""
    import pandas as pd

    return pd.DataFrame(
        {
            "slide_id": list(slide_id),
            "path": list(path),
            "case_id": list(case_id),
            "mpp": [math.nan] * len(slide_id),
        }
    ).astype({"mpp": float})


# --------------------------------------------------------------------------- MPP resolution


@dataclass(frozen=True)
class MPP:
    value: float
    source: str  # override | metadata | objective_power | default


def describe_mpp_source(mpp: MPP, properties: Mapping[str, str] | None = None) -> str:
    """Where an MPP came from, in words, for messages ('the slide sheet's `mpp` column', ...)."""
    props = properties or {}
    if mpp.source == "override":
        return "the slide sheet's `mpp` column"
    if mpp.source == "metadata":
        return "the slide's metadata (openslide.mpp-x/mpp-y)"
    if mpp.source == "objective_power":
        power = props.get("openslide.objective-power", "?")
        return f"the slide's objective power ({power}×, at {MICRONS_AT_1X:g} µm / power)"
    if mpp.source == "default":
        return "tiling.default_mpp"
    return mpp.source


def mpp_override_hint(mpp: MPP) -> str:
    """What to do about a wrong MPP: the sheet's `mpp` column overrides every other source."""
    if mpp.source == "override":
        return "correct this slide's value in the slide sheet's `mpp` column"
    return (
        "if the file is a real scan, give its level-0 µm/px in the slide sheet's `mpp` column, "
        "which overrides this value"
    )


def resolve_mpp(
    properties: Mapping[str, str],
    override: float | None = None,
    default: float | None = None,
) -> MPP:
    """Level-0 microns per pixel, in order: sheet override, metadata, objective power, default.

    Raises ``ValueError`` (with what to do) when none of them is available.
    """
    if override is not None and not (isinstance(override, float) and math.isnan(override)):
        if not override > 0:
            raise ValueError(f"mpp override must be positive, got {override}")
        return MPP(float(override), "override")
    xs = [_positive(properties.get(k)) for k in ("openslide.mpp-x", "openslide.mpp-y")]
    xs = [x for x in xs if x is not None]
    if xs:
        return MPP(float(np.mean(xs)), "metadata")
    power = _positive(properties.get("openslide.objective-power"))
    if power is not None:
        return MPP(MICRONS_AT_1X / power, "objective_power")
    if default is not None:
        if not default > 0:
            raise ValueError(f"tiling.default_mpp must be positive, got {default}")
        return MPP(float(default), "default")
    raise ValueError(
        "no resolution metadata (neither MPP nor objective power); add an `mpp` column to the "
        "slide sheet or set tiling.default_mpp"
    )


def _positive(v) -> float | None:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x > 0 and math.isfinite(x) else None


# --------------------------------------------------------------------------- slide reader


def best_level(level_mpps: list[float], target_mpp: float, tolerance: float = 0.02) -> int:
    """The coarsest level that is at least as fine as ``target_mpp`` (never upsample when a
    finer level exists). When even level 0 is coarser, level 0 is returned."""
    best = 0
    for i, m in enumerate(level_mpps):
        if m <= target_mpp * (1 + tolerance):
            best = i
    return best


class Slide:
    """An OpenSlide handle with a resolved MPP. Open errors become :class:`BadSlideError`."""

    def __init__(
        self,
        slide_id: str,
        path: str | os.PathLike,
        mpp_override: float | None = None,
        default_mpp: float | None = None,
    ):
        import openslide  # imported here so sheet-only users do not load the C library

        self.slide_id = slide_id
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise BadSlideError(slide_id, self.path, "file not found")
        try:
            self._os = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise BadSlideError(
                slide_id, self.path, "cannot open: not a format OpenSlide can read"
            ) from None
        except (openslide.OpenSlideError, OSError) as e:
            raise BadSlideError(slide_id, self.path, f"cannot open: {e}") from None
        try:
            self.mpp = resolve_mpp(self._os.properties, mpp_override, default_mpp)
        except ValueError as e:
            self.close()
            raise BadSlideError(slide_id, self.path, str(e)) from None

    # -- metadata
    @property
    def properties(self) -> Mapping[str, str]:
        return self._os.properties

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._os.dimensions

    @property
    def level_count(self) -> int:
        return self._os.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._os.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._os.level_downsamples

    @property
    def level_mpps(self) -> list[float]:
        return [self.mpp.value * d for d in self.level_downsamples]

    @property
    def vendor(self) -> str:
        return self._os.properties.get("openslide.vendor", "unknown")

    def best_level(self, target_mpp: float) -> int:
        return best_level(self.level_mpps, target_mpp)

    # -- pixels
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """RGB uint8 array (H, W, 3); transparent pixels (outside the scanned area) are white."""
        try:
            im = self._os.read_region(location, level, size)
        except Exception as e:  # OpenSlideError on corrupt or truncated tiles
            raise BadSlideError(
                self.slide_id,
                self.path,
                f"cannot read region at {location} level {level}: {e}",
            ) from None
        return rgba_to_rgb(np.asarray(im))

    def read_level_downsampled(
        self, level: int, factor: int, max_strip_pixels: int = 1 << 24
    ) -> np.ndarray:
        """Read a whole level reduced by an integer ``factor`` (box mean), strip by strip.

        Each strip holds at most ``max_strip_pixels`` pixels of the level, so memory stays
        bounded by one strip plus the output and a slide without a usable pyramid is never
        held whole at full resolution.
        """
        from PIL import Image

        w, h = self.level_dimensions[level]
        if factor <= 1:
            return self.read_region((0, 0), level, (w, h))
        ow, oh = w // factor, h // factor
        out = np.empty((oh, ow, 3), dtype=np.uint8)
        ds = self.level_downsamples[level]
        if ow == 0 or oh == 0:  # smaller than one output pixel (tiling calls it too_small)
            return out
        rows = max(1, max_strip_pixels // (ow * factor * factor))  # output rows per strip
        for oy in range(0, oh, rows):
            n = min(rows, oh - oy)
            strip = self.read_region(
                (0, int(round(oy * factor * ds))), level, (ow * factor, n * factor)
            )
            out[oy : oy + n] = np.asarray(Image.fromarray(strip).reduce(factor))
        return out

    def close(self) -> None:
        if getattr(self, "_os", None) is not None:
            self._os.close()
            self._os = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rgba_to_rgb(a: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's premultiplied RGBA onto white: transparent means 'not scanned'."""
    if a.ndim == 3 and a.shape[2] == 4:
        alpha = a[..., 3]
        if alpha.min() == 255:  # the common case: fully opaque
            return np.ascontiguousarray(a[..., :3])
        rgb = a[..., :3].astype(np.uint16) + (255 - alpha[..., None].astype(np.uint16))
        return np.minimum(rgb, 255).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


# --------------------------------------------------------------------------- fast JPEG tiles


class JpegTiledLevel:
    """Direct decoder for one JPEG-compressed, tiled TIFF page (Aperio SVS, generic TIFF).

    Extraction reads every patch once, so OpenSlide's per-call overhead (cache, ARGB
    conversion, Python wrapping) costs more than the JPEG decode itself. This reader fetches
    the tile bytes with ``pread`` and decodes them with Pillow's libjpeg(-turbo). It is only
    used after :meth:`open` verified, on a real tile, that it reproduces OpenSlide's pixels
    (colour space included); otherwise callers keep using OpenSlide.
    """

    def __init__(self, path: str, page, cache_tiles: int = 64):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.width, self.height = page.imagewidth, page.imagelength
        self.tw, self.th = page.tilewidth, page.tilelength
        self.across = -(-self.width // self.tw)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        tables = page.jpegtables
        self.tables = bytes(tables)[:-2] if tables else None  # without EOI
        self._cache: dict[int, np.ndarray] = {}
        self._cache_tiles = cache_tiles

    @classmethod
    def open(cls, path: str, level_dims: tuple[int, int], osr=None, level: int = 0):
        """A reader for the page of size ``level_dims``, or None when there is no such
        JPEG tiled page or its decode does not match OpenSlide's."""
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = next(
                    (
                        p
                        for p in tf.pages
                        if p.is_tiled
                        and (p.imagewidth, p.imagelength) == tuple(level_dims)
                        and p.compression == 7
                        and p.samplesperpixel == 3
                        and p.bitspersample == 8
                        and p.planarconfig == 1
                    ),
                    None,
                )
                if page is None:
                    return None
                reader = cls(path, page)
        except Exception:
            return None
        if osr is not None and not reader._matches(osr, level):
            reader.close()
            return None
        return reader

    def _matches(self, osr, level: int) -> bool:
        # compare a full tile near the centre with OpenSlide's rendering of it
        i = int(np.argmax(self.counts))  # the busiest tile: tissue, not blank glass
        tx, ty = i % self.across, i // self.across
        x, y = tx * self.tw, ty * self.th
        w, h = min(self.tw, self.width - x), min(self.th, self.height - y)
        ds = osr.level_downsamples[level]
        try:
            ref = rgba_to_rgb(
                np.asarray(osr.read_region((int(x * ds), int(y * ds)), level, (w, h)))
            )
            mine = self.read(x, y, w, h)
        except Exception:
            return False
        return float(np.abs(ref.astype(np.int16) - mine.astype(np.int16)).mean()) < 1.0

    def can_scale(self, x: int, y: int, w: int, h: int, scale: int) -> bool:
        """Whether :meth:`read` can decode this region at 1/scale exactly (libjpeg scales
        by 1/2, 1/4, 1/8 inside the IDCT, aligned to whole tiles)."""
        return scale in (1, 2, 4, 8) and all(v % scale == 0 for v in (x, y, w, h, self.tw, self.th))

    def _tile(self, i: int, scale: int) -> np.ndarray | None:
        t = self._cache.get((i, scale))
        if t is not None:
            return t
        n = int(self.counts[i])
        if n == 0:
            return None  # sparse tile: not scanned
        data = os.pread(self.fd, n, int(self.offsets[i]))
        buf = self.tables + data[2:] if self.tables else data
        import io

        from PIL import Image

        im = Image.open(io.BytesIO(buf))
        if scale > 1:
            im.draft("RGB", (self.tw // scale, self.th // scale))
        t = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        if t.shape[:2] != (self.th // scale, self.tw // scale):
            raise ValueError(f"tile {i} decoded to {t.shape[:2]}, expected 1/{scale} scale")
        if len(self._cache) >= self._cache_tiles:
            self._cache.pop(next(iter(self._cache)))
        self._cache[(i, scale)] = t
        return t

    def read(self, x: int, y: int, w: int, h: int, scale: int = 1) -> np.ndarray:
        """RGB uint8 of the region at (x, y), size (w, h) in this level's pixels, decoded at
        1/``scale`` (see :meth:`can_scale`): shape (h/scale, w/scale, 3); white outside."""
        f = scale
        out = np.full((h // f, w // f, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // self.th, (y1 - 1) // self.th + 1):
            for tx in range(x0 // self.tw, (x1 - 1) // self.tw + 1):
                tile = self._tile(ty * self.across + tx, f)
                if tile is None:
                    continue
                ox, oy = tx * self.tw, ty * self.th
                sx0, sy0 = max(x0, ox), max(y0, oy)
                sx1, sy1 = min(x1, ox + self.tw), min(y1, oy + self.th)
                out[(sy0 - y) // f : (sy1 - y) // f, (sx0 - x) // f : (sx1 - x) // f] = tile[
                    (sy0 - oy) // f : (sy1 - oy) // f, (sx0 - ox) // f : (sx1 - ox) // f
                ]
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
