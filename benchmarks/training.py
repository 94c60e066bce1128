"""Training benchmark: one ABMIL epoch with our engine vs one bag per step (the seed's way).

Synthetic bags (``--bags`` × ``--patches`` × ``--dim``, float16 in memory, as the store holds
real features under ``training.cache: memory``) for a 2-class task. Every run uses the same
engine code, model, seed, patch subsampling (``--max-patches``) and number of optimiser steps
(``accumulate`` bags per step).
Four settings, interleaved, median of ``--repeats`` epochs each:

- ``engine``: our defaults — ``accumulate`` bags as one packed forward pass, ``precision:
  auto`` (bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere);
- ``engine-fp32``: the same with fp32 (what batching alone gives);
- ``per-bag-auto``: one bag per forward/backward with ``precision: auto`` (what bf16 alone gives);
- ``seed``: one bag per forward/backward, gradients accumulated, fp32 — the seed's way.

Peak RSS is reported. Last line: ``RESULT training_speedup <seed / engine> x``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np
import pandas as pd
import torch

from shazam.device import cpu_has_native_bf16
from shazam.models import registry
from shazam.stores import FeatureStore
from shazam.tasks import TaskSpec
from shazam.training import Engine, Targets, TrainConfig


def synthetic_bags(n_bags: int, n_patches: int, dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    bags = {}
    for i in range(n_bags):
        n = int(n_patches * rng.uniform(0.75, 1.0))  # unequal bags, as in real cohorts
        x = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
        bags[f"c{i:04d}"] = {"t:high": x}
    return bags


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=200)
    ap.add_argument("--patches", type=int, default=8000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--max-patches", type=int, default=4096)
    ap.add_argument("--accumulate", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu (the bar) or cuda")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    bags = synthetic_bags(a.bags, a.patches, a.dim)
    # an engine computing in bf16 transforms a store held in memory once (FeatureStore.prepare:
    # z-scored, in bf16, in place of the float16 rows); the fp32 runs keep their own store over
    # the same float16 arrays, transformed batch by batch
    stores = {"fp32": FeatureStore.from_arrays(bags), "auto": FeatureStore.from_arrays(bags)}
    ids = sorted(bags)
    cases = pd.DataFrame({"case_id": ids, "y": [i % 2 for i in range(len(ids))]}).set_index(
        "case_id"
    )
    spec = TaskSpec("bench", "classification", "-", classes=("A", "B"), folds=2)
    built = time.perf_counter() - t0
    print(
        f"{a.bags} bags x <= {a.patches} patches x {a.dim} (float16) built in {built:.1f}s; "
        f"max_patches {a.max_patches}, accumulate {a.accumulate}, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    settings = {  # label: (bags per forward pass, precision)
        "engine": (a.accumulate, "auto"),
        "engine-fp32": (a.accumulate, "fp32"),
        "per-bag-auto": (1, "auto"),
        "seed": (1, "fp32"),
    }
    times: dict[str, list[float]] = {k: [] for k in settings}
    for r in range(a.repeats):
        for label, (bb, precision) in settings.items():
            cfg = TrainConfig(epochs=1, accumulate=a.accumulate, batch_bags=bb,
                              max_patches=a.max_patches, device=a.device,
                              precision=precision)  # fmt: skip
            torch.manual_seed(0)
            st = stores[precision]
            eng = Engine(
                registry.build("abmil-t", st.dims, 2, ["t"]), spec, st, Targets(spec, cases), cfg
            )
            val = ids[:2]  # validation is not what is measured: keep it tiny
            eng.prepare(ids)  # once per store (statistics, the bf16 transform): not an epoch's cost
            t = time.perf_counter()
            eng.fit(ids, val, log=lambda s: None)
            if eng.device.type == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - t)
            amp = str(eng.amp).replace("torch.", "") if eng.amp is not None else "float32"
            print(f"  run {r + 1} {label:12s} ({amp}): {times[label][-1]:.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n| setting | bags / pass | precision | epoch s (median) | vs seed |")
    print("|---|---:|---|---:|---:|")
    for k, v in med.items():
        bb, precision = settings[k]
        print(f"| {k} | {bb} | {precision} | {v:.2f} | {med['seed'] / v:.2f}x |")
    ratio = med["seed"] / med["engine"]
    print(
        f"device {a.device}; native CPU bf16 {cpu_has_native_bf16()}; peak RSS {rss:.0f} MB; "
        f"engine vs seed {ratio:.2f}x (bar >= 3x on CPU)"
    )
    print(f"RESULT training_speedup {ratio:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
