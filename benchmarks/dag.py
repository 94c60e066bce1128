"""DAG benchmark: how long `snakemake -n` takes on a large cohort, ours against a bare workflow.

The bar (DESIGN §8, issue "Cluster operation … DAG scale"): with N = 10,000 slides, 2 teachers
and 5 folds, a dry run of our workflow takes at most 1.3× as long as a bare-bones Snakefile
with the same DAG shape whose rules only `touch` their outputs.

What it does, per N:

1. writes a cohort of N empty stand-in slide files (no pixels: a dry run never opens them),
   a slide sheet (two slides per case), a classification label file and a config with the two
   toy teachers, one task with 5 folds, and the Shazam student with no ablations;
2. writes the bare Snakefile: the same rules with the same input/output patterns
   (tile_slide per slide, extract_features per teacher and group of 32 slides, feature_file
   per teacher and slide, tiling_qc, make_splits,
   train_baseline per teacher and fold, train_fusion and train_shazam per fold, all) whose
   input functions are dictionary look-ups and whose shell commands only `touch`;
3. runs `snakemake -n --quiet all` on each (in a fresh process, bare first then ours,
   ``--repeats`` times each, alternating) and records wall time and the process's peak RSS
   (``os.wait4``).

Run: ``python benchmarks/dag.py`` (repository root, the venv's ``bin`` first on PATH or
``--snakemake PATH``). The last line is ``RESULT dag_ratio <ours/bare at the largest N> x``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEACHERS = ("toy_vit", "toy_cnn")
FOLDS = 5
BAR = 1.3
HEATMAPS = os.environ.get("DAG_HEATMAPS") == "1"  # 1: ours also plans the default heatmaps

BARE_SNAKEFILE = """\
import csv
import os

SLIDES = {}
with open(config["slides"]) as f:
    for row in csv.DictReader(f, delimiter="\\t"):
        SLIDES[row["slide_id"]] = os.path.join(os.path.dirname(config["slides"]), row["path"])
