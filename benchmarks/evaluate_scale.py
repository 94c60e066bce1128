"""Report benchmark at cohort size: `evaluate_task` on a TCGA-sized task, one seed against
repeated cross-validation.

The report's cost grows with the runs it reads (folds × seeds) and the comparisons it makes
(the student against the best single teacher, early fusion, late fusion and the oracle, each
with a paired case bootstrap). This writes a synthetic task of ``--cases`` cases (default
1,000, a TCGA-sized cohort) with the models of a two-teacher run (two ABMILs, concat, the
student and two ablations; late fusion is derived), their splits and per-run outputs, for one
seed and for ``--seeds`` seeds, and times `evaluate_task` on each at the configured
bootstrap size (``--n-boot``, default 1000 as in `evaluation.n_boot`).

Run: ``python benchmarks/evaluate_scale.py`` (repository root, the venv first on PATH). The
last line is ``RESULT evaluate_repeat_cost <seconds with --seeds seeds / with one seed> x``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shazam.cohorts import build_cohort  # noqa: E402
from shazam.evaluate import EvalConfig, evaluate_task  # noqa: E402
from shazam.metrics import classification_metrics, survival_metrics  # noqa: E402
from shazam.splits import repeat_folds, write_splits  # noqa: E402
from shazam.tasks import TaskSpec  # noqa: E402

MODELS = ["abmil-a", "abmil-b", "concat", "shazam", "shazam-nodistill", "shazam-high"]


def write_task(root: Path, kind: str, n: int, seeds: list[int]):
    rng = np.random.default_rng(0)
    ids = [f"case{i:05d}" for i in range(n)]
    labels = root / "labels.csv"
    if kind == "classification":
        pd.DataFrame({"case_id": ids, "label": ["A", "B"] * (n // 2)}).to_csv(labels, index=False)
        spec = TaskSpec("t", "classification", str(labels), classes=("A", "B"), folds=5)
    else:
        t = rng.uniform(1, 120, n).round(2)
        cens = (rng.random(n) < 0.6).astype(int)
        pd.DataFrame({"case_id": ids, "m": t, "c": cens}).to_csv(labels, index=False)
        spec = TaskSpec("t", "survival", str(labels), time_col="m", event_col="c", folds=5)
    sheet = pd.DataFrame({"slide_id": [f"{c}_s" for c in ids], "path": "x", "case_id": ids})
    cohort = build_cohort(spec, sheet)
    cases = cohort.cases.set_index("case_id")
    folds = []
    for r in range(len(seeds)):
        _, f = repeat_folds(spec, sheet, r)
        write_splits(f, cohort, root / "splits", r)
        folds += f
    for mi, m in enumerate(MODELS):
        for k, fold in enumerate(folds):
            test = sorted(fold.loc[fold["split"] == "test", "case_id"])
            train = sorted(fold.loc[fold["split"] == "train", "case_id"])
            sub, tr = cases.loc[test], cases.loc[train]
            d = root / "models" / m / f"fold_{k}"
            d.mkdir(parents=True)
            skill = 0.3 + 0.05 * mi
            if kind == "classification":
                y = sub["y"].to_numpy()
                p = np.clip(skill * y + (1 - skill) * rng.random(len(y)), 0, 1)
                df = pd.DataFrame({"case_id": test, "label": sub["label"].to_numpy(),
                                   "pred": np.where(p > 0.5, "B", "A"), "prob_A": 1 - p,
                                   "prob_B": p})  # fmt: skip
                met, rea = classification_metrics(y, np.stack([1 - p, p], 1), 2)
            else:
                risk = -sub["time"].to_numpy() * skill + rng.normal(size=len(sub)) * 30
                tr_risk = -tr["time"].to_numpy() * skill + rng.normal(size=len(tr)) * 30
                df = pd.DataFrame({"case_id": test, "time": sub["time"].to_numpy(),
                                   "event": sub["event"].astype(int).to_numpy(),
                                   "risk": risk})  # fmt: skip
                met, rea = survival_metrics(sub["event"], sub["time"], risk, None,
                                            tr["event"], tr["time"], tr_risk)  # fmt: skip
            df.to_csv(d / "predictions.csv", index=False)
            val = {spec.primary_metric: 0.6 + 0.01 * mi}
            (d / "metrics.json").write_text(json.dumps({**met, "val": val, "reasons": rea}))
            n_cases = {s: int((fold["split"] == s).sum()) for s in ("train", "val", "test")}
            (d / "config.json").write_text(json.dumps({"n_cases": n_cases}))
    return spec, sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--kinds", default="classification,survival")
    a = ap.parse_args()
    cfg = EvalConfig(n_boot=a.n_boot)
    times = {}
    for kind in a.kinds.split(","):
        for n_seeds in (1, a.seeds):
            seeds = list(range(42, 42 + n_seeds))
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                spec, sheet = write_task(root, kind, a.cases, seeds)
                t0 = time.perf_counter()
                evaluate_task(spec, MODELS, ["a", "b"], sheet, root / "models", root / "splits",
                              root / "report", cfg=cfg, seeds=seeds)  # fmt: skip
                times[kind, n_seeds] = time.perf_counter() - t0
            print(f"{kind:15s} {a.cases} cases, {n_seeds} seed(s) × 5 folds: "
                  f"{times[kind, n_seeds]:.1f} s", flush=True)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak RSS of the process: {peak:.2f} GB")
    ratio = sum(times[k, a.seeds] for k in a.kinds.split(",")) / sum(
        times[k, 1] for k in a.kinds.split(",")
    )
    print(f"RESULT evaluate_repeat_cost {ratio:.2f} x")


if __name__ == "__main__":
    main()
