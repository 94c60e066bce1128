"""The report's verdict over repeated runs and its fair controls: the corrected resampled
t-test, repeated cross-validation folds, the comparison with early and late fusion, and the
models' parameter counts."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from shazam.cohorts import build_cohort
from shazam.evaluate import EvalConfig, evaluate_task
from shazam.evaluate.runs import model_params
from shazam.evaluate.stats import corrected_t
from shazam.metrics import classification_metrics
from shazam.models.registry import LATE_FUSION
from shazam.splits import repeat_folds, summary_name, write_splits
from shazam.tasks import TaskSpec

MODELS = ["abmil-a", "abmil-b", "concat", "shazam"]
WIDTH = {"abmil-a": 3, "abmil-b": 5, "concat": 7, "shazam": 11}  # weight rows per model


def test_corrected_t_known_answer():
    """Δ = 0.1 … 0.5 over 5 runs with n_test/n_train = 0.25: mean 0.3, s² = 0.025,
    se = √((1/5 + 0.25) · 0.025) = 0.10607, t = 2.828 on 4 df → p = 0.0474, and the 95%
    interval is 0.3 ± 2.776 · 0.10607. The uncorrected se (√(s²/5) = 0.0707) would be
    narrower: the correction widens it for the runs' shared training cases."""
    c = corrected_t([0.1, 0.2, None, 0.3, 0.4, 0.5], 0.25)
    assert c.runs == 5 and c.mean == pytest.approx(0.3)
    assert c.p == pytest.approx(0.0474, abs=2e-4)
    assert c.low == pytest.approx(0.3 - 2.7764 * 0.10607, abs=1e-3)
    assert c.high == pytest.approx(0.3 + 2.7764 * 0.10607, abs=1e-3)
    assert corrected_t([0.2], 0.25).low is None  # one run: no test
    flat = corrected_t([0.1, 0.1, 0.1], 0.25)
    assert flat.low == flat.high == pytest.approx(0.1) and flat.p is None


