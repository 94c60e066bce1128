"""Tiling benchmark: wall time and peak memory of ``shazam.tiling.tile_slide`` on a full-size slide.

The bar (DESIGN issue): a 32768 × 24576 px 40× slide (0.25 µm/px), tiled at 256 px / 0.5 µm/px,
in at most 1.5 s wall and 500 MB peak RSS (CLAM's tiler needs about 0.9 s on a slide of this
size).

What it does:

1. writes two synthetic Aperio-style SVS files of that size (JPEG tiles, pyramid at downsample
   1, 4, 16, 64) into a cache folder (``benchmarks/out/`` by default), reused when their
   parameters have not changed. Level 0 (2.4 GB of pixels) is never held in memory: every
   level is streamed to tifffile tile by tile, rendered from one low-resolution tissue field;
   the two slides share their tissue shape, the second with about twice the tissue area;
2. times ``tile_slide`` in-process, in one fresh Python process per slide (one warm-up call,
   then ``--repeats`` timed calls; median reported) and reads that process's peak RSS, with
   its baseline after imports so the tiling's own share is visible;
3. times the command line (``shazam tile``, whole process including imports) separately;
4. optionally (``--profile``) prints a cProfile summary of one ``tile_slide`` call.

Run: ``python benchmarks/tiling.py`` (from the repository root). The last line is
``RESULT tiling_seconds <median in-process seconds of the reference slide> s``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shazam.io import atomic_path, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- the slide

WIDTH, HEIGHT = 32768, 24576  # level 0, px
MPP = 0.25  # µm/px at level 0 (40×)
TILE = 256
QUALITY = 80
DOWNSAMPLES = (1, 4, 16, 64)
FIELD_DS = 64  # the tissue field is drawn at the coarsest level: 512 × 384 px, 16 µm/px
GENERATOR_VERSION = 1  # bump when the rendering changes, so cached slides are rewritten

# name -> target tissue fraction of the slide area; the first one is the reference
SLIDES = {"ref": 0.25, "ref_x2": 0.50}

BAR_SECONDS = 1.5
BAR_RSS_MB = 500.0
CLAM_SECONDS = 0.9

GLASS = (243.0, 243.0, 241.0)
STROMA = (232.0, 148.0, 186.0)  # eosin pink (the demo's "pink" stain colour)
NUCLEUS = (62.0, 28.0, 118.0)  # hematoxylin purple (a dark nucleus colour)
TEXTURE_PERIOD = 2048  # level-0 px; the tissue texture repeats every 512 µm


def slide_params(fraction: float, seed: int) -> dict:
    """Everything that determines a generated slide; a cached file is reused only if equal."""
    return {
        "generator_version": GENERATOR_VERSION,
        "width": WIDTH,
        "height": HEIGHT,
        "mpp": MPP,
        "tile": TILE,
        "quality": QUALITY,
        "downsamples": list(DOWNSAMPLES),
        "tissue_fraction_target": fraction,
        "seed": seed,
    }


def tissue_field(seed: int) -> np.ndarray:
    """A smooth scalar field (FIELD_DS-downsampled slide) whose upper level sets are a few large
    blobs of tissue with irregular borders; thresholding it at a quantile sets the area."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = HEIGHT // FIELD_DS, WIDTH // FIELD_DS
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w), np.float32)
    # one blob per quadrant, jittered, so the pieces stay apart on the glass
    for qx, qy in ((0.28, 0.3), (0.72, 0.3), (0.28, 0.7), (0.72, 0.7)):
        cx, cy = (qx + rng.uniform(-0.06, 0.06)) * w, (qy + rng.uniform(-0.06, 0.06)) * h
        sx, sy = rng.uniform(0.07, 0.11) * w, rng.uniform(0.07, 0.11) * h
        a = rng.uniform(-0.6, 0.6)  # rotation
        dx, dy = xx - cx, yy - cy
        u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
        field += rng.uniform(0.7, 1.0) * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), 10.0)
    # multiplicative, so the borders are irregular but no islands appear far from the blobs
    return field * (1 + 0.3 * (noise / noise.std())).astype(np.float32)


def _periodic_smooth(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.normal(size=(n, n)), sigma, mode="wrap")
    return (f / f.std()).astype(np.float32)


