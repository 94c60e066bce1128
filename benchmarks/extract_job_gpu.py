"""One extraction job on a GPU, end to end through the command line, against the model-only rate.

What a workflow's ``extract_features`` job does (``rules/extraction.smk``): one ``shazam
extract`` process (here ``python -m shazam extract``, the same command line) over a group of
slides, one model load, one feature file per slide and the group's table. Measured here:

1. the cohort: ``--slides`` synthetic 40× slides (``benchmarks/tiling.py``'s generator, 32768 ×
   24576 px, JPEG tiles, ~50 % tissue, one seed each), tiled at the workflow's defaults (256 px
   at 0.5 µm/px: about 1,600 patches a slide); each slide's patch list is repeated
   ``--repeat`` times so that a slide has as many patches as a real one (~10,000), and the
   loader still reads every patch from the slide;
2. the teacher's weights: for ``virchow2`` a local random-weight safetensors file of 2.5 GB,
   written once (``extract_overhead.random_virchow2``); the job loads it as a real checkpoint
   (meta-device build, memory-mapped tensors);
3. a **cold job** on the first slide's plain patch list: the first job after the weight file
   appeared (it hashes the file for its provenance; later jobs find the hash cached);
4. the **timed job** over every slide: wall time from process start to exit, the set-up (process
   start to "model ready on the device", read off the job's log as its lines arrive, and to the
   first batch, from the job's own ``/proc`` age), each slide's seconds (the job's table), and
   the GPU's utilisation and memory sampled by ``nvidia-smi`` every 0.5 s;
5. the **model-only rate**: the same extractor, loaded from the same file in this process, on
   random tensors already on the GPU (``extract_gpu.model_only_rate``: batch ``--batch``, every
   level, the same device→host copies).

Without CUDA the job runs on the CPU and (5) is skipped (a check of the script, not a figure).
Prints a summary and ``RESULT extraction_job_fraction <end-to-end / model-only> x``; ``--json``
also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_gpu import model_only_rate, repeated_patch_file  # noqa: E402
from extract_overhead import random_virchow2  # noqa: E402
from tiling import ensure_slide  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r" ready on (\S+) in ([0-9.]+)s")
FIRST_BATCH = re.compile(r"first batch ready ([0-9.]+)s after the process started")
TISSUE = 0.5  # tissue fraction of the generated slides (tiling.py's ref_x2)


def make_slide(args) -> tuple[str, str]:
    out, i = args
    s = ensure_slide(Path(out), f"s{i}", TISSUE, i, False)
    return s["name"], str(s["path"])


def make_cohort(work: Path, n: int, repeat: int, max_patches: int) -> list[dict]:
    """``n`` slides, tiled; per slide its plain and its repeated patch file."""
    from shazam.tiling import tile_slide

    t0 = time.perf_counter()
    with ProcessPoolExecutor(min(n, 4)) as pool:
        made = list(pool.map(make_slide, [(str(work / "slides"), i) for i in range(n)]))
    print(f"{n} slides written in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for name, path in made:
        p = work / "patches" / f"{name}.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            tile_slide(name, path, p, p.with_suffix(".json"), p.with_suffix(".png"))
        if max_patches:
            cut(p, max_patches)
        rep = p.with_name(f"{name}_x{repeat}.h5")
        n_rep = repeated_patch_file(p, rep, repeat)
        rows.append({"slide_id": name, "slide": path, "patches": str(p), "repeated": str(rep),
                     "n_repeated": n_rep})  # fmt: skip
    return rows


def cut(path: Path, n: int) -> None:
    """Keep the first ``n`` patches of a patch file (a quick check of this script)."""
    import h5py

    with h5py.File(path, "a") as f:
        if len(f["coords"]) <= n:
            return
        c, attrs = f["coords"][:n], dict(f["coords"].attrs)
        del f["coords"]
        d = f.create_dataset("coords", data=c)
        for k, v in attrs.items():
            d.attrs[k] = v


def extraction_section(batch: int, workers: int, precision: str, group: int) -> dict:
    """The config's ``extraction`` section, as the workflow passes it, with this run's values."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["extraction"]
    cfg.update(batch_size=batch, num_workers=workers, precision=precision, slides_per_job=group)
    return cfg


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every 0.5 s while the job runs (none without it)."""

    def __init__(self):
        self.p = None
        if shutil.which("nvidia-smi"):
            self.p = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip

    def stop(self) -> dict:
        if self.p is None:
            return {}
        self.p.terminate()
        out, _ = self.p.communicate()
        vals = []
        for line in out.splitlines():
            try:
                u, m = (float(v) for v in line.split(","))
            except ValueError:
                continue
            vals.append((u, m))
        if not vals:
            return {}
        u = np.array([v[0] for v in vals])
        m = np.array([v[1] for v in vals])
        busy = u[u > 0]
        return {"samples": len(vals), "util_mean": float(u.mean()),
                "util_mean_while_busy": float(busy.mean()) if len(busy) else 0.0,
                "mem_used_max_mib": float(m.max())}  # fmt: skip


def run_job(teacher, slides, patches_key, weights, section, threads, work: Path, tag: str,
            sample_gpu: bool) -> dict:  # fmt: skip
    """One ``python -m shazam extract`` group job; its wall time, set-up and per-slide rows."""
    out = work / "features" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    table = out / "group.tsv"
    cmd = [sys.executable, "-m", "shazam", "extract", "--teacher", teacher,
           "--slide-id", *[s["slide_id"] for s in slides],
           "--slide", *[s["slide"] for s in slides],
           "--patches", *[s[patches_key] for s in slides],
           "--out", *[str(out / f"{s['slide_id']}.h5") for s in slides],
           "--table", str(table), "--group", tag, "--weights", weights or "none",
           "--threads", str(threads), "--extraction", json.dumps(section)]  # fmt: skip
    log_path = work / f"job_{tag}.log"
    lines: list[tuple[float, str]] = []
    sampler = GpuSampler() if sample_gpu else None
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read():
        for line in p.stderr:
            lines.append((time.perf_counter() - t0, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rc = p.wait()
    wall = time.perf_counter() - t0
    reader.join()
    gpu = sampler.stop() if sampler else {}
    log_path.write_text("".join(f"[{t:7.2f}s] {line}\n" for t, line in lines))
    if rc != 0:
        tail = "\n".join(line for _, line in lines[-40:])
        raise SystemExit(f"job {tag} failed (rc {rc}); its log {log_path}:\n{tail}")
    import pandas as pd

    df = pd.read_csv(table, sep="\t")
    ready = next(((t, READY.search(x)) for t, x in lines if READY.search(x)), (None, None))
    first = next((float(m.group(1)) for _, x in lines if (m := FIRST_BATCH.search(x))), None)
    n = int(df["n_patches"].sum())
    slide_s = float(df["seconds"].sum())
    res = {
        "slides": len(df), "patches": n, "wall_s": wall, "per_s": n / wall,
        "device": ready[1].group(1) if ready[1] else None,
        "setup_to_model_ready_s": ready[0],  # process start -> "ready on <device>" logged
        "model_load_s": float(ready[1].group(2)) if ready[1] else None,  # TeacherRun.open
        "setup_to_first_batch_s": first,  # the job's own /proc age at its first batch
        "slide_seconds_sum": slide_s, "steady_per_s": n / slide_s if slide_s else None,
        "slide_per_s": df["patches_per_s"].tolist(),
        "after_setup_outside_slides_s": wall - (ready[0] or 0) - slide_s,
        "gpu": gpu,
    }  # fmt: skip
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="virchow2")
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=6, help="patch list repeats per slide")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--iters", type=int, default=30, help="model-only batches")
    ap.add_argument("--max-patches", type=int, default=0, help="cut each slide (script checks)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/extract_job"))
    ap.add_argument("--weights", default=None, help="virchow2: the random-weight file's path")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    slides = make_cohort(work, a.slides, a.repeat, a.max_patches)
    weights = None
    if a.teacher == "virchow2":
        weights = a.weights or str(work / "virchow2_random.safetensors")
        t0 = time.perf_counter()
        existed = os.path.exists(weights)
        random_virchow2(Path(weights))
        if not existed:
            print(f"random-weight virchow2 written in {time.perf_counter() - t0:.1f}s "
                  f"({os.path.getsize(weights) / 1e9:.2f} GB)", flush=True)  # fmt: skip
    section = extraction_section(a.batch, a.workers, a.precision, a.slides)
    threads = a.workers + 1  # the rule's threads: num_workers + 1
    res = {"teacher": a.teacher, "batch": a.batch, "workers": a.workers,
           "precision": a.precision, "cpus": os.cpu_count(), "torch": torch.__version__,
           "gpu": None}  # fmt: skip

    cold = run_job(a.teacher, slides[:1], "patches", weights, section, threads, work, "cold",
                   False)  # fmt: skip
    print(f"cold job (1 slide, {cold['patches']} patches; weight file hashed): "
          f"model ready {cold['setup_to_model_ready_s']:.2f}s, first batch "
          f"{cold['setup_to_first_batch_s']}s, wall {cold['wall_s']:.1f}s", flush=True)  # fmt: skip
    job = run_job(a.teacher, slides, "repeated", weights, section, threads, work, "timed",
                  cuda)  # fmt: skip
    print(f"timed job ({job['slides']} slides, {job['patches']} patches) on {job['device']}: "
          f"wall {job['wall_s']:.1f}s = {job['per_s']:.0f} patches/s end to end; set-up "
          f"{job['setup_to_model_ready_s']:.2f}s to the model on the device "
          f"({job['model_load_s']:.2f}s of it loading), {job['setup_to_first_batch_s']}s to the "
          f"first batch; slides {job['slide_seconds_sum']:.1f}s = {job['steady_per_s']:.0f} "
          f"patches/s; per slide {job['slide_per_s']}; GPU {job['gpu']}", flush=True)  # fmt: skip
    res.update(cold=cold, job=job)

    if cuda:
        from shazam.extraction.batches import load_extractor
        from shazam.teachers import get_spec

        spec = get_spec(a.teacher)
        levels = tuple(lv for lv in section["levels"] if lv in spec.dims)
        dev = torch.device("cuda:0")
        res["gpu"] = torch.cuda.get_device_name(dev)  # CUDA is started here, after the jobs
        ext, _ = load_extractor(spec, weights, levels, dev)
        ext.eval()
        res["model_only_per_s"] = model_only_rate(ext, spec, a.batch, a.iters, dev)
        res["fraction"] = job["per_s"] / res["model_only_per_s"]
        res["steady_fraction"] = job["steady_per_s"] / res["model_only_per_s"]
        print(f"model-only {a.teacher} bf16 batch {a.batch}: {res['model_only_per_s']:.0f} "
              f"patches/s; end to end / model-only {res['fraction']:.2f}, slides only "
              f"{res['steady_fraction']:.2f}", flush=True)  # fmt: skip
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    if "fraction" in res:
        print(f"RESULT extraction_job_fraction {res['fraction']:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
