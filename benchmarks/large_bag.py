"""Large bags at evaluation: peak memory of one slide of ``--patches`` patches through the student,
streamed in chunks (the default: ``forward_chunks``, a running softmax) or as one batch.

One synthetic slide (one case) with feature files of the real teachers' widths (virchow2
1280/1280/2560 and uni2_h 1536 × 3, float16, as extraction writes them) is written under
``--workdir``. Each mode runs in its own process: it opens the store from disk, fits the
standardisation on the slide, builds the student (``shazam``, default settings) and evaluates
the bag once with ``Engine.predict`` — ``streamed`` with the default ``eval_rows``
(``batch_bags`` × ``max_patches`` = 32,768 rows per chunk), ``whole`` with ``max_patches`` raised
so that the bag is one batch. The process reports its peak RSS (``VmHWM``:
:func:`shazam.device.peak_rss`) and the seconds of the prediction; the two logits must agree.

``--device`` (cpu | cuda | cuda:N) sets the engine's device (unset: ``auto``, a GPU when there
is one); a process that used CUDA also reports its peak GPU memory
(``torch.cuda.max_memory_allocated``).

Last line: ``RESULT large_bag_memory_ratio <whole / streamed peak RSS> x``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from shazam.formats import write_feature_file

WIDTHS = {"virchow2": (1280, 1280, 2560), "uni2_h": (1536, 1536, 1536)}

CHILD = """
import json, sys, time
import pandas as pd, torch
from shazam.device import peak_rss
from shazam.models import registry
from shazam.stores import FeatureStore
from shazam.tasks import TaskSpec
from shazam.training import Engine, Targets, TrainConfig
root, mode, n, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(2)
sheet = pd.DataFrame({"slide_id": ["s0"], "case_id": ["c0"]})
store = FeatureStore.for_slides(sheet, ["virchow2", "uni2_h"], ["c0"], ("low", "mid", "high"), root)
spec = TaskSpec("bag", "classification", "-", classes=("A", "B"), folds=2)
cases = pd.DataFrame({"y": [0]}, index=pd.Index(["c0"], name="case_id"))
cfg = TrainConfig(device=device) if mode == "streamed" else TrainConfig(
    batch_bags=1, max_patches=n, device=device)
torch.manual_seed(0)
net = registry.build("shazam", store.dims, 2, ["virchow2", "uni2_h"])
eng = Engine(net, spec, store, Targets(spec, cases), cfg)
eng.prepare(["c0"])
t = time.perf_counter()
out = eng.predict(["c0"])
seconds = time.perf_counter() - t
gpu = {}
if torch.cuda.is_initialized():
    gpu = {"gpu_max_allocated": torch.cuda.max_memory_allocated()}
print(json.dumps({"seconds": seconds, "logits": out["logits"].tolist(),
                  "maxrss": peak_rss(), "device": str(eng.device),
                  "streamed": bool(eng._eval_batches(["c0"])[1]), **gpu}))
"""


def write_bag(root: Path, n: int, seed: int = 0) -> int:
    """One slide's feature files (chunks of random rows); returns their bytes."""
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n) % 1000 * 224, np.arange(n) // 1000 * 224], 1)
    total = 0
    for t, widths in WIDTHS.items():
        path = root / "features" / t / "s0.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        block = rng.standard_normal((4096, max(widths)), dtype=np.float32).astype(np.float16)
        feats = {
            lv: np.resize(block[:, :c], (n, c)) + np.float16(0.01 * i)
            for i, (lv, c) in enumerate(zip(("low", "mid", "high"), widths, strict=True))
        }
        write_feature_file(path, coords, {}, feats, {"teacher": t}, [], coords)
        total += path.stat().st_size
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=150_000)
    ap.add_argument("--workdir", default="/tmp/large_bag")
    ap.add_argument("--device", default="auto", help="cpu | cuda | cuda:N (auto: a GPU if any)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    root = Path(a.workdir)
    size = write_bag(root, a.patches)
    print(f"one slide of {a.patches:,} patches: {size / 1e9:.2f} GB of features", flush=True)
    res = {}
    for mode in ("streamed", "whole"):
        p = subprocess.run([sys.executable, "-c", CHILD, str(root), mode, str(a.patches),
                            a.device], capture_output=True, text=True)  # fmt: skip
        if p.returncode != 0:
            sys.exit(f"{mode} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        r = res[mode]
        gpu = r.get("gpu_max_allocated")
        print(f"  {mode:8s}: peak RSS {r['maxrss'] / 1e9:.2f} GB, predict {r['seconds']:.2f} s "
              f"on {r['device']}" + (f", peak GPU memory {gpu / 1e9:.2f} GB" if gpu else "")
              + f" (chunked: {r['streamed']})", flush=True)  # fmt: skip
    gap = np.abs(np.subtract(res["streamed"]["logits"], res["whole"]["logits"])).max()
    print(f"max |logit difference| {gap:.2e} (bf16 autocast)")
    print(pd.DataFrame(res).T[["maxrss", "seconds"]].to_string())
    ratio = res["whole"]["maxrss"] / res["streamed"]["maxrss"]
    if a.json:
        out = {m: {k: v for k, v in r.items() if k != "logits"} for m, r in res.items()}
        out.update(patches=a.patches, feature_bytes=size, max_logit_diff=float(gap),
                   rss_ratio=ratio)  # fmt: skip
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(f"RESULT large_bag_memory_ratio {ratio:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