TEACHERS = config["teachers"]
FOLDS = range(config["folds"])
# extraction groups of 32 slides in id order (ours cuts them by hash: same job shape)
_ids = sorted(SLIDES)
GROUPS = {f"g{k:012d}": _ids[k * 32 : (k + 1) * 32] for k in range((len(_ids) + 31) // 32)}
GROUP_OF = {s: g for g, members in GROUPS.items() for s in members}

wildcard_constraints:
    slide=r"[A-Za-z0-9._-]+",
    teacher="|".join(TEACHERS),
    fold=r"\\d+",
    group=r"g\\d{12}",

FEATURES = expand("results/features/{teacher}/{slide}.h5", teacher=TEACHERS, slide=SLIDES)

rule all:
    input:
        "results/qc/tiling.tsv",
        FEATURES,
        "results/splits/task/summary.tsv",
        expand("results/models/task/abmil-{teacher}/fold_{fold}/metrics.json",
               teacher=TEACHERS, fold=FOLDS),
        expand("results/models/task/{model}/fold_{fold}/metrics.json",
               model=["concat", "shazam"], fold=FOLDS),

rule tile_slide:
    input: lambda wc: SLIDES[wc.slide]
    output: "results/patches/{slide}.h5", "results/qc/tiling/{slide}.json",
            "results/qc/tiling/{slide}.png"
    log: "logs/tile_slide/{slide}.log"
    shell: "touch {output}"

rule tiling_qc:
    input: expand("results/qc/tiling/{slide}.json", slide=SLIDES)
    output: "results/qc/tiling.tsv"
    shell: "touch {output}"

rule extract_features:
    input: lambda wc: expand("results/patches/{s}.h5", s=GROUPS[wc.group]),
           lambda wc: [SLIDES[s] for s in GROUPS[wc.group]]
    output: "results/features/{teacher}/groups/{group}.tsv"
    log: "logs/extract_features/{teacher}/{group}.log"
    shell: "touch {output}"

rule feature_file:
    input: lambda wc: f"results/features/{wc.teacher}/groups/{GROUP_OF[wc.slide]}.tsv"
    output: "results/features/{teacher}/{slide}.h5"
    shell: "touch {output}"

rule make_splits:
    input: config["labels"], config["slides"]
    output: expand("results/splits/task/fold_{k}.csv", k=FOLDS), "results/splits/task/summary.tsv"
    shell: "touch {output}"

rule train_baseline:
    input: "results/splits/task/fold_{fold}.csv",
           lambda wc: expand("results/features/{t}/{s}.h5", t=wc.teacher, s=SLIDES)
    output: "results/models/task/abmil-{teacher}/fold_{fold}/metrics.json"
    shell: "touch {output}"

rule train_fusion:
    input: "results/splits/task/fold_{fold}.csv", FEATURES
    output: "results/models/task/concat/fold_{fold}/metrics.json"
    shell: "touch {output}"

rule train_shazam:
    input: "results/splits/task/fold_{fold}.csv", FEATURES
    output: "results/models/task/shazam/fold_{fold}/metrics.json"
    shell: "touch {output}"
"""


def make_cohort(wd: Path, n: int) -> None:
    """N empty slide files, the sheet, a label file and both configs in ``wd``."""
    (wd / "slides").mkdir(parents=True)
    rows = ["slide_id\tpath\tcase_id"]
    labels = ["case_id,label"]
    for i in range(n):
        sid, cid = f"S{i:06d}", f"C{i // 2:06d}"
        (wd / "slides" / f"{sid}.svs").touch()
        rows.append(f"{sid}\tslides/{sid}.svs\t{cid}")
        if i % 2 == 0:
            labels.append(f"{cid},{'AB'[(i // 2) % 2]}")
    (wd / "slides.tsv").write_text("\n".join(rows) + "\n")
    (wd / "labels.csv").write_text("\n".join(labels) + "\n")
    # our config: the shipped one (every key) with the cohort, teachers and task replaced
    conf = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    conf.update(
        slides=str(wd / "slides.tsv"),
        demo={"enabled": False},
        teachers=list(TEACHERS),
        tasks={
            "task": {
                "type": "classification",
                "labels": str(wd / "labels.csv"),
                "label_col": "label",
                "classes": ["A", "B"],
                "folds": FOLDS,
            }
        },
    )
    conf["shazam"]["ablations"] = []
    # the bare workflow has no heatmap jobs (BENCHMARKS: their cost measured apart)
    conf["heatmaps"] = {"enabled": HEATMAPS, "folds": None}  # on: every fold (the default)
    (wd / "ours.yaml").write_text(yaml.safe_dump(conf))
    (wd / "bare.yaml").write_text(
        f"slides: {wd / 'slides.tsv'}\nlabels: {wd / 'labels.csv'}\n"
        f"teachers: [{', '.join(TEACHERS)}]\nfolds: {FOLDS}\n"
    )
    (wd / "bare.smk").write_text(BARE_SNAKEFILE)


def dry_run(snakemake: str, wd: Path, which: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout tail) of one `snakemake -n` in a fresh process."""
    if which == "ours":
        conf = ["-s", str(ROOT / "Snakefile"), "--configfile", str(wd / "ours.yaml")]
    else:
        conf = ["-s", str(wd / "bare.smk"), "--configfile", str(wd / "bare.yaml")]
    out = wd / f"{which}.out"
    # `--quiet all` keeps the console output short (the same for both workflows)
    cmd = [snakemake, *conf, "--directory", str(wd / f"run_{which}"), "-n", "--quiet", "all"]
    (wd / f"run_{which}").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    with open(out, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text()
    if p.returncode != 0:
        raise SystemExit(f"{which}: {' '.join(cmd)} failed ({p.returncode}):\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 1024, text


def job_total(text: str) -> int:
    """The `total` line of Snakemake's job stats."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total":
            return int(parts[1])
    raise SystemExit(f"no job stats in:\n{text[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated slide counts")
    ap.add_argument("--repeats", type=int, default=2, help="dry runs per workflow and size")
    ap.add_argument("--snakemake", default=str(Path(sys.executable).parent / "snakemake"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'N':>6} {'workflow':>8} {'jobs':>6} {'median s':>9} {'runs s':>18} {'peak MB':>8}")
    ratio = None
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="shazam-dag-") as tmp:
            wd = Path(tmp)
            make_cohort(wd, n)
            res: dict[str, list[tuple[float, float, str]]] = {"bare": [], "ours": []}
            for _ in range(args.repeats):
                for which in ("bare", "ours"):
                    res[which].append(dry_run(args.snakemake, wd, which))
            med = {}
            for which, runs in res.items():
                jobs = job_total(runs[0][2])
                med[which] = statistics.median(r[0] for r in runs)
                times = ", ".join(f"{r[0]:.2f}" for r in runs)
                rss = max(r[1] for r in runs)
                print(f"{n:>6} {which:>8} {jobs:>6} {med[which]:>9.2f} {times:>18} {rss:>8.0f}")
            ratio = med["ours"] / med["bare"]
            print(f"{n:>6} ratio ours/bare {ratio:.2f} (bar {BAR})", flush=True)
    print(f"RESULT dag_ratio {ratio:.2f} x")


if __name__ == "__main__":
    main()