def textures(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Periodic level-0 tissue texture (stroma with nuclei-like dots) and glass, float32
    (P, P, 3) with P = TEXTURE_PERIOD, so every pyramid level can be a box reduction of them."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 1])
    p = TEXTURE_PERIOD
    # low-frequency shading, drawn coarse and upsampled with wrap-around
    shade = 1 + 0.06 * ndimage.zoom(
        _periodic_smooth(rng, p // 16, 3.0), 16, order=1, mode="grid-wrap", grid_mode=True
    )
    # nuclei: soft discs, 2-3.5 µm radius, about one per 400 µm², stamped with wrap-around
    alpha = np.zeros((p, p), np.float32)
    n = rng.poisson(p * p * MPP * MPP / 400)
    for x, y, r in zip(
        rng.uniform(0, p, n), rng.uniform(0, p, n), rng.uniform(2.0, 3.5, n) / MPP, strict=True
    ):
        k = int(r) + 2
        ys = np.arange(int(y) - k, int(y) + k + 1)
        xs = np.arange(int(x) - k, int(x) + k + 1)
        d = np.hypot(ys[:, None] - y, xs[None, :] - x)
        stamp = np.clip(r - d + 0.5, 0, 1).astype(np.float32)
        idx = np.ix_(ys % p, xs % p)
        alpha[idx] = np.maximum(alpha[idx], stamp)
    alpha = alpha[..., None]
    grain = rng.normal(0, 2.0, size=(p, p, 1)).astype(np.float32)  # scanner noise
    stroma = np.asarray(STROMA, np.float32) * shade[..., None]
    tissue = stroma * (1 - alpha) + np.asarray(NUCLEUS, np.float32) * alpha + grain
    glass_shade = 1 + 0.005 * _periodic_smooth(rng, p // 16, 2.0).repeat(16, 0).repeat(16, 1)
    glass = np.asarray(GLASS, np.float32) * glass_shade[..., None] + grain
    return tissue, glass


def _reduce(img: np.ndarray, d: int) -> np.ndarray:
    """Box mean by ``d`` of a periodic image, tiled so that any TILE window can be sliced."""
    n = img.shape[0] // d
    small = img.reshape(n, d, n, d, 3).mean(axis=(1, 3)) if d > 1 else img
    return np.pad(small, ((0, TILE), (0, TILE), (0, 0)), mode="wrap")


def _axis_weights(n_out: int, d: int, n_field: int):
    """Bilinear sample positions of level pixels (downsample ``d``) in the tissue field."""
    c = (np.arange(n_out, dtype=np.float64) + 0.5) * d / FIELD_DS - 0.5
    i0 = np.floor(c).astype(np.int64)
    w = (c - i0).astype(np.float32)
    return np.clip(i0, 0, n_field - 1), np.clip(i0 + 1, 0, n_field - 1), w


def level_tiles(field, thr, soft, d, tissue, glass):
    """Yield the TILE × TILE uint8 RGB tiles of pyramid level ``d``, row-major."""
    lw, lh = WIDTH // d, HEIGHT // d
    nx, ny = -(-lw // TILE), -(-lh // TILE)
    fh, fw = field.shape
    x0s, x1s, wx = _axis_weights(nx * TILE, d, fw)
    y0s, y1s, wy = _axis_weights(ny * TILE, d, fh)
    tex, gl = _reduce(tissue, d), _reduce(glass, d)
    period = tissue.shape[0] // d
    lo, hi = thr - soft, thr + soft
    for ty in range(ny):
        rs = slice(ty * TILE, (ty + 1) * TILE)
        wyc = wy[rs, None]
        band = field[y0s[rs]] * (1 - wyc) + field[y1s[rs]] * wyc  # (TILE, fw)
        for tx in range(nx):
            cs = slice(tx * TILE, (tx + 1) * TILE)
            oy, ox = (ty * TILE) % period, (tx * TILE) % period
            g = gl[oy : oy + TILE, ox : ox + TILE]
            t = tex[oy : oy + TILE, ox : ox + TILE]
            cols = band[:, x0s[cs].min() : x1s[cs].max() + 1]
            if cols.max() <= lo:
                out = g
            elif cols.min() >= hi:
                out = t
            else:
                f = band[:, x0s[cs]] * (1 - wx[cs]) + band[:, x1s[cs]] * wx[cs]
                a = np.clip((f - lo) / (hi - lo), 0, 1)[..., None]
                out = g + a * (t - g)
            yield np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_slide(path: Path, params: dict) -> None:
    """Write the synthetic SVS: Aperio description on level 0, levels as tiled JPEG pages."""
    import tifffile

    field = tissue_field(params["seed"])
    thr = float(np.quantile(field, 1 - params["tissue_fraction_target"]))
    soft = 0.02 * float(field.std())
    tissue, glass = textures(params["seed"])
    w, h = WIDTH, HEIGHT
    fields = [
        f"{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q={QUALITY}",
        f"AppMag = {round(10 / MPP):g}",
        f"MPP = {MPP:g}",
    ]
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for i, d in enumerate(DOWNSAMPLES):
                lw, lh = w // d, h // d
                desc = "Aperio Image Library v12.0.15\r\n" + (
                    "|".join(fields) if i == 0 else f"{w}x{h} -> {lw}x{lh} JPEG/RGB Q={QUALITY}"
                )
                tw.write(
                    data=level_tiles(field, thr, soft, d, tissue, glass),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": QUALITY},
                    description=desc,
                    metadata=None,
                    maxworkers=os.cpu_count(),
                    buffersize=32 * 2**20,  # tifffile buffers 512 MB of tiles by default
                )


def check_slide(path: Path) -> dict:
    """Open the file with the pipeline's reader and check it is what the benchmark claims."""
    from shazam.slides import Slide

    with Slide(path.stem, path) as s:
        info = {
            "vendor": s.vendor,
            "levels": s.level_count,
            "dimensions": list(s.dimensions),
            "downsamples": [round(x, 3) for x in s.level_downsamples],
            "mpp": s.mpp.value,
            "mpp_source": s.mpp.source,
        }
        # tissue fraction of the rendering: non-glass pixels of the coarsest level
        rgb = s.read_region((0, 0), s.level_count - 1, s.level_dimensions[-1])
    sat = rgb.max(axis=2).astype(int) - rgb.min(axis=2)
    info["tissue_fraction"] = round(float((sat > 40).mean()), 4)
    ok = (
        info["vendor"] == "aperio"
        and info["levels"] == len(DOWNSAMPLES)
        and info["dimensions"] == [WIDTH, HEIGHT]
        and info["downsamples"] == [float(d) for d in DOWNSAMPLES]
        and abs(info["mpp"] - MPP) < 1e-9
        and info["mpp_source"] == "metadata"
    )
    if not ok:
        raise RuntimeError(f"{path}: OpenSlide does not see the slide that was written: {info}")
    return info


def ensure_slide(out: Path, name: str, fraction: float, seed: int, regenerate: bool) -> dict:
    """Path and facts of one benchmark slide, generating it unless an identical one is cached."""
    path = out / f"{name}.svs"
    meta_path = out / f"{name}.json"
    params = slide_params(fraction, seed)
    cached = None
    if path.exists() and meta_path.exists() and not regenerate:
        cached = json.loads(meta_path.read_text())
    if cached is None or cached.get("params") != params:
        print(f"generating {path} ({WIDTH}x{HEIGHT}, tissue ~{fraction:.0%}) ...", flush=True)
        t0 = time.perf_counter()
        write_slide(path, params)
        seconds = time.perf_counter() - t0
        info = check_slide(path)
        cached = {"params": params, "info": info, "generation_seconds": round(seconds, 1)}
        write_json_atomic(meta_path, cached)
        print(
            f"  {seconds:.1f} s, {path.stat().st_size / 2**20:.0f} MiB, OpenSlide: "
            f"vendor {info['vendor']}, {info['levels']} levels, mpp {info['mpp']}",
            flush=True,
        )
    else:
        cached["info"] = check_slide(path)
        print(f"reusing {path} (same parameters)", flush=True)
    return {"name": name, "path": path, **cached}


# --------------------------------------------------------------------------- measurements


# Peak RSS is read as VmHWM, the high-water mark of the process's own address space.
# ru_maxrss is not used on its own because Linux carries the parent's high-water mark into a
# child across fork/exec, so a child of a big process reports at least the parent's peak. Every
# measured process is therefore started from a small launcher (LAUNCHER, plain Python, no
# numpy): its ru_maxrss for its child is then valid too and is kept as a cross-check.
LAUNCHER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "wall = time.perf_counter() - t\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
    "print(f'LAUNCHER {rc} {wall} {rss}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def launch(cmd: list[str]) -> tuple[str, float, float]:
    """Run ``cmd`` from the launcher: (stdout, wall seconds of cmd, its ru_maxrss in MB)."""
    res = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=False
    )
    last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    if res.returncode != 0 or not last.startswith("LAUNCHER "):
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    _, _, wall, rss = last.split()
    return res.stdout, float(wall), float(rss)


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _peak_rss_mb() -> float:
    return _proc_status_mb("VmHWM")


def child(slide: Path, workdir: Path, repeats: int) -> None:
    """Runs in a fresh process: tile one slide (1 warm-up + ``repeats``), print a JSON line."""
    t0 = time.perf_counter()
    import openslide  # noqa: F401  (tile_slide imports these lazily; load them before the baseline)
    from PIL import Image, ImageDraw  # noqa: F401

    from shazam.tiling import TilingParams, tile_slide

    import_seconds = time.perf_counter() - t0
    base_peak, base_cur = _peak_rss_mb(), _proc_status_mb("VmRSS")
    outs = [workdir / f"{slide.stem}.{ext}" for ext in ("h5", "json", "png")]

    def once() -> tuple[float, dict]:
        t = time.perf_counter()
        qc = tile_slide(slide.stem, slide, *outs, params=TilingParams())
        return time.perf_counter() - t, qc

    first, qc = once()
    peak_first = _peak_rss_mb()
    runs = [once() for _ in range(repeats)]
    print(
        json.dumps(
            {
                "import_seconds": import_seconds,
                "first_seconds": first,
                "seconds": [s for s, _ in runs],
                "qc_seconds": [q["seconds"] for _, q in runs],
                "n_patches": qc["n_patches"],
                "n_grid": qc["n_grid"],
                "tissue_fraction": qc["tissue_fraction"],
                "status": qc["status"],
                "rss_base_mb": base_peak,
                "rss_base_current_mb": base_cur,
                "rss_peak_first_mb": peak_first,
                "rss_peak_all_mb": _peak_rss_mb(),
                "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_child(slide: Path, workdir: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(slide), "--workdir", str(workdir)]
    cmd += ["--repeats", str(repeats)]
    out, _, ru_maxrss = launch(cmd)
    r = json.loads(out.strip().splitlines()[-1])
    r["ru_maxrss_launcher_mb"] = ru_maxrss
    return r


def shazam_executable() -> str:
    exe = Path(sys.executable).with_name("shazam")
    if exe.exists():
        return str(exe)
    import shutil

    found = shutil.which("shazam")
    if found is None:
        raise RuntimeError("the shazam command is not installed next to this Python or on PATH")
    return found


def time_cli(slide: Path, workdir: Path, repeats: int) -> dict:
    """Wall time and peak RSS of whole ``shazam tile`` processes (1 warm-up + ``repeats``)."""
    cmd = [shazam_executable(), "tile", "--slide", str(slide), "--slide-id", slide.stem]
    for flag, ext in (("--out-h5", "h5"), ("--out-qc", "json"), ("--out-thumbnail", "png")):
        cmd += [flag, str(workdir / f"cli_{slide.stem}.{ext}")]
    walls, peaks = [], []
    for _ in range(repeats + 1):
        _, wall, rss = launch(cmd)
        walls.append(wall)
        peaks.append(rss)
    return {"seconds": walls[1:], "rss_peak_mb": max(peaks)}


def profile(slide: Path, workdir: Path, top: int = 25) -> None:
    """cProfile one warm ``tile_slide`` call and print the top functions."""
    import cProfile
    import pstats

    from shazam.tiling import TilingParams, tile_slide

    outs = [workdir / f"prof_{slide.stem}.{ext}" for ext in ("h5", "json", "png")]
    tile_slide(slide.stem, slide, *outs, params=TilingParams())  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    tile_slide(slide.stem, slide, *outs, params=TilingParams())
    prof.disable()
    for key in ("cumulative", "tottime"):
        print(f"\nprofile of one tile_slide on {slide.name}, top {top} by {key}:")
        pstats.Stats(prof, stream=sys.stdout).strip_dirs().sort_stats(key).print_stats(top)


# --------------------------------------------------------------------------- report


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out", help="slide cache")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
    ap.add_argument("--regenerate", action="store_true", help="rewrite the cached slides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also cProfile one tile_slide call")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    if a.child is not None:
        child(a.child, a.workdir, a.repeats)
        return 0

    a.out.mkdir(parents=True, exist_ok=True)
    slides = [ensure_slide(a.out, n, f, a.seed, a.regenerate) for n, f in SLIDES.items()]
    results = []
    with tempfile.TemporaryDirectory(prefix="shazam-bench-") as tmp:
        workdir = Path(tmp)
        for s in slides:
            print(f"tiling {s['name']} in a fresh process ({a.repeats} repeats) ...", flush=True)
            r = run_child(s["path"], workdir, a.repeats)
            print(f"shazam tile on {s['name']} ({a.repeats} repeats) ...", flush=True)
            r["cli"] = time_cli(s["path"], workdir, a.repeats)
            r["median"] = statistics.median(r["seconds"])
            results.append(r)
        if a.profile:
            profile(slides[0]["path"], workdir)

    print(
        f"\nTiling {WIDTH}x{HEIGHT} px at {MPP} µm/px, patch 256 px at 0.5 µm/px "
        f"(TilingParams defaults); median of {a.repeats} in-process calls after 1 warm-up\n"
    )
    rows = []
    for s, r in zip(slides, results, strict=True):
        rows.append(
            [
                s["name"],
                f"{s['info']['tissue_fraction']:.1%}",
                f"{r['tissue_fraction']:.1%}",
                f"{r['n_patches']}",
                f"{r['median']:.3f}",
                f"{min(r['seconds']):.3f}",
                f"{r['first_seconds']:.3f}",
                f"{r['n_patches'] / r['median']:,.0f}",
                f"{r['rss_base_mb']:.0f}",
                f"{r['rss_peak_first_mb']:.0f}",
                f"{r['rss_peak_first_mb'] - r['rss_base_mb']:.0f}",
                f"{r['rss_peak_all_mb']:.0f}",
                f"{r['ru_maxrss_launcher_mb']:.0f}",
            ]
        )
    headers = ["slide", "tissue (render)", "tissue (mask)", "patches", "median s", "min s"]
    headers += ["1st call s", "patches/s", "RSS base MB", "RSS peak MB", "tiling +MB"]
    headers += ["peak after all MB", "ru_maxrss MB"]
    print(table(headers, rows))

    ref, big = results
    area_ratio = slides[1]["info"]["tissue_fraction"] / slides[0]["info"]["tissue_fraction"]
    patch_ratio = big["n_patches"] / ref["n_patches"]
    time_ratio = big["median"] / ref["median"]
    print(
        f"\nlinearity ({slides[1]['name']} / {slides[0]['name']}): tissue area ×{area_ratio:.2f}, "
        f"patches ×{patch_ratio:.2f}, time ×{time_ratio:.2f}"
    )

    print("\ncommand line (`shazam tile`, whole process incl. imports, median):\n")
    rows = [
        [
            s["name"],
            f"{statistics.median(r['cli']['seconds']):.3f}",
            f"{min(r['cli']['seconds']):.3f}",
            f"{r['cli']['rss_peak_mb']:.0f}",
        ]
        for s, r in zip(slides, results, strict=True)
    ]
    print(table(["slide", "median s", "min s", "RSS peak MB"], rows))

    met_t = ref["median"] <= BAR_SECONDS
    met_m = ref["rss_peak_all_mb"] <= BAR_RSS_MB
    print(
        f"\nbar: ≤ {BAR_SECONDS} s and ≤ {BAR_RSS_MB:.0f} MB peak on the reference slide "
        f"(CLAM ≈ {CLAM_SECONDS} s): time {ref['median']:.3f} s "
        f"{'met' if met_t else 'NOT met'}, peak {ref['rss_peak_all_mb']:.0f} MB "
        f"{'met' if met_m else 'NOT met'}"
    )
    write_json_atomic(
        a.out / "tiling_results.json",
        {"slides": [{k: v for k, v in s.items() if k != "path"} for s in slides], "runs": results},
    )
    print(f"RESULT tiling_seconds {ref['median']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
