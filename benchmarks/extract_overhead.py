"""Extraction overhead: what a job costs before its first batch, and what Snakemake adds.

(a) **Set-up time per job**: ``shazam extract`` on one small slide, from process start to the
    first batch handed to the model (the job logs it, measured from ``/proc``), with
    ``toy_vit`` (built-in weights) and with ``virchow2`` from a local random-weight safetensors
    file that this script writes once (2.5 GB under ``benchmarks/out/``). The first virchow2
    run also hashes the weight file for its provenance (cached by path, size and mtime), so it
    is reported apart; the bar is on the cached runs: virchow2's set-up ≤ 2 × toy_vit's.
(b) **Cohort throughput through Snakemake**: ``--slides`` small synthetic slides (the demo's
    generator), tiled once, then both toy teachers extracted (i) by one ``shazam extract``
    process per teacher over every slide — the in-process loop — and (ii) by the workflow, with
    ``--cores 1`` and each ``extraction.slides_per_job`` of ``--per-job``: its group jobs,
    links and QC table. The bar: at the workflow's default ``slides_per_job``, extraction wall
    time ≤ 1.3 × the loop's. Every other value shows what a job costs here.

Run from the repository root with the venv's ``bin`` first on PATH:
``python benchmarks/extract_overhead.py``. The last line is
``RESULT extraction_cohort_overhead <workflow/loop at the default slides_per_job> x``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "extract_overhead"
TEACHERS = ("toy_vit", "toy_cnn")
FIRST_BATCH = re.compile(r"first batch ready ([0-9.]+)s after the process started")
PARAMS = {"num_workers": 0, "batch_size": 64}
BAR_SETUP, BAR_COHORT = 2.0, 1.3


def sh(cmd, cwd=None, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# --------------------------------------------------------------------------- cohort


def make_cohort(d: Path, n_slides: int) -> list[dict]:
    """The first ``n_slides`` demo slides (about 1.2 per case), tiled in this process."""
    from shazam.demo import write_demo
    from shazam.tiling import TilingParams, tile_slide

    sheet = write_demo(d, seed=7, n_cases=n_slides, workers=os.cpu_count())
    sheet = sheet.iloc[:n_slides]
    sheet.to_csv(d / "slides.tsv", sep="\t", index=False)
    rows = []
    for r in sheet.itertuples():
        patches = d / "results" / "patches" / f"{r.slide_id}.h5"
        qc = d / "results" / "qc" / "tiling" / f"{r.slide_id}.json"
        if not patches.exists():
            tile_slide(r.slide_id, d / r.path, patches, qc, qc.with_suffix(".png"), TilingParams())
        rows.append({"slide_id": r.slide_id, "slide": str(d / r.path), "patches": str(patches)})
    return rows


# --------------------------------------------------------------------------- (a)


def setup_time(teacher: str, slide: dict, weights: str | None, out: Path) -> float:
    """Process start → first batch of one ``shazam extract`` (killed once it gets there)."""
    cmd = [sys.executable, "-m", "shazam", "extract", "--teacher", teacher,
           "--slide-id", slide["slide_id"], "--slide", slide["slide"], "--patches",
           slide["patches"], "--out", str(out), "--weights", weights or "none",
           "--extraction", json.dumps({**PARAMS, "batch_size": 16})]  # fmt: skip
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in p.stderr:
            m = FIRST_BATCH.search(line)
            if m:
                return float(m.group(1))
        raise SystemExit(f"{teacher}: no first batch ({p.wait()})")
    finally:
        p.kill()
        p.wait()


def random_virchow2(path: Path) -> None:
    if path.exists():
        return
    from safetensors.torch import save_file

    from shazam.teachers import get_spec
    from shazam.teachers.build import random_architecture

    model = random_architecture(get_spec("virchow2"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


def measure_setup(slide: dict, repeats: int) -> dict:
    weights = OUT / "virchow2_random.safetensors"
    random_virchow2(weights)
    # a new mtime: the first run hashes the file for its provenance, as a new checkpoint would
    os.utime(weights)
    cold = setup_time("virchow2", slide, str(weights), OUT / "v.h5")
    res = {"toy_vit": [], "virchow2": []}
    for _ in range(repeats):  # alternating, so drifts in machine load hit both
        res["toy_vit"].append(setup_time("toy_vit", slide, None, OUT / "t.h5"))
        res["virchow2"].append(setup_time("virchow2", slide, str(weights), OUT / "v.h5"))
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    print(f"(a) set-up, process start to first batch (median of {repeats}):")
    print(f"    toy_vit  {med['toy_vit']:.2f} s  {res['toy_vit']}")
    print(f"    virchow2 {med['virchow2']:.2f} s  {res['virchow2']} "
          f"(first run, hashing the 2.5 GB file: {cold:.2f} s)")  # fmt: skip
    ratio = med["virchow2"] / med["toy_vit"]
    print(f"    virchow2 / toy_vit = {ratio:.2f} (bar <= {BAR_SETUP})")
    return {"toy_vit_s": med["toy_vit"], "virchow2_s": med["virchow2"], "cold_s": cold,
            "ratio": ratio}  # fmt: skip


# --------------------------------------------------------------------------- (b)


def loop_time(d: Path, slides: list[dict]) -> float:
    """One process per teacher over every slide: the in-process loop, start-up included."""
    total = 0.0
    for t in TEACHERS:
        out = d / "loop" / t
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "shazam", "extract", "--teacher", t, "--threads", "1",
               "--slide-id", *[s["slide_id"] for s in slides],
               "--slide", *[s["slide"] for s in slides],
               "--patches", *[s["patches"] for s in slides],
               "--out", *[str(out / f"{s['slide_id']}.h5") for s in slides],
               "--extraction", json.dumps(PARAMS)]  # fmt: skip
        t0 = time.perf_counter()
        sh(cmd)
        total += time.perf_counter() - t0
    return total


def workflow_time(d: Path, per_job: int, snakemake: str) -> tuple[float, int]:
    """Wall time of the workflow's extraction (group jobs, links, QC table), --cores 1."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.update(slides=str(d / "slides.tsv"), tasks={}, teachers=list(TEACHERS))
    cfg["demo"]["enabled"] = False
    cfg["extraction"].update(PARAMS, slides_per_job=per_job)
    (d / "bench.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(d / "results" / "features", ignore_errors=True)
    shutil.rmtree(d / "results" / "qc" / "extraction.tsv", ignore_errors=True)
    opts = ["-s", str(ROOT / "Snakefile"), "--cores", "1", "--resources", "gpu=1",
            "--configfile", str(d / "bench.yaml")]  # fmt: skip
    # targets first: --resources and --configfile take every word after them
    sh([snakemake, "results/qc/tiling.tsv", *opts], cwd=d)  # tiled already: bookkeeping
    t0 = time.perf_counter()
    p = sh([snakemake, "results/qc/extraction.tsv", *opts], cwd=d)
    seconds = time.perf_counter() - t0
    del p
    jobs = len(list((d / "results" / "features").glob("*/groups/*.tsv")))
    return seconds, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=60)
    ap.add_argument("--per-job", default="1,8,16,32", help="slides_per_job values to run")
    ap.add_argument("--repeats", type=int, default=3, help="(a): runs per teacher")
    ap.add_argument("--skip-setup", action="store_true", help="skip (a)")
    ap.add_argument("--snakemake", default=shutil.which("snakemake") or "snakemake")
    a = ap.parse_args()

    from shazam.extraction import ExtractParams

    default = ExtractParams().slides_per_job
    OUT.mkdir(parents=True, exist_ok=True)
    d = OUT / f"cohort{a.slides}"
    slides = make_cohort(d, a.slides)
    n_patches = 0
    import h5py

    for s in slides:
        with h5py.File(s["patches"]) as f:
            n_patches += f["coords"].shape[0]
    print(f"cohort: {len(slides)} slides, {n_patches} patches, teachers {', '.join(TEACHERS)}; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    if not a.skip_setup:
        measure_setup(slides[0], a.repeats)

    loop = loop_time(d, slides)
    print(f"(b) in-process loop (one process per teacher): {loop:.1f} s")
    values = sorted({int(v) for v in a.per_job.split(",")} | {default})
    ratios = {}
    for n in values:
        seconds, jobs = workflow_time(d, n, a.snakemake)
        ratios[n] = seconds / loop
        mark = "  (default)" if n == default else ""
        print(f"    slides_per_job {n:3d}: {jobs:3d} extraction jobs, {seconds:6.1f} s, "
              f"{ratios[n]:.2f} x the loop{mark}")  # fmt: skip
    print(f"    bar at the default ({default}): <= {BAR_COHORT} x")
    print(f"RESULT extraction_cohort_overhead {ratios[default]:.2f} x")


if __name__ == "__main__":
    main()
