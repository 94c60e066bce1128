"""The embedded demo: a seeded synthetic cohort of real pyramidal slide files.

Everything a user meets on real data is here in small: Aperio-style SVS files (JPEG tiles,
3 pyramid levels) that OpenSlide reads, scans at 40× (0.25 µm/px) and 20× (0.5 µm/px), one slide
whose only resolution metadata is the objective power, one slide with no tissue at all, cases
with two slides, and tissue that varies along two independent factors, 2 colours × 2 textures.
The classification label is their XOR, so no single factor predicts it: the toy teachers, one
of which sees colour only and the other texture only (``TeacherSpec.view``), are each at chance
alone and need fusion to learn it — the reason a multi-teacher student exists, visible on a
laptop. The survival outcome (censorship convention, 1 = censored) follows the label.

Tissue is drawn in physical units (µm), so a 40× and a 20× scan of the same seeded tissue show
the same structures at the resolution of each scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from .io import atomic_path

WIDTH_UM = 1536.0  # slide field: 1.536 mm × 1.024 mm
HEIGHT_UM = 1024.0
CLASSES = ("A", "B")

# Colour: the stain balance of the tissue (base colour; nuclei are the same colour, darker).
COLOURS = {"pink": (232, 148, 186), "purple": (178, 126, 206)}
NUCLEUS_SHADE = 0.45  # nucleus colour = base × this, for both colours
# Texture: sparse large nuclei on wavy fibres, or dense small nuclei. Both cover the same
# fraction of the tissue (π r² × density ≈ 0.10) and the fibres modulate the shade
# symmetrically, so a patch's mean colour does not tell the textures apart.
TEXTURES = {
    "sparse": dict(radius_um=4.5, per_um2=1 / 640, fibres=True),
    "dense": dict(radius_um=2.25, per_um2=1 / 160, fibres=False),
}


def xor_label(colour: str, texture: str) -> str:
    """The demo's class: A for pink-sparse and purple-dense, B for the other two cells."""
    return CLASSES[(colour == "pink") != (texture == "sparse")]


@dataclass(frozen=True)
class DemoSlide:
    slide_id: str
    case_id: str
    colour: str
    texture: str
    mpp: float  # level-0 µm/px of the scan
    mpp_in_metadata: bool = True  # False: only the objective power is written
    blank: bool = False  # no tissue at all

    @property
    def filename(self) -> str:
        return f"{self.slide_id}.svs"

    @property
    def label(self) -> str:
        return xor_label(self.colour, self.texture)


def demo_plan(
    seed: int = 0,
    n_cases: int = 32,
    n_two_slide: int = 5,
    prefix: str = "case",
    blank_case: bool = False,
) -> list[DemoSlide]:
    """The slides the demo writes, as a pure function of the seed (no I/O). Cases are named
    ``{prefix}{i:03d}``. The blank slide is an extra glass of the last case, or, with
    ``blank_case``, a case of its own (``{prefix}_blank``, labelled like the last case): a case
    with no patch at all, as an external cohort may bring."""  # fmt: skip
    if n_cases < 4:
        raise ValueError("the demo needs at least 4 cases")
    rng = np.random.default_rng(seed)
    # the 2 × 2 cells in equal numbers (as far as n_cases allows), in random order
    cells = [(c, t) for c in COLOURS for t in TEXTURES]
    order = rng.permutation([i % len(cells) for i in range(n_cases)])
    slides: list[DemoSlide] = []
    k = 0
    for i in range(n_cases):
        case = f"{prefix}{i:03d}"
        colour, texture = cells[order[i]]
        n = 2 if i < n_two_slide else 1
        for j in range(n):
            mpp = 0.25 if k % 2 == 0 else 0.5
            slides.append(DemoSlide(f"{case}_s{j + 1}", case, colour, texture, mpp))
            k += 1
    # one 20x slide that carries only the objective power (AppMag) and no MPP
    i20 = next(i for i, s in enumerate(slides) if s.mpp == 0.5)
    slides[i20] = replace(slides[i20], mpp_in_metadata=False)
    # one empty slide: an extra glass of the last case, so every case still has tissue
    last = slides[-1]
    blank = replace(last, slide_id=f"{last.case_id}_blank", mpp=0.5, blank=True)
    if blank_case:
        blank = replace(blank, slide_id=f"{prefix}_blank_s1", case_id=f"{prefix}_blank")
    slides.append(blank)
    return slides


