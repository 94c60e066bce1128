"""Heatmaps at scale: one slide of ``--patches`` patches (default 20,000) through
:func:`shazam.heatmaps.slide_heatmap` under an ABMIL (``abmil-virchow2``) and the student
(``shazam``, default settings, three levels of two teachers): seconds and peak memory.

Under ``--workdir``: one synthetic Aperio-style slide (a grid of ``--patch-px`` px patches at
level 0, read at level 0 for the montage), feature files at the real teachers' widths
(virchow2 1280/1280/2560, uni2_h 1536 × 3, float16, as extraction writes them) and, per model,
a fold folder (``config.json`` + ``model.safetensors`` with an ``input_scaler``) of untrained
weights — scoring costs the same whatever the weights. Each model runs in its own process,
which loads the fold, scores the slide in ``--rows``-row chunks and writes the h5, the overlay,
the montage and the GeoJSON; it reports its peak RSS (``VmHWM``:
:func:`shazam.device.peak_rss`, which counts the memory-mapped feature pages it touched) and
the seconds of each step.

Last line: ``RESULT heatmap_seconds_20k <the slower model's total seconds> s``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WIDTHS = {"virchow2": (1280, 1280, 2560), "uni2_h": (1536, 1536, 1536)}
LEVELS = ("low", "mid", "high")
MODELS = {"abmil-virchow2": ["virchow2"], "shazam": ["virchow2", "uni2_h"]}

CHILD = """
import json, sys, time
import torch
from shazam.device import peak_rss
from shazam import heatmaps
root, model, rows, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
steps, t0 = {}, time.perf_counter()
fm = heatmaps.load_fold_model(f"{root}/models/{model}/fold_0")
steps["load"] = time.perf_counter() - t0
orig = {k: getattr(heatmaps, k) for k in ("score_chunks", "write_attention_h5",
                                          "draw_overlay", "draw_montage", "write_geojson")}
def timed(name, fn):
    def run(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            steps[name] = steps.get(name, 0) + time.perf_counter() - t
    return run
for k, fn in orig.items():
    setattr(heatmaps, k, timed(k, fn))
t = time.perf_counter()
hm = heatmaps.slide_heatmap(f"{root}/models/{model}/fold_0", "s0", f"{root}/out/{model}",
                            slide_path=f"{root}/s0.svs", features_root=root, geojson=True,
                            rows=rows, fold_model=fm)
steps["slide_heatmap"] = time.perf_counter() - t
print(json.dumps({"seconds": time.perf_counter() - t0, "steps": steps, "maxrss": peak_rss(),
                  "n": int(len(hm.attention)), "sum": float(hm.attention.sum()),
                  "gate": {k: v.tolist() for k, v in (hm.gate or {}).items()}}))
"""


def write_slide(root: Path, n: int, px: int, seed: int = 0) -> tuple[np.ndarray, tuple]:
    """A slide whose level-0 grid of ``px``-px patches holds ``n`` patches; their coords."""
    from shazam.demo import write_svs

    cols = int(np.ceil(np.sqrt(n * 4 / 3)))
    rows_ = int(np.ceil(n / cols))
    w, h = cols * px, rows_ * px
    rng = np.random.default_rng(seed)
    small = rng.integers(120, 230, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w]
    write_svs(root / "s0.svs", np.ascontiguousarray(img), mpp=0.5, objective_power=20)
    i = np.arange(n)
    return np.stack([i % cols * px, i // cols * px], 1).astype(np.int64), (w, h)


def write_features(root: Path, coords: np.ndarray, px: int, dims0: tuple, seed: int = 0) -> int:
    from shazam.formats import write_feature_file

    rng = np.random.default_rng(seed)
    n, total = len(coords), 0
    attrs = {"patch_size": px, "patch_level": 0, "patch_size_level0": px,
             "downsample": (1.0, 1.0), "slide_mpp": 0.5, "level0_width": dims0[0],
             "level0_height": dims0[1]}  # fmt: skip
    for t, widths in WIDTHS.items():
        path = root / "features" / t / "s0.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        block = rng.standard_normal((4096, max(widths)), dtype=np.float32).astype(np.float16)
        feats = {lv: np.resize(block[:, :c], (n, c)) + np.float16(0.01 * i)
                 for i, (lv, c) in enumerate(zip(LEVELS, widths, strict=True))}  # fmt: skip
        write_feature_file(path, coords, attrs, feats, {"teacher": t}, [], coords)
        total += path.stat().st_size
    return total


def write_fold(root: Path, model: str, teachers: list[str]) -> None:
    """A fold folder of untrained weights (seeded), with a unit input standardisation."""
    import torch
    from safetensors.torch import save_file

    from shazam.io import write_json_atomic
    from shazam.models import registry
    from shazam.stores import Standardizer

    levels = list(LEVELS) if model == "shazam" else ["high"]
    dims = {f"{t}:{lv}": WIDTHS[t][LEVELS.index(lv)] for t in teachers for lv in levels}
    torch.manual_seed(0)
    shz = {"levels": levels} if model == "shazam" else None
    net = registry.build(model, dims, 2, teachers, 128, 0.25, shz)
    out = root / "models" / model / "fold_0"
    out.mkdir(parents=True, exist_ok=True)
    scaler = Standardizer({k: (torch.zeros(c), torch.ones(c)) for k, c in dims.items()})
    save_file({**{k: v.contiguous() for k, v in net.state_dict().items()}, **scaler.tensors()},
              str(out / "model.safetensors"))  # fmt: skip
    write_json_atomic(out / "config.json", {"model": model, "teachers": teachers, "dims": dims,
                                            "n_out": 2, "shazam": shz,
                                            "train": {"dropout": 0.25}})  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=20_000)
    ap.add_argument("--patch-px", type=int, default=32, help="level-0 px of a patch")
    ap.add_argument("--rows", type=int, default=4096, help="feature rows scored at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/heatmap_bench")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    root = Path(a.workdir)
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    coords, dims0 = write_slide(root, a.patches, a.patch_px)
    size = write_features(root, coords, a.patch_px, dims0)
    for model, teachers in MODELS.items():
        write_fold(root, model, teachers)
    print(f"one slide of {a.patches:,} patches ({dims0[0]} x {dims0[1]} px), "
          f"{size / 1e9:.2f} GB of features, written in {time.perf_counter() - t:.1f} s",
          flush=True)  # fmt: skip
    res = {}
    for model in MODELS:
        p = subprocess.run([sys.executable, "-c", CHILD, str(root), model, str(a.rows),
                            str(a.threads)], capture_output=True, text=True)  # fmt: skip
        if p.returncode != 0:
            sys.exit(f"{model} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
        r = res[model] = json.loads(p.stdout.strip().splitlines()[-1])
        steps = ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items())
        print(f"  {model:15s}: {r['seconds']:.2f} s, peak RSS {r['maxrss'] / 1e9:.2f} GB, "
              f"{r['n']:,} scores summing to {r['sum']:.5f} ({steps})", flush=True)  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"patches": a.patches, "feature_bytes": size,
                                            "rows": a.rows, **res}, indent=1))  # fmt: skip
    worst = max(r["seconds"] for r in res.values())
    print(f"RESULT heatmap_seconds_{round(a.patches / 1000)}k {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