def _task(tmp_path, n_cases=40, folds=4):
    ids = [f"case{i:03d}" for i in range(n_cases)]
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"case_id": ids, "label": ["A", "B"] * (n_cases // 2)}).to_csv(labels, index=False)
    spec = TaskSpec("subtype", "classification", str(labels), classes=("A", "B"), folds=folds)
    sheet = pd.DataFrame({"slide_id": [f"{c}_s" for c in ids], "path": "x.svs", "case_id": ids})
    return spec, sheet


def test_repetitions_deal_new_folds_and_continue_the_numbering(tmp_path):
    spec, sheet = _task(tmp_path)
    cohort, first = repeat_folds(spec, sheet, 0)
    _, again = repeat_folds(spec, sheet, 0)
    _, second = repeat_folds(spec, sheet, 1)
    assert all(a.equals(b) for a, b in zip(first, again, strict=True))  # seeded
    test_sets = [set(f.loc[f["split"] == "test", "case_id"]) for f in (*first, *second)]
    assert test_sets[:4] != test_sets[4:]  # repetition 1 is dealt again
    for folds in (test_sets[:4], test_sets[4:]):  # each repetition's tests partition the cohort
        assert sorted(c for s in folds for c in s) == sorted(cohort.cases["case_id"])
    write_splits(first, cohort, tmp_path / "s", 0)
    paths = write_splits(second, cohort, tmp_path / "s", 1)
    assert [p.name for p in paths] == [f"fold_{k}.csv" for k in range(4, 8)]
    assert (tmp_path / "s" / summary_name(1)).name == "summary_repeat1.tsv"
    assert (tmp_path / "s" / "summary_repeat1.tsv").exists()
    # imported splits cannot be dealt again: every repetition reuses them
    imported = tmp_path / "imported.csv"
    table = first[0].rename(columns={"split": "fold_0"})
    for k in range(1, 4):
        table[f"fold_{k}"] = first[k]["split"].to_numpy()
    table.to_csv(imported, index=False)
    spec_imp = TaskSpec(**{**spec.__dict__, "splits": str(imported)})
    _, r0 = repeat_folds(spec_imp, sheet, 0)
    _, r2 = repeat_folds(spec_imp, sheet, 2)
    assert all(a.equals(b) for a, b in zip(r0, r2, strict=True))


def _write_runs(tmp_path, spec, sheet, seeds, skill, params=True):
    """Splits of every repetition and model outputs of every run; ``skill(model, run)`` is
    the share of test cases the model gets right."""
    cohort = build_cohort(spec, sheet)
    split_dir = tmp_path / "splits"
    folds = []
    for r in range(len(seeds)):
        _, f = repeat_folds(spec, sheet, r)
        write_splits(f, cohort, split_dir, r)
        folds += f
    cases = cohort.cases.set_index("case_id")
    models_dir = tmp_path / "models"
    rng = np.random.default_rng(0)
    for m in MODELS:
        for k, fold in enumerate(folds):
            test = sorted(fold.loc[fold["split"] == "test", "case_id"])
            y = cases.loc[test, "y"].to_numpy()
            right = np.arange(len(y)) < round(skill(m, k) * len(y))
            right = right[rng.permutation(len(y))] if m == "concat" else right
            pred = np.where(right, y, 1 - y)
            p_b = np.where(pred == 1, 0.8, 0.2)
            d = models_dir / m / f"fold_{k}"
            d.mkdir(parents=True)
            pd.DataFrame(
                {"case_id": test, "label": np.array(["A", "B"])[y],
                 "pred": np.array(["A", "B"])[pred], "prob_A": 1 - p_b, "prob_B": p_b}
            ).to_csv(d / "predictions.csv", index=False)  # fmt: skip
            met, rea = classification_metrics(y, np.stack([1 - p_b, p_b], 1), 2)
            val = {"balanced_accuracy": 0.6 + 0.01 * MODELS.index(m)}
            (d / "metrics.json").write_text(json.dumps({**met, "val": val, "reasons": rea}))
            n = {sp: int((fold["split"] == sp).sum()) for sp in ("train", "val", "test")}
            (d / "config.json").write_text(json.dumps({"train": {"seed": seeds[k // 4]},
                                                       "n_cases": n}))  # fmt: skip
            if params:
                w = {"head.weight": torch.zeros(WIDTH[m], 4), "head.bias": torch.zeros(2),
                     "input_scaler.a.mean": torch.zeros(100)}  # fmt: skip
                save_file(w, str(d / "model.safetensors"))
    return models_dir, split_dir


def test_two_seeds_verdict_uses_both_runs(tmp_path):
    """The student is far better on the first seed's folds and far worse on the second's:
    a verdict from the first seed alone would call it better; over both runs the corrected
    interval includes 0, and the report says how many runs and cases it rests on."""
    spec, sheet = _task(tmp_path)

    def skill(m, k):
        if m != "shazam":
            return 0.6
        return 0.95 if k < 4 else 0.25

    models_dir, split_dir = _write_runs(tmp_path, spec, sheet, [42, 43], skill)
    out = tmp_path / "report"
    head = evaluate_task(spec, MODELS, ["a", "b"], sheet, models_dir, split_dir, out,
                         cfg=EvalConfig(n_boot=50), seeds=[42, 43])  # fmt: skip
    comp = pd.read_csv(out / "comparison.tsv", sep="\t")
    first = comp.iloc[0]
    assert first["n_runs"] == 8 and head["runs"] == 8
    deltas = [first[f"delta_fold_{k}"] for k in range(8)]
    assert all(d > 0 for d in deltas[:4]) and all(d < 0 for d in deltas[4:])
    c = corrected_t(deltas, first["test_train_ratio"])
    assert first["corrected_low"] == pytest.approx(c.low)
    assert first["corrected_low"] < 0 < first["corrected_high"]
    assert np.isnan(first["wilcoxon_p"])  # runs of two seeds share test cases
    # the first seed alone: the student looks better
    assert corrected_t(deltas[:4], first["test_train_ratio"]).low > 0
    md = (out / "report.md").read_text()
    assert "all 8 runs (2 seed(s) × 4 fold(s)) on 40 cases" in md
    assert "not distinguishable from 0" in md.split("## Results")[0]
    assert "repeated with 2 seeds (8 runs)" in md
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    row = summary[(summary["model"] == "shazam") & (summary["metric"] == "balanced_accuracy")]
    assert row.iloc[0]["n_folds"] == 8


def test_one_seed_report_says_what_its_interval_covers(tmp_path):
    spec, sheet = _task(tmp_path)
    models_dir, split_dir = _write_runs(
        tmp_path, spec, sheet, [42], lambda m, k: 0.95 if m == "shazam" else 0.6
    )
    out = tmp_path / "report"
    evaluate_task(spec, MODELS, ["a", "b"], sheet, models_dir, split_dir, out,
                  cfg=EvalConfig(n_boot=50), seeds=[42])  # fmt: skip
    md = (out / "report.md").read_text()
    assert "all 4 runs (1 seed(s) × 4 fold(s)) on 40 cases" in md
    assert "One training seed and one cross-validation" in md
    assert "the student is **better**" in md.split("## Results")[0]


def test_fair_controls_and_parameter_counts(tmp_path):
    """The student is compared with the best single teacher chosen on validation, with early
    fusion (concat) and with late fusion; every model's parameter count is shown."""
    spec, sheet = _task(tmp_path)
    models_dir, split_dir = _write_runs(
        tmp_path, spec, sheet, [42], lambda m, k: 0.9 if m == "shazam" else 0.6
    )
    out = tmp_path / "report"
    evaluate_task(spec, MODELS, ["a", "b"], sheet, models_dir, split_dir, out,
                  cfg=EvalConfig(n_boot=30))  # fmt: skip
    comp = pd.read_csv(out / "comparison.tsv", sep="\t")
    assert list(comp["baseline"][:3]) == ["abmil-b", "concat", LATE_FUSION]
    assert "validation" in comp.iloc[0]["comparison"]
    params = {m: WIDTH[m] * 4 + 2 for m in MODELS}  # input_scaler.* is not a parameter
    assert model_params(models_dir / "shazam/fold_0/model.safetensors") == params["shazam"]
    assert (comp["params_student"] == params["shazam"]).all()
    assert comp.iloc[1]["params_baseline"] == params["concat"]
    assert comp.iloc[2]["params_baseline"] == params["abmil-a"] + params["abmil-b"]
    summary = pd.read_csv(out / "summary.tsv", sep="\t").drop_duplicates("model")
    got = dict(zip(summary["model"], summary["params"], strict=True))
    assert got == {**params, LATE_FUSION: params["abmil-a"] + params["abmil-b"]}
    md = (out / "report.md").read_text()
    answer = md.split("## Results")[0]
    assert "Against early fusion (concat)" in answer and "Against late fusion" in answer
    assert f"{params['shazam']:,} parameters" in answer
