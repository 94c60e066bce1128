"""Size and speed of the Shazam student against single-teacher ABMIL on the same bags.

Synthetic bags for two teachers with real teachers' dims (virchow2-like: 1280/1280/2560 for
low/mid/high; uni2_h-like: 1536 at every level), float16 in memory. Reports parameter counts and
the median epoch time of ``shazam`` (all three levels), ``shazam-high``, ``concat`` and
``abmil-<teacher>`` trained by the same engine with the same settings. Last line:
``RESULT student_epoch_ratio <shazam epoch / abmil-uni2_h epoch> x``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import pandas as pd
import torch

from shazam.models import registry
from shazam.stores import FeatureStore, key
from shazam.tasks import TaskSpec
from shazam.training import Engine, Targets, TrainConfig

DIMS = {
    "virchow2": {"low": 1280, "mid": 1280, "high": 2560},
    "uni2_h": dict.fromkeys(("low", "mid", "high"), 1536),
}


def synthetic_store(n_bags: int, n_patches: int, seed: int = 0) -> FeatureStore:
    rng = np.random.default_rng(seed)
    dims = {key(t, lv): c for t, d in DIMS.items() for lv, c in d.items()}
    bags = {}
    for i in range(n_bags):
        n = int(n_patches * rng.uniform(0.75, 1.0))
        bags[f"c{i:04d}"] = {
            k: rng.standard_normal((n, c), dtype=np.float32).astype(np.float16)
            for k, c in dims.items()
        }
    return FeatureStore.from_arrays(bags)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=48)
    ap.add_argument("--patches", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args(argv)
    store = synthetic_store(a.bags, a.patches)
    ids = sorted(store.items)
    cases = pd.DataFrame({"case_id": ids, "y": [i % 2 for i in range(len(ids))]}).set_index(
        "case_id"
    )
    spec = TaskSpec("bench", "classification", "-", classes=("A", "B"), folds=2)
    cfg = TrainConfig(epochs=1, device="cpu")
    teachers = list(DIMS)

    def make(name):
        return registry.build(name, store.dims, 2, teachers, student={"layers": a.layers})

    names = ["abmil-uni2_h", "abmil-virchow2", "concat", "shazam-high", "shazam"]
    times = {n: [] for n in names}
    params = {n: sum(p.numel() for p in make(n).parameters()) for n in names}
    for _ in range(a.repeats):
        for n in names:
            torch.manual_seed(0)
            eng = Engine(make(n), spec, store, Targets(spec, cases), cfg)
            eng.prepare(ids)  # the z-scoring statistics, once per store: not an epoch's cost
            t = time.perf_counter()
            eng.fit(ids, ids[:2], log=lambda s: None)
            times[n].append(time.perf_counter() - t)
    print(f"{a.bags} bags x <= {a.patches} patches; teachers {teachers}; shazam layers {a.layers}")
    print("\n| model | parameters | epoch s (median) |\n|---|---:|---:|")
    for n in names:
        print(f"| {n} | {params[n]:,} | {statistics.median(times[n]):.2f} |")
    ratio = statistics.median(times["shazam"]) / statistics.median(times["abmil-uni2_h"])
    print(f"RESULT student_epoch_ratio {ratio:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
