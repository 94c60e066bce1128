"""Prediction on an external cohort at scale: ``--slides`` slides of ``--patches`` patches each
(default 12 × 15,000) at the real teachers' widths, through :func:`shazam.predict.predict_cohort`
for an ABMIL (``abmil-virchow2``, high level of one teacher) and the student (``shazam``, three
levels of two teachers), each with ``--folds`` fold models: seconds and peak memory.

Under ``--workdir``: one feature file per teacher and slide (virchow2 1280/1280/2560, uni2_h
1536 × 3, float16, as extraction writes them: 0.29 GB per slide for both teachers), a slide
sheet (one slide per case), and per model ``--folds`` fold folders of untrained, seeded weights
with a unit input standardisation (prediction costs the same whatever the weights). Each model
runs in its own process on the CPU (``--threads``), reading the features as ``--cache`` says
(``predict_cohort``'s ``cache``: ``disk``, its default, or training's ``memory``/``auto``); it
reports its seconds, the seconds per slide and fold model, and its peak RSS (``VmHWM``,
:func:`shazam.device.peak_rss`).

Last line: ``RESULT predict_disk_speedup <the student's seconds, memory / disk> x`` (with one
``--cache`` only: ``RESULT predict_seconds_per_slide_fold <the student's> s``).
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
TASK = {"name": "bench", "type": "classification", "labels": "none", "classes": ["A", "B"]}

CHILD = """
import json, sys, time
import torch
from shazam.device import peak_rss
from shazam.predict import predict_cohort
from shazam.slides import load_sheet
from shazam.tasks import TaskSpec
root, model, folds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cache = sys.argv[6]
torch.set_num_threads(threads)
spec = TaskSpec.from_json(json.dumps(json.loads(sys.argv[5])))
sheet = load_sheet(f"{root}/slides.tsv", check_files=False)
t0 = time.perf_counter()
table = predict_cohort(spec, f"{root}/models", model, folds, sheet, root, cohort="bench",
                       device="cpu", log=lambda s: None, cache=cache)
print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss": peak_rss(),
                  "rows": len(table), "predicted": int((table["note"] == "").sum())}))
"""


def write_cohort(root: Path, n_slides: int, n_patches: int, seed: int = 0) -> int:
    """Feature files of ``n_slides`` slides and the sheet; returns the features' bytes."""
    from shazam.formats import write_feature_file

    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n_patches) % 128 * 256, np.arange(n_patches) // 128 * 256], 1)
    coords = coords.astype(np.int64)
    attrs = {"patch_size": 256, "patch_level": 0, "patch_size_level0": 256, "slide_mpp": 0.5}
    blocks = {t: rng.standard_normal((4096, max(w)), dtype=np.float32).astype(np.float16)
              for t, w in WIDTHS.items()}  # fmt: skip
    total, rows = 0, ["slide_id\tpath\tcase_id"]
    for s in range(n_slides):
        sid = f"s{s:04d}"
        rows.append(f"{sid}\t{sid}.svs\tc{s:04d}")
        for t, widths in WIDTHS.items():
            path = root / "features" / t / f"{sid}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            shift = rng.integers(4096)  # each slide's rows differ
            feats = {lv: np.roll(np.resize(blocks[t][:, :c], (n_patches, c)), shift, 0)
                     for lv, c in zip(LEVELS, widths, strict=True)}  # fmt: skip
            write_feature_file(path, coords, attrs, feats, {"teacher": t}, [], coords)
            total += path.stat().st_size
    (root / "slides.tsv").write_text("\n".join(rows) + "\n")
    return total


def write_folds(root: Path, model: str, teachers: list[str], folds: int) -> None:
    """``folds`` fold folders of untrained weights (seeded per fold), unit standardisation."""
    import torch
    from safetensors.torch import save_file

    from shazam.io import write_json_atomic
    from shazam.models import registry
    from shazam.stores import Standardizer
    from shazam.training import TrainConfig

    levels = list(LEVELS) if model == "shazam" else ["high"]
    dims = {f"{t}:{lv}": WIDTHS[t][LEVELS.index(lv)] for t in teachers for lv in levels}
    shz = {"levels": levels} if model == "shazam" else None
    train = TrainConfig()
    for k in range(folds):
        torch.manual_seed(k)
        net = registry.build(model, dims, 2, teachers, train.d_model, train.dropout, shz)
        out = root / "models" / model / f"fold_{k}"
        out.mkdir(parents=True, exist_ok=True)
        scaler = Standardizer({k_: (torch.zeros(c), torch.ones(c)) for k_, c in dims.items()})
        tensors = {k_: v.contiguous() for k_, v in net.state_dict().items()}
        save_file({**tensors, **scaler.tensors()}, str(out / "model.safetensors"))
        write_json_atomic(out / "config.json", {
            "model": model, "teachers": teachers, "dims": dims, "n_out": 2, "shazam": shz,
            "task": TASK, "train": {**train.__dict__, "device": "cpu"}})  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=12)
    ap.add_argument("--patches", type=int, default=15_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/predict_bench")
    ap.add_argument("--cache", nargs="+", default=["memory", "disk"],
                    choices=("auto", "memory", "disk"),
                    help="where prediction reads the features from; both memory and disk: "
                    "their ratio is the headline")  # fmt: skip
    a = ap.parse_args(argv)
    root = Path(a.workdir)
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    size = write_cohort(root, a.slides, a.patches)
    for model, teachers in MODELS.items():
        write_folds(root, model, teachers, a.folds)
    print(f"{a.slides} slides x {a.patches:,} patches: {size / 1e9:.2f} GB of features, "
          f"written in {time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip
    res = {}
    for cache in a.cache:
        for model in MODELS:
            cmd = [sys.executable, "-c", CHILD, str(root), model, str(a.folds), str(a.threads),
                   json.dumps(TASK), cache]  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{model} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
            r = res[cache, model] = json.loads(p.stdout.strip().splitlines()[-1])
            per = r["seconds"] / (a.slides * a.folds)
            print(f"  cache {cache:6s} {model:15s}: {r['seconds']:.1f} s for {a.folds} fold "
                  f"models ({per:.3f} s per slide and fold model), peak RSS "
                  f"{r['maxrss'] / 1e9:.2f} GB, {r['predicted']}/{r['rows']} cases",
                  flush=True)  # fmt: skip
    if {"memory", "disk"} <= set(a.cache):
        ratio = res["memory", "shazam"]["seconds"] / res["disk", "shazam"]["seconds"]
        print(f"RESULT predict_disk_speedup {ratio:.2f} x")
    else:
        r = res[a.cache[-1], "shazam"]
        print(f"RESULT predict_seconds_per_slide_fold {r['seconds'] / (a.slides * a.folds):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
