"""Cohort memory: peak RSS of one ``shazam train`` process as the cohort grows, and what
reading features from disk instead of memory costs an epoch.

A synthetic cohort is written once under ``--workdir`` (reused by later runs with the same
parameters; a case's files do not depend on the cohort's size, so a smaller cohort is the first
cases of a larger one): one slide per case, feature files for ``virchow2`` (low/mid/high widths
1280/1280/2560) and ``uni2_h`` (1536 each) exactly as extraction writes them
(:func:`shazam.formats.write_feature_file`: float16, contiguous, uncompressed), ``--patches`` ±
20% patches per case with the same coords for both teachers, random features with a weak class
signal, a 2-class label file, a slide sheet and one fold file (80/10/10 train/val/test, at least
one case each: 8/1/1 at 10 cases, so that the smallest cohort already fills the default 8-bag
training batch; with 15% held out it had 6 training cases and measured a partial batch, not the
cohort).

For each size in ``--cases``, ONE ``shazam train --model shazam`` process (this Python, the
package it imports) trains one epoch with the default training settings otherwise (batch_bags
8, accumulate 8, max_patches 4096, the ``shazam`` section's defaults: all three levels), on
``--threads`` torch threads. The child reports its own peak RSS
(``VmHWM``, :func:`shazam.device.peak_rss`, at exit: that process's own address space; its
``ru_maxrss`` would include this script's peak, folded in at ``exec``) and
which ``shazam`` it imported; its wall time is taken here and its epoch time from the model's
``history.csv``. Before every run the cohort's files are read once to ``/dev/null`` (untimed),
so the page cache is warm and disk speed is not what is measured.

The training setting ``cache`` (auto | memory | disk) goes in the ``--train`` JSON (code that
does not know it ignores it: ``TrainConfig.from_dict`` keeps known keys). The smaller sizes run
with ``cache: disk``; the largest runs once per ``--cache-modes`` entry.

``--device`` (cpu | cuda | cuda:N) sets ``training.device`` (unset: the default, ``auto``: a GPU
when there is one); ``--epochs`` (default 1) trains more epochs, so that the disk and memory runs
of the largest size can be compared on what they select: with both, the selected epoch, the
validation history and the test predictions of the two runs are compared (they must agree; on a
GPU to float tolerance: cuBLAS sums in its own order). When the child used CUDA it also reports
its peak GPU memory (``torch.cuda.max_memory_allocated``/``_reserved``).

Bars: RSS(largest) / RSS(smallest) ≤ 1.25; RSS(largest) ≤ 0.5 × the largest cohort's feature
bytes (both on the ``disk`` run); epoch(disk) / epoch(memory) ≤ 1.25 at the largest size.

Run from the repository root with the venv's ``bin`` first on PATH:
``python benchmarks/cohort_memory.py [--cases 10 40] [--keep]``. Results are also written as
JSON to ``--out``. The last line is ``RESULT rss_growth <RSS(largest)/RSS(smallest)> x``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from shazam import layout
from shazam.formats import write_feature_file
from shazam.tasks import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
TEACHERS = {  # teacher: widths of (low, mid, high), as the registry's teachers give them
    "virchow2": {"low": 1280, "mid": 1280, "high": 2560},
    "uni2_h": {"low": 1536, "mid": 1536, "high": 1536},
}
CLASSES = ("neg", "pos")
JITTER = 0.2  # patches per case: uniform in [(1 - JITTER) p, (1 + JITTER) p]
SIGNAL_DIMS, SIGNAL = 16, 0.5  # class "pos" shifts these first dims of every level by SIGNAL
POOL_COL_SLACK = 256  # extra noise columns: each level reads at its own column offset
FORMAT = 1  # bump when the generated files change
BAR_GROWTH, BAR_FRACTION, BAR_CACHE = 1.25, 0.5, 1.25

# runs `shazam` in this process and reports its own peak RSS and the package it imported
CHILD = """\
import json, sys, time
t0 = time.perf_counter()
import shazam
from shazam.cli import main
from shazam.device import peak_rss
rc = 1
try:
    rc = main(sys.argv[2:]) or 0
finally:
    torch = sys.modules.get("torch")
    gpu = {}
    if torch is not None and torch.cuda.is_initialized():
        gpu = {"gpu_max_allocated": torch.cuda.max_memory_allocated(),
               "gpu_max_reserved": torch.cuda.max_memory_reserved(),
               "gpu_name": torch.cuda.get_device_name()}
    with open(sys.argv[1], "w") as f:
        json.dump({"maxrss_kb": peak_rss() // 1024,
                   "shazam_file": shazam.__file__, "rc": rc,
                   "seconds": time.perf_counter() - t0, **gpu}, f)