# --------------------------------------------------------------------------- rendering


def render_tissue(
    rng: np.random.Generator, colour: str | None, texture: str | None, mpp: float
) -> np.ndarray:
    """RGB uint8 image of the demo field (``WIDTH_UM`` × ``HEIGHT_UM``) scanned at ``mpp``.

    Every structure is drawn from random numbers drawn in physical units (µm), in the same
    order whatever ``mpp`` is, so one seed gives the same tissue at 40× and at 20×; only the
    pixel noise differs, as between two scans. ``colour=None`` renders empty glass.
    """
    from PIL import Image, ImageDraw

    w = int(round(WIDTH_UM / mpp))
    h = int(round(HEIGHT_UM / mpp))

    def smooth(shape, sigma, scale):  # a low-frequency field resized to the slide
        f = ndimage.gaussian_filter(rng.normal(0, scale, size=shape), sigma).astype(np.float32)
        return np.asarray(Image.fromarray(f, mode="F").resize((w, h), Image.BILINEAR))

    glass = np.float32(243) + smooth((48, 64), 1.0, 2.0)
    planes = [glass, glass, glass]
    if colour is not None:
        base = COLOURS[colour]
        spec = TEXTURES[texture]
        # tissue shape: a smooth random field plus a central bump, thresholded
        yy, xx = np.mgrid[0:24, 0:36]
        bump = 1.2 * np.exp(-(((xx - 17.5) / 13) ** 2 + ((yy - 11.5) / 9) ** 2))
        coarse = ndimage.gaussian_filter(rng.normal(size=(24, 36)), 3.0) + bump
        field = np.asarray(
            Image.fromarray(coarse.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
        )
        tissue = field > np.quantile(coarse, 0.55)
        shade = 1 + smooth((48, 64), 1.0, 0.08)
        if spec["fibres"]:
            # wavy eosinophilic fibres: stripes 9 µm apart along a slowly varying phase
            phase = smooth((12, 16), 1.0, 3.0)
            y_um = np.arange(h, dtype=np.float32)[:, None] * mpp
            shade = shade * (1 + 0.06 * np.sin(2 * np.pi * y_um / 9.0 + phase))
        planes = [np.where(tissue, c * shade, glass) for c in base]
    img = Image.fromarray(
        np.stack([np.clip(p, 0, 255).astype(np.uint8) for p in planes], axis=2), mode="RGB"
    )
    if colour is not None:
        # nuclei: positions and sizes in µm, drawn as filled ellipses
        area = WIDTH_UM * HEIGHT_UM
        n = rng.poisson(area * spec["per_um2"])
        xs = rng.uniform(0, WIDTH_UM, n)
        ys = rng.uniform(0, HEIGHT_UM, n)
        r = spec["radius_um"] * rng.uniform(0.7, 1.3, n)
        e = rng.uniform(0.75, 1.0, n)
        jitter = rng.integers(-12, 13, size=(n, 3))
        col = np.clip(NUCLEUS_SHADE * np.array(base)[None, :] + jitter, 0, 255)
        inside = tissue[
            np.minimum((ys / mpp).astype(int), h - 1), np.minimum((xs / mpp).astype(int), w - 1)
        ]
        draw = ImageDraw.Draw(img)
        for x, y, rr, ee, c in zip(
            xs[inside] / mpp, ys[inside] / mpp, r[inside] / mpp, e[inside], col[inside], strict=True
        ):
            draw.ellipse([x - rr, y - rr * ee, x + rr, y + rr * ee], fill=tuple(int(v) for v in c))
    # scanner noise: a fixed-size noise tile repeated (cheap, and no visible period at this size)
    noise = rng.integers(-4, 5, size=(257, 263, 1), dtype=np.int16)
    reps = (h // 257 + 1, w // 263 + 1, 3)
    arr = np.asarray(img, dtype=np.int16) + np.tile(noise, reps)[:h, :w]
    return np.clip(arr, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- slide files


def write_svs(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp: float | None,
    objective_power: float | None,
    n_levels: int = 3,
    tile: int = 256,
    quality: int = 90,
) -> None:
    """Write an Aperio-style pyramidal TIFF (JPEG tiles, ×4 levels) that OpenSlide reads with
    vendor ``aperio``. ``mpp=None`` omits the MPP field (objective power only)."""
    import tifffile
    from PIL import Image

    h, w = rgb.shape[:2]
    fields = [f"{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"]
    if objective_power is not None:
        fields.append(f"AppMag = {objective_power:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    levels = [rgb]
    for _ in range(1, n_levels):
        prev = levels[-1]
        size = (max(1, prev.shape[1] // 4), max(1, prev.shape[0] // 4))
        levels.append(np.asarray(Image.fromarray(prev).resize(size, Image.BOX)))
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp) as tw:
            for i, lvl in enumerate(levels):
                desc = "Aperio Image Library v12.0.15\r\n" + (
                    "|".join(fields)
                    if i == 0
                    else f"{w}x{h} -> {lvl.shape[1]}x{lvl.shape[0]} JPEG/RGB Q={quality}"
                )
                tw.write(
                    lvl,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    description=desc,
                    metadata=None,
                )


def _write_demo_slide(out: Path, seed: int, s: DemoSlide) -> None:
    srng = np.random.default_rng([seed, _stable_hash(s.slide_id)])
    rgb = render_tissue(srng, None if s.blank else s.colour, s.texture, s.mpp)
    write_svs(
        out / "slides" / s.filename,
        rgb,
        mpp=s.mpp if s.mpp_in_metadata else None,
        objective_power=round(10 / s.mpp),
    )


def external_plan(seed: int = 1, n_cases: int = 6) -> list[DemoSlide]:
    """The demo's external cohort (another hospital's slides, from another seed): cases
    ``ext000``…, one with two slides, and a case whose only slide is blank (no patches)."""
    return demo_plan(seed, n_cases, n_two_slide=1, prefix="ext", blank_case=True)


def write_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_cases: int = 32,
    workers: int = 1,
    external: bool = False,
) -> pd.DataFrame:
    """Write the demo cohort under ``out_dir``: ``slides/*.svs``, ``slides.tsv``,
    ``labels_subtype.csv`` and ``labels_os.csv``. Returns the slide sheet. Each slide has its
    own random stream, so ``workers`` processes write the same bytes as one. ``external``: the
    external cohort of :func:`external_plan` instead."""  # fmt: skip
    out = Path(out_dir)
    plan = external_plan(seed, n_cases) if external else demo_plan(seed, n_cases)
    if workers > 1:
        import functools
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(functools.partial(_write_demo_slide, out, seed), plan))
    else:
        for s in plan:
            _write_demo_slide(out, seed, s)
    sheet = pd.DataFrame(
        {
            "slide_id": [s.slide_id for s in plan],
            "path": [f"slides/{s.filename}" for s in plan],
            "case_id": [s.case_id for s in plan],
        }
    )
    subtype, os_tab = demo_labels(plan, seed)
    for name, df, sep in (
        ("slides.tsv", sheet, "\t"),
        ("labels_subtype.csv", subtype, ","),
        ("labels_os.csv", os_tab, ","),
    ):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, sep=sep, index=False)
    return sheet


def demo_labels(plan: list[DemoSlide], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Case-level labels: the classification label is the XOR of colour and texture
    (:func:`xor_label`); survival is faster for B (about 3x the hazard) with ~25-35%
    censoring."""
    rng = np.random.default_rng(seed + 1)
    cases = pd.DataFrame(
        {"case_id": [s.case_id for s in plan], "label": [s.label for s in plan]}
    ).drop_duplicates("case_id")
    subtype = pd.DataFrame({"case_id": cases["case_id"], "label": cases["label"]})
    scale = np.where(cases["label"].to_numpy() == "B", 18.0, 54.0)
    t_event = rng.exponential(scale)
    t_cens = rng.uniform(12, 120, size=len(scale))
    # administrative censoring at t_cens, plus ~10% lost to follow-up at their event time
    censored = (t_cens < t_event) | (rng.random(len(scale)) < 0.1)
    time = np.minimum(t_cens, t_event)
    os_tab = pd.DataFrame(
        {
            "case_id": cases["case_id"],
            "survival_months": np.round(np.maximum(time, 0.5), 2),
            "censorship": censored.astype(int),
        }
    )
    return subtype, os_tab


def _stable_hash(s: str) -> int:
    import zlib

    return zlib.crc32(s.encode())


# --------------------------------------------------------------------------- tile dataset

TILE_MPP = 0.5  # the demo's ROI images are cut from fields rendered at this resolution
TILE_SIZES = ((160, 160), (224, 224), (320, 320), (192, 288))  # (height, width), cycled


# The ROI dataset's two classes differ in colour AND texture (an easy task that each toy teacher
# sees on its own), unlike the slide task, whose label is the XOR of the two.
TILE_CELLS = {"A": ("purple", "dense"), "B": ("pink", "sparse")}


@dataclass(frozen=True)
class DemoTile:
    image_id: str  # path relative to the dataset folder: {label}/{case}_r{k}.png
    case_id: str
    label: str
    size: tuple[int, int]


def demo_tiles_plan(
    seed: int = 0, n_cases: int = 16, per_case: int = 3, prefix: str = "roi_case"
) -> list[DemoTile]:
    """The ROI images the demo tile dataset holds, as a pure function of the seed (no I/O):
    ``n_cases`` cases (``{prefix}{i:03d}``) of alternating phenotype (shuffled), ``per_case``
    images each, of mixed sizes (square and not)."""
    rng = np.random.default_rng([seed, 7])
    phen = np.array([CLASSES[i % 2] for i in range(n_cases)])
    rng.shuffle(phen)
    tiles = []
    for i in range(n_cases):
        case = f"{prefix}{i:03d}"
        for k in range(per_case):
            size = TILE_SIZES[(i * per_case + k) % len(TILE_SIZES)]
            tiles.append(DemoTile(f"{phen[i]}/{case}_r{k}.png", case, str(phen[i]), size))
    return tiles


def write_demo_tiles(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_cases: int = 16,
    per_case: int = 3,
    prefix: str = "roi_case",
) -> pd.DataFrame:
    """A small ROI dataset of the two phenotypes under ``out_dir``: one subfolder per class
    (``A/``, ``B/``) of PNG images cut from tissue of a field rendered per case at
    :data:`TILE_MPP`, and ``out_dir.csv`` beside it listing ``path,label,case_id``."""
    from PIL import Image

    out = Path(out_dir)
    plan = demo_tiles_plan(seed, n_cases, per_case, prefix)
    by_case: dict[str, list[DemoTile]] = {}
    for t in plan:
        by_case.setdefault(t.case_id, []).append(t)
    for case, tiles in by_case.items():
        rng = np.random.default_rng([seed, _stable_hash(case)])
        rgb = render_tissue(rng, *TILE_CELLS[tiles[0].label], TILE_MPP)
        sat = np.asarray(Image.fromarray(rgb).convert("HSV"))[..., 1] > 40
        integral = np.pad(sat.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        for t in tiles:
            h, w = t.size
            # windows that are at least 90% tissue, read from the integral image
            frac = (
                integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
            ) / (h * w)
            ys, xs = np.nonzero(frac >= 0.9)
            j = rng.integers(len(ys))
            y, x = ys[j], xs[j]
            with atomic_path(out / t.image_id) as tmp:
                Image.fromarray(rgb[y : y + h, x : x + w]).save(tmp, format="PNG")
    table = pd.DataFrame(
        {
            "path": [f"{out.name}/{t.image_id}" for t in plan],
            "label": [t.label for t in plan],
            "case_id": [t.case_id for t in plan],
        }
    )
    with atomic_path(out.parent / f"{out.name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table