sys.exit(rc)
"""


# --------------------------------------------------------------------------- the cohort


def case_id(i: int) -> str:
    return f"case{i:04d}"


def label_of(i: int) -> int:
    return i % 2  # alternating: every split of consecutive cases has both classes


class Generator:
    """Cheap float16 noise: one standard-normal pool (float32 drawn in chunks, then cast);
    every case and level copies a block of it at its own row and column offsets, plus a
    per-case offset vector and the class shift."""

    def __init__(self, patches: int, seed: int):
        self.patches, self.seed = patches, seed
        self.max_n = int(np.ceil(patches * (1 + JITTER)))
        width = max(max(d.values()) for d in TEACHERS.values()) + POOL_COL_SLACK
        rows = self.max_n + 4096
        rng = np.random.default_rng([seed, 0])
        self.pool = np.empty((rows, width), dtype=np.float16)
        step = 4096
        for r in range(0, rows, step):
            n = min(step, rows - r)
            self.pool[r : r + n] = rng.standard_normal((n, width), dtype=np.float32)

    def n_patches(self, i: int) -> int:
        rng = np.random.default_rng([self.seed, 1, i])
        lo, hi = int(self.patches * (1 - JITTER)), int(self.patches * (1 + JITTER))
        return int(rng.integers(lo, hi + 1))

    def case(self, i: int) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
        """(coords, {teacher: {level: (n, width) float16}}) of case ``i``."""
        rng = np.random.default_rng([self.seed, 2, i])
        n = self.n_patches(i)
        side = int(np.ceil(np.sqrt(n)))
        idx = np.arange(n, dtype=np.int64)
        coords = np.stack([idx % side, idx // side], axis=1) * 256
        y = label_of(i)
        feats = {}
        for t, widths in TEACHERS.items():
            feats[t] = {}
            for lv, d in widths.items():
                r0 = int(rng.integers(0, len(self.pool) - n + 1))
                c0 = int(rng.integers(0, self.pool.shape[1] - d + 1))
                x = np.array(self.pool[r0 : r0 + n, c0 : c0 + d])  # contiguous copy
                shift = (0.1 * rng.standard_normal(d, dtype=np.float32)).astype(np.float16)
                if y:
                    shift[:SIGNAL_DIMS] += np.float16(SIGNAL)
                x += shift
                feats[t][lv] = x
        return coords, feats


def feature_path(workdir: Path, teacher: str, slide: str) -> str:
    return layout.at(layout.FEATURES, workdir / "features_root", teacher=teacher, slide=slide)


def ensure_cases(workdir: Path, n_cases: int, patches: int, seed: int) -> float:
    """Write the feature files of the first ``n_cases`` cases that are not already there with
    the same parameters (the manifest says which); returns the seconds spent writing."""
    params = {"format": FORMAT, "patches": patches, "jitter": JITTER, "seed": seed,
              "teachers": TEACHERS, "signal": [SIGNAL_DIMS, SIGNAL]}  # fmt: skip
    manifest_path = workdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("params") != params:
        manifest = {"params": params, "cases": {}}
    done = manifest["cases"]
    todo = []
    for i in range(n_cases):
        c = case_id(i)
        rec = done.get(c)
        ok = rec is not None and all(
            os.path.exists(p := feature_path(workdir, t, c)) and os.path.getsize(p) == rec[t]
            for t in TEACHERS
        )
        if not ok:
            todo.append(i)
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    print(f"writing {len(todo)} case(s) of features under {workdir} ...", flush=True)
    gen = Generator(patches, seed)
    for k, i in enumerate(todo):
        c = case_id(i)
        coords, feats = gen.case(i)
        rec = {}
        for t, levels in feats.items():
            meta = {"teacher": t, "slide_id": c, "synthetic": "benchmarks/cohort_memory.py"}
            p = feature_path(workdir, t, c)
            write_feature_file(p, coords, {"patch_size": 256}, levels, meta, [], coords)
            rec[t] = os.path.getsize(p)
        done[c] = rec
        if (k + 1) % 10 == 0 or k + 1 == len(todo):
            manifest_path.write_text(json.dumps(manifest, indent=1))
            print(f"  {k + 1}/{len(todo)} cases, {time.perf_counter() - t0:.0f}s", flush=True)
    return time.perf_counter() - t0


def write_tables(workdir: Path, n_cases: int) -> dict:
    """Label file, slide sheet, task spec and fold file of the first ``n_cases`` cases."""
    d = workdir / f"n{n_cases}"
    d.mkdir(parents=True, exist_ok=True)
    ids = [case_id(i) for i in range(n_cases)]
    pd.DataFrame({"case_id": ids, "label": [CLASSES[label_of(i)] for i in range(n_cases)]}).to_csv(
        d / "labels.csv", index=False
    )
    # training never opens the slides (cmd_train loads the sheet with check_files=False)
    pd.DataFrame({"slide_id": ids, "path": [f"slides/{c}.svs" for c in ids], "case_id": ids,
                  "mpp": 0.5}).to_csv(d / "slides.tsv", sep="\t", index=False)  # fmt: skip
    n_held = max(1, round(0.10 * n_cases))
    split = ["val"] * n_held + ["test"] * n_held + ["train"] * (n_cases - 2 * n_held)
    pd.DataFrame({"case_id": ids, "split": split}).to_csv(d / "fold_0.csv", index=False)
    spec = TaskSpec("cohort_memory", "classification", labels=str(d / "labels.csv"),
                    classes=CLASSES, folds=2)  # fmt: skip
    files = [feature_path(workdir, t, c) for c in ids for t in TEACHERS]
    patches = 0
    for c in ids:
        with h5py.File(feature_path(workdir, next(iter(TEACHERS)), c), "r") as f:
            patches += len(f["coords"])
    return {
        "dir": d,
        "spec": spec.to_json(),
        "files": files,
        "feature_bytes": sum(os.path.getsize(p) for p in files),
        "patches": patches,
    }


def warm(files: list[str]) -> float:
    """Read every file once (the page cache is then warm); returns the seconds it took."""
    t0 = time.perf_counter()
    buf = bytearray(16 << 20)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- one run


def train_once(workdir: Path, tables: dict, cache: str, threads: int, timeout: float,
               epochs: int = 1, device: str | None = None) -> dict:  # fmt: skip
    n = len(tables["files"]) // len(TEACHERS)
    run_dir = workdir / "runs" / f"n{n}_{cache}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stats = run_dir / "child.json"
    train = {"epochs": epochs, "cache": cache}
    if device:
        train["device"] = device
    cmd = [sys.executable, "-c", CHILD, str(stats), "train", "--model", "shazam",
           "--spec", tables["spec"], "--train", json.dumps(train),
           "--fold-csv", str(tables["dir"] / "fold_0.csv"),
           "--slides", str(tables["dir"] / "slides.tsv"),
           "--teachers", ",".join(TEACHERS), "--features-root", str(workdir / "features_root"),
           "--out-dir", str(run_dir / "model"), "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "w") as logf:
        try:
            p = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                               timeout=timeout or None)  # fmt: skip
        except subprocess.TimeoutExpired:
            sys.exit(f"n={n} cache={cache}: stopped after {timeout:.0f}s; log {run_dir}/train.log")
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        sys.exit(f"n={n} cache={cache}: shazam train failed (rc {p.returncode}):\n{tail}")
    child = json.loads(stats.read_text())
    model = run_dir / "model"
    hist = pd.read_csv(model / "history.csv")
    metrics = json.loads((model / "metrics.json").read_text())
    later = hist.loc[hist["epoch"] > 0, "seconds"]
    return {
        "cases": n,
        "patches": tables["patches"],
        "feature_bytes": tables["feature_bytes"],
        "cache": cache,
        "peak_rss_bytes": child["maxrss_kb"] * 1024,
        "rss_fraction": child["maxrss_kb"] * 1024 / tables["feature_bytes"],
        "wall_s": wall,
        "epoch_s": float(hist.loc[hist["epoch"] == 0, "seconds"].iloc[0]),
        "later_epoch_s": float(later.mean()) if len(later) else None,
        "epochs": int(len(hist)),
        "selected_epoch": metrics.get("selected_epoch"),
        "device": json.loads((model / "config.json").read_text()).get("device"),
        "peak_gpu_allocated_bytes": child.get("gpu_max_allocated"),
        "peak_gpu_reserved_bytes": child.get("gpu_max_reserved"),
        "shazam": child["shazam_file"],
        # not in the JSON: what two runs are compared on
        "_history": hist,
        "_predictions": pd.read_csv(model / "predictions.csv"),
    }


def compare_runs(a: dict, b: dict) -> dict:
    """Whether two runs of one cohort select the same epoch and predict the same: the largest
    differences of their validation history and test predictions (numeric columns)."""

    def gap(x: np.ndarray, y: np.ndarray) -> float:  # NaN in both (an undefined metric): equal
        d = np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))
        return float(np.where(np.isnan(d), np.inf, d).max()) if d.size else 0.0

    cols = [c for c in a["_history"].columns if c.startswith("val_") or c == "train_loss"]
    hist = gap(a["_history"][cols].to_numpy(float), b["_history"][cols].to_numpy(float))
    pa, pb = a["_predictions"], b["_predictions"]
    same_rows = list(pa.columns) == list(pb.columns) and len(pa) == len(pb)
    num = [c for c in pa.select_dtypes("number").columns if c in pb.columns]
    pred = gap(pa[num].to_numpy(float), pb[num].to_numpy(float)) if same_rows else np.inf
    return {"same_selected_epoch": a["selected_epoch"] == b["selected_epoch"],
            "selected_epoch": [a["selected_epoch"], b["selected_epoch"]],
            "same_prediction_rows": same_rows,
            "max_history_diff": hist, "max_prediction_diff": pred}  # fmt: skip


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[10, 40], help="cohort sizes")
    ap.add_argument("--patches", type=int, default=6000, help="mean patches per case (±20%%)")
    ap.add_argument("--cache-modes", nargs="+", default=["disk", "memory"],
                    help="training.cache values run at the largest size")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of each run")
    ap.add_argument("--device", default=None,
                    help="training.device (cpu | cuda | cuda:N; unset: auto)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cohort_memory"))
    ap.add_argument("--keep", action="store_true", help="keep the work dir (cohort, runs)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run (0: none)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cohort_memory.json")
    a = ap.parse_args(argv)
    sizes = sorted(set(a.cases))
    small_cache = "disk"
    a.workdir.mkdir(parents=True, exist_ok=True)
    gen_s = ensure_cases(a.workdir, sizes[-1], a.patches, a.seed)
    runs = []
    try:
        for n in sizes:
            tables = write_tables(a.workdir, n)
            modes = a.cache_modes if n == sizes[-1] else [small_cache]
            for cache in modes:
                w = warm(tables["files"])
                print(f"n={n} cache={cache}: {tables['feature_bytes'] / 1e9:.2f} GB of features "
                      f"(warm-up read {w:.1f}s) ...", flush=True)  # fmt: skip
                r = train_once(a.workdir, tables, cache, a.threads, a.timeout, a.epochs,
                               a.device)  # fmt: skip
                gpu = r["peak_gpu_allocated_bytes"]
                print(
                    f"  peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB, wall {r['wall_s']:.1f}s, "
                    f"epoch {r['epoch_s']:.1f}s"
                    + (f", later epochs {r['later_epoch_s']:.2f}s" if r["later_epoch_s"] else "")
                    + f" on {r['device']}"
                    + (f", peak GPU memory {gpu / 1e9:.2f} GB" if gpu is not None else "")
                    + f", selected epoch {r['selected_epoch']} (shazam from {r['shazam']})",
                    flush=True,
                )
                runs.append(r)
    finally:
        if not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)

    print("\n| cases | patches | feature GB | cache | peak RSS GB | RSS / features | wall s "
          "| epoch s |\n|---:|---:|---:|---|---:|---:|---:|---:|")  # fmt: skip
    for r in runs:
        print(f"| {r['cases']} | {r['patches']:,} | {r['feature_bytes'] / 1e9:.2f} | {r['cache']} "
              f"| {r['peak_rss_bytes'] / 1e9:.2f} | {r['rss_fraction']:.2f} | {r['wall_s']:.1f} "
              f"| {r['epoch_s']:.1f} |")  # fmt: skip

    def run_of(n, cache):
        return next((r for r in runs if r["cases"] == n and r["cache"] == cache), None)

    lo, hi = sizes[0], sizes[-1]
    big = run_of(hi, small_cache) or next(r for r in runs if r["cases"] == hi)
    growth = big["peak_rss_bytes"] / run_of(lo, small_cache)["peak_rss_bytes"]
    bars = {
        f"rss({hi})/rss({lo})": (growth, BAR_GROWTH),
        f"rss({hi})/feature_bytes({hi})": (big["rss_fraction"], BAR_FRACTION),
    }
    disk, mem = run_of(hi, "disk"), run_of(hi, "memory")
    same = None
    if disk and mem:
        bars[f"epoch disk/memory ({hi})"] = (disk["epoch_s"] / mem["epoch_s"], BAR_CACHE)
        bars[f"wall disk/memory ({hi}, no bar)"] = (disk["wall_s"] / mem["wall_s"], None)
        same = compare_runs(disk, mem)
        print(f"\ndisk vs memory at {hi} cases ({a.epochs} epoch(s)): selected epoch "
              f"{same['selected_epoch'][0]} vs {same['selected_epoch'][1]}, largest difference "
              f"of the history {same['max_history_diff']:.2e}, of the test predictions "
              f"{same['max_prediction_diff']:.2e}")  # fmt: skip
    print()
    for name, (v, bar) in bars.items():
        verdict = "" if bar is None else f" <= {bar}: {'pass' if v <= bar else 'FAIL'}"
        print(f"{name} = {v:.2f}{verdict}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "generation_s": gen_s,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "disk_vs_memory": same,
        "bars": {k: {"value": v, "bar": b, "pass": None if b is None else v <= b}
                 for k, (v, b) in bars.items()},
    }, indent=1))  # fmt: skip
    print(f"results -> {a.out}")
    print(f"RESULT rss_growth {growth:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
