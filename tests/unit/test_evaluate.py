"""Evaluation report: bootstrap CIs and the paired test against known answers, late fusion,
and the whole report on small synthetic model outputs (the demo's report is checked in
test_workflow.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from shazam.cohorts import build_cohort
from shazam.evaluate import EvalConfig, evaluate_task
from shazam.evaluate.runs import ModelRun, late_fusion, prediction_metrics
from shazam.evaluate.stats import (
    _resample,
    bootstrap_ci,
    case_clusters,
    paired_bootstrap,
    percentile_ci,
    wilcoxon_p,
)
from shazam.evaluate.tables import compare
from shazam.metrics import classification_metrics, survival_metrics
from shazam.models.registry import LATE_FUSION
from shazam.splits import make_splits, write_splits
from shazam.tasks import TaskSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_percentile_ci_ignores_undefined_draws():
    assert percentile_ci([None, 1.0, float("nan"), 1.0]) == (1.0, 1.0, 2)
    assert percentile_ci([None, None]) == (None, None, 0)


def test_bootstrap_ci_of_accuracy_matches_the_binomial_interval():
    """Accuracy 0.7 on 400 cases: the normal-approximation 95% CI is 0.7 ± 0.045."""
    y = np.zeros(400, int)
    y[:200] = 1
    prob = np.zeros((400, 2))
    correct = np.zeros(400, bool)
    correct[::10] = True
    correct[np.arange(400) % 10 < 7] = True  # exactly 70 % right
    pred = np.where(correct, y, 1 - y)
    prob[np.arange(400), pred] = 0.9
    prob[np.arange(400), 1 - pred] = 0.1

    def stat(idx):
        return classification_metrics(y[idx], prob[idx], 2, only=("accuracy",))[0]

    lo, hi, n = bootstrap_ci(stat, 400, n_boot=500, seed=0)["accuracy"]
    half = 1.96 * np.sqrt(0.7 * 0.3 / 400)
    assert n == 500
    assert lo == pytest.approx(0.7 - half, abs=0.015)
    assert hi == pytest.approx(0.7 + half, abs=0.015)
    # seeded: the same answer twice
    assert bootstrap_ci(stat, 400, n_boot=50, seed=3) == bootstrap_ci(stat, 400, n_boot=50, seed=3)


def test_bootstrap_ci_of_a_perfect_model_is_a_point():
    y = np.array([0, 1] * 20)
    prob = np.eye(2)[y]
    cis = bootstrap_ci(
        lambda idx: classification_metrics(y[idx], prob[idx], 2, only=("auc_macro",))[0],
        40,
        n_boot=200,
    )
    assert cis["auc_macro"][:2] == (1.0, 1.0)


def test_case_clusters_group_rows_of_a_case():
    assert case_clusters(["a", "b", "c"]) is None  # one row per case: the plain bootstrap
    groups = case_clusters(["a", "b", "a", "c", "b"])
    assert [list(g) for g in groups] == [[0, 2], [1, 4], [3]]


def test_cluster_bootstrap_draws_whole_cases():
    """40 cases of 10 identical images, 70% of cases right: images are not independent, so
    the CI must be the case-level one (±0.14), not the image-level one (±0.045)."""
    n_cases, per = 40, 10
    case_right = np.arange(n_cases) % 10 < 7
    y = np.repeat(np.arange(n_cases) % 2, per)
    pred = np.where(np.repeat(case_right, per), y, 1 - y)
    prob = np.eye(2)[pred]
    cases = np.repeat([f"c{i}" for i in range(n_cases)], per)

    def stat(idx):
        return classification_metrics(y[idx], prob[idx], 2, only=("accuracy",))[0]

    n = n_cases * per
    lo, hi, _ = bootstrap_ci(stat, n, n_boot=400, seed=0, clusters=case_clusters(cases))["accuracy"]
    nlo, nhi, _ = bootstrap_ci(stat, n, n_boot=400, seed=0)["accuracy"]
    half = 1.96 * np.sqrt(0.7 * 0.3 / n_cases)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.25)
    assert (hi - lo) > 2.5 * (nhi - nlo)
    # every draw is whole cases: each sampled index set holds a multiple of 10 per case
    (idx,) = _resample(np.random.default_rng(1), [n], [case_clusters(cases)])
    counts = pd.Series(cases[idx]).value_counts()
    assert len(idx) == n and (counts % per == 0).all()


def test_stratified_bootstrap_draws_within_each_stratum():
    """Strata (the test folds): every resample holds each stratum's own number of rows, drawn
    from that stratum only."""
    strata = [np.array([0, 3, 5]), np.array([1, 2, 4, 6, 7])]

    def stat(idx):
        return {"n0": int(np.isin(idx, strata[0]).sum()), "n": len(idx)}

    cis = bootstrap_ci(stat, 8, n_boot=30, seed=0, strata=strata)
    assert cis["n0"] == (3.0, 3.0, 30) and cis["n"] == (8.0, 8.0, 30)


def _cls_folds(rng, n_folds=5, n=30, skill=0.0):
    """Per fold a prediction table; skill 1 = perfect probabilities, 0 = random."""
    folds = []
    for k in range(n_folds):
        y = np.array(["A", "B"] * (n // 2))
        noise = rng.random(n)
        p_b = skill * (y == "B") + (1 - skill) * noise
        folds.append(
            pd.DataFrame(
                {
                    "case_id": [f"c{k}_{i:02d}" for i in range(n)],
                    "label": y,
                    "pred": np.where(p_b > 0.5, "B", "A"),
                    "prob_A": 1 - p_b,
                    "prob_B": p_b,
                }
            )
        )
    return folds


CLS = TaskSpec(name="t", type="classification", labels="x.csv", classes=("A", "B"), folds=5)
SURV = TaskSpec(name="s", type="survival", labels="x.csv", time_col="t", event_col="e", folds=5)


def _run(name, folds, spec=CLS):
    return ModelRun(name, folds, [{} for _ in folds])


def test_identical_models_have_zero_delta_and_a_ci_containing_zero():
    folds = _cls_folds(np.random.default_rng(0), skill=0.3)
    p = compare(
        _run("shazam", folds),
        _run("abmil-a", folds),
        CLS,
        "balanced_accuracy",
        "x",
        EvalConfig(n_boot=50),
    )
    assert p.per_fold == [0.0] * 5 and p.mean == 0.0
    assert p.ci_low <= 0 <= p.ci_high and not p.excludes_zero
    assert p.wilcoxon_p is None and "0" in wilcoxon_p(p.per_fold)[1]


def test_a_planted_large_improvement_has_a_ci_excluding_zero():
    rng = np.random.default_rng(1)
    good, bad = _cls_folds(rng, skill=1.0), _cls_folds(rng, skill=0.0)
    for g, b in zip(good, bad, strict=True):  # same test cases, same labels
        b["case_id"], b["label"] = g["case_id"], g["label"]
    p = compare(
        _run("shazam", good),
        _run("abmil-a", bad),
        CLS,
        "balanced_accuracy",
        "x",
        EvalConfig(n_boot=100),
    )
    assert all(d > 0.2 for d in p.per_fold)
    assert p.mean > 0.3 and p.ci_low > 0.2 and p.excludes_zero
    # five positive folds: the smallest two-sided exact Wilcoxon p, and the report says so
    assert p.wilcoxon_p == pytest.approx(0.0625) and "0.0625" in p.note
    # and the other way round: a CI entirely below 0
    q = compare(
        _run("shazam", bad),
        _run("abmil-a", good),
        CLS,
        "balanced_accuracy",
        "x",
        EvalConfig(n_boot=100),
    )
    assert q.ci_high < 0 and q.excludes_zero


def test_paired_bootstrap_known_constant_shift():
    """metric a = metric b + 0.1 on every resample: Δ is exactly 0.1 everywhere."""
    sizes = [10, 12, 8]

    def a(k, idx):
        return float(np.mean(idx)) + 0.1

    def b(k, idx):
        return float(np.mean(idx))

    per_fold, mean, (lo, hi, n) = paired_bootstrap(a, b, sizes, n_boot=100, seed=0)
    assert per_fold == pytest.approx([0.1] * 3) and mean == pytest.approx(0.1)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1) and n == 100


def test_late_fusion_of_two_identical_baselines_is_the_baseline():
    folds = _cls_folds(np.random.default_rng(2), skill=0.4)
    fused = late_fusion([_run("abmil-a", folds), _run("abmil-b", folds)], CLS)
    for f, base in zip(fused, folds, strict=True):
        base = base.sort_values("case_id").reset_index(drop=True)
        assert np.allclose(f[["prob_A", "prob_B"]], base[["prob_A", "prob_B"]])
        assert (f["pred"] == base["pred"]).all()
        assert prediction_metrics(f, CLS)[0] == prediction_metrics(base, CLS)[0]


def test_late_fusion_of_identical_survival_baselines_keeps_the_ranking():
    rng = np.random.default_rng(3)
    folds = [
        pd.DataFrame(
            {
                "case_id": [f"c{k}_{i}" for i in range(20)],
                "time": rng.uniform(1, 50, 20),
                "event": rng.integers(0, 2, 20),
                "risk": rng.normal(size=20),
            }
        )
        for k in range(3)
    ]
    fused = late_fusion([_run("abmil-a", folds, SURV), _run("abmil-b", folds, SURV)], SURV)
    for f, base in zip(fused, folds, strict=True):
        base = base.sort_values("case_id").reset_index(drop=True)
        c_f = survival_metrics(f["event"], f["time"], f["risk"], only=("c_index",))[0]
        c_b = survival_metrics(base["event"], base["time"], base["risk"], only=("c_index",))[0]
        assert c_f["c_index"] == pytest.approx(c_b["c_index"])
        assert (np.argsort(f["risk"].to_numpy()) == np.argsort(base["risk"].to_numpy())).all()


def test_late_fusion_refuses_models_tested_on_different_cases():
    a = _cls_folds(np.random.default_rng(4))
    b = [df.assign(case_id=df["case_id"] + "x") for df in a]
    with pytest.raises(ValueError, match="other test cases"):
        late_fusion([_run("abmil-a", a), _run("abmil-b", b)], CLS)


# --------------------------------------------------------------------------- whole report


def _write_task(tmp_path, kind, models, teachers, n_cases=40, folds=4, single_class_fold=None):
    """Labels, sheet, splits and per-fold model outputs of a synthetic task."""
    rng = np.random.default_rng(5)
    ids = [f"case{i:03d}" for i in range(n_cases)]
    labels = tmp_path / "labels.csv"
    if kind == "classification":
        y = np.array(["A", "B"] * (n_cases // 2))
        pd.DataFrame({"case_id": ids, "label": y}).to_csv(labels, index=False)
        spec = TaskSpec(
            name="subtype",
            type="classification",
            labels=str(labels),
            classes=("A", "B"),
            folds=folds,
        )
    else:
        t = rng.uniform(1, 60, n_cases).round(2)
        cens = (rng.random(n_cases) < 0.4).astype(int)
        pd.DataFrame({"case_id": ids, "months": t, "censorship": cens}).to_csv(labels, index=False)
        spec = TaskSpec(
            name="os",
            type="survival",
            labels=str(labels),
            time_col="months",
            event_col="censorship",
            folds=folds,
        )
    sheet = pd.DataFrame({"slide_id": [f"{c}_s1" for c in ids], "path": "x.svs", "case_id": ids})
    cohort = build_cohort(spec, sheet)
    split_dir = tmp_path / "splits"
    fold_tables = make_splits(cohort)
    write_splits(fold_tables, cohort, split_dir)
    cases = cohort.cases.set_index("case_id")
    models_dir = tmp_path / "models"
    for mi, m in enumerate(models):
        skill = 0.2 + 0.15 * mi
        for k, fold in enumerate(fold_tables):
            test = sorted(fold.loc[fold["split"] == "test", "case_id"])
            sub = cases.loc[test]
            d = models_dir / m / f"fold_{k}"
            d.mkdir(parents=True)
            if kind == "classification":
                yi = sub["y"].to_numpy()
                if k == single_class_fold:
                    yi = np.zeros_like(yi)
                p_b = np.clip(skill * yi + (1 - skill) * rng.random(len(yi)), 0, 1)
                lab = np.array(spec.classes)[yi]
                pred = pd.DataFrame(
                    {
                        "case_id": test,
                        "label": lab,
                        "pred": np.where(p_b > 0.5, "B", "A"),
                        "prob_A": 1 - p_b,
                        "prob_B": p_b,
                    }
                )
                met, rea = classification_metrics(yi, pred[["prob_A", "prob_B"]].to_numpy(), 2)
            else:
                risk = -sub["time"].to_numpy() * skill + rng.normal(size=len(sub)) * 20
                pred = pd.DataFrame(
                    {
                        "case_id": test,
                        "time": sub["time"].to_numpy(),
                        "event": sub["event"].astype(int).to_numpy(),
                        "risk": risk,
                    }
                )
                train_risk = risk + rng.normal(size=len(risk))  # a cut-off like training's
                met, rea = survival_metrics(sub["event"], sub["time"], risk, train_risk=train_risk)
            pred.to_csv(d / "predictions.csv", index=False)
            metrics = {
                **met,
                "val": {
                    k2: (v + 0.01 * mi if isinstance(v, float) else v) for k2, v in met.items()
                },
                "reasons": rea,
                "selected_epoch": 3,
            }
            if m.startswith("shazam"):
                metrics["gate_mean"] = {t: 1 / len(teachers) for t in teachers}
            (d / "metrics.json").write_text(json.dumps(metrics))
            (d / "config.json").write_text(json.dumps({"train": {"epochs": 5}, "bins": None}))
    return spec, sheet, models_dir, split_dir


FULL = ["abmil-a", "abmil-b", "concat", "shazam", "shazam-nodistill"]


@pytest.mark.parametrize("kind", ["classification", "survival"])
def test_report_on_synthetic_outputs(tmp_path, kind):
    spec, sheet, models_dir, split_dir = _write_task(tmp_path, kind, FULL, ["a", "b"])
    out = tmp_path / "report"
    head = evaluate_task(
        spec, FULL, ["a", "b"], sheet, models_dir, split_dir, out, cfg=EvalConfig(n_boot=40)
    )
    for f in (
        "per_fold.tsv",
        "summary.tsv",
        "comparison.tsv",
        "dataset.tsv",
        "report.md",
        "report.html",
    ):
        assert (out / f).stat().st_size > 0, f
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert set(summary["model"]) == set(FULL) | {LATE_FUSION}
    primary = "balanced_accuracy" if kind == "classification" else "c_index"
    row = summary[(summary["model"] == "shazam") & (summary["metric"] == primary)].iloc[0]
    assert row["ci_low"] <= row["pooled"] <= row["ci_high"] and row["n_folds"] == 4
    comp = pd.read_csv(out / "comparison.tsv", sep="\t")
    assert comp.iloc[0]["student"] == "shazam" and "validation" in comp.iloc[0]["comparison"]
    # the baseline is chosen on validation: abmil-b has the higher val score by construction
    assert head["baseline_val"] == "abmil-b"
    per_fold = pd.read_csv(out / "per_fold.tsv", sep="\t")
    assert len(per_fold[(per_fold["metric"] == primary) & (per_fold["model"] == "shazam")]) == 4
    expected = {"metrics", "gate", "delta"} | (
        {"roc", "confusion"} if kind == "classification" else {"km"}
    )
    assert set(head["figures"]) == expected
    for name in expected:
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 2000
    md = (out / "report.md").read_text()
    order = [
        md.index(s)
        for s in (
            "## Answer",
            "## Results per model",
            "## Paired comparison",
            "## Figures",
            "## Dataset",
            "## Protocol",
            "## Software",
        )
    ]
    assert order == sorted(order)
    assert "95% CI" in md and "abmil-b" in md and "figures/metrics.png" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(expected)
    if kind == "survival":  # p-values are pooled, not averaged; the C-index within folds
        lr = summary[summary["metric"] == "logrank_p"]
        assert lr["mean"].isna().all() and lr["sd"].isna().all()
        assert lr["note"].str.contains("not averaged").all()
        assert lr.loc[lr["model"] == "shazam", "pooled"].notna().all()
        assert "pooled within folds" in md and "pooled within folds" in row["note"]
        assert per_fold["metric"].isin(["n_beyond_followup", "risk_cutoff"]).any()


def test_undefined_metrics_are_reported_not_fatal(tmp_path):
    spec, sheet, models_dir, split_dir = _write_task(
        tmp_path, "classification", FULL, ["a", "b"], single_class_fold=1
    )
    out = tmp_path / "report"
    evaluate_task(
        spec, FULL, ["a", "b"], sheet, models_dir, split_dir, out, cfg=EvalConfig(n_boot=20)
    )
    per_fold = pd.read_csv(out / "per_fold.tsv", sep="\t")
    auc = per_fold[(per_fold["metric"] == "auc_macro") & (per_fold["fold"] == 1)]
    assert auc["test"].isna().all() and auc["reason"].str.contains("only class").all()
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    row = summary[(summary["model"] == "shazam") & (summary["metric"] == "auc_macro")].iloc[0]
    assert row["n_folds"] == 3 and "fold 1" in row["missing"]
    assert "undefined on some folds" in (out / "report.md").read_text()


def test_one_teacher_config_reports_without_a_student(tmp_path):
    spec, sheet, models_dir, split_dir = _write_task(tmp_path, "survival", ["abmil-a"], ["a"])
    out = tmp_path / "report"
    head = evaluate_task(
        spec, ["abmil-a"], ["a"], sheet, models_dir, split_dir, out, cfg=EvalConfig(n_boot=20)
    )
    assert "mean_delta" not in head and set(head["figures"]) == {"metrics", "km"}
    md = (out / "report.md").read_text()
    assert "need two or more" in md and "abmil-a" in md
    assert set(pd.read_csv(out / "summary.tsv", sep="\t")["model"]) == {"abmil-a"}
    assert pd.read_csv(out / "comparison.tsv", sep="\t").empty


def test_missing_model_output_names_the_file(tmp_path):
    spec, sheet, models_dir, split_dir = _write_task(tmp_path, "classification", ["abmil-a"], ["a"])
    (models_dir / "abmil-a/fold_2/predictions.csv").unlink()
    with pytest.raises(ValueError, match=r"abmil-a, fold 2: .*predictions.csv is missing"):
        evaluate_task(spec, ["abmil-a"], ["a"], sheet, models_dir, split_dir, tmp_path / "r")


# --------------------------------------------------------------------------- pooled survival


def _surv_run(name, times, events, risks, folds, cutoffs=None):
    """A survival model's run: per fold its predictions and metrics (``cutoffs``: the fold's
    recorded training median risk; None: not recorded, as in older runs)."""
    preds, metrics = [], []
    for k in np.unique(folds):
        sel = folds == k
        df = pd.DataFrame(
            {
                "case_id": [f"c{i:03d}" for i in np.flatnonzero(sel)],
                "time": times[sel],
                "event": events[sel].astype(int),
                "risk": risks[sel],
            }
        )
        tr = None if cutoffs is None else np.full(3, cutoffs[k])
        m, r = survival_metrics(events[sel], times[sel], risks[sel], train_risk=tr)
        preds.append(df)
        metrics.append({**m, "val": {}, "reasons": r})
    return ModelRun(name, preds, metrics)


@pytest.mark.parametrize("shift", [0.0, 100.0])
def test_pooled_c_index_of_a_perfect_model_is_one_within_folds(shift):
    """risk = −time ranks every fold perfectly (C = 1 per fold). Folds stratified by time, or
    one fold's times shifted: pairs across folds compare different models' risk scales, so
    only pairs within a fold may be counted — the pooled C is then 1.0 too, with a CI of 1."""
    from shazam.evaluate.runs import pooled_predictions
    from shazam.evaluate.tables import summary_table

    rng = np.random.default_rng(8)
    t = np.sort(rng.uniform(1, 60, 100))
    folds = np.arange(100) % 5  # each fold spans the times (time-stratified)
    t = t + shift * (folds == 4)
    e = rng.random(100) < 0.7
    e[:5] = True
    risk = -t + 50 * folds  # each fold's model on its own scale: perfect within the fold
    run = _surv_run("abmil-a", t, e, risk, folds)
    pooled = {"abmil-a": pooled_predictions(run, SURV)}
    s = summary_table({"abmil-a": run}, pooled, SURV, EvalConfig(n_boot=50))
    row = s.set_index("metric").loc["c_index"]
    assert row["mean"] == 1.0 and row["pooled"] == 1.0
    assert (row["ci_low"], row["ci_high"], row["n_boot"]) == (1.0, 1.0, 50)


def test_km_groups_and_pooled_logrank_follow_the_training_cut_off(tmp_path, monkeypatch):
    """Each fold's cut-off (its training median risk) differs from its test median: the
    Kaplan–Meier groups follow the recorded cut-off, summary.tsv has no mean of per-fold
    p-values, and its pooled p is the log-rank p of exactly the figure's groups."""
    from lifelines.statistics import logrank_test

    from shazam.evaluate import figures
    from shazam.evaluate.pooled import risk_groups
    from shazam.evaluate.runs import pooled_predictions
    from shazam.evaluate.tables import summary_table

    rng = np.random.default_rng(9)
    n = 100
    folds = np.arange(n) % 5
    t = rng.uniform(1, 60, n)
    e = rng.random(n) < 0.7
    risk = -t / 10 + rng.normal(size=n) + 3 * folds  # informative, a scale per fold
    cutoffs = {k: float(np.percentile(risk[folds == k], 25)) for k in range(5)}
    run = _surv_run("abmil-a", t, e, risk, folds, cutoffs)
    pooled = pooled_predictions(run, SURV)
    high, why = risk_groups(pooled, run)
    want = pooled["risk"].to_numpy() > pooled["fold"].map(cutoffs).to_numpy()
    assert not why and (high == want).all()
    assert high.sum() == 75  # a quarter low: not the test median's half
    pt, pe = pooled["time"].to_numpy(), pooled["event"].to_numpy().astype(bool)
    p = logrank_test(pt[high], pt[~high], pe[high], pe[~high]).p_value
    s = summary_table({"abmil-a": run}, {"abmil-a": pooled}, SURV, EvalConfig(n_boot=20))
    row = s.set_index("metric").loc["logrank_p"]
    assert pd.isna(row["mean"]) and pd.isna(row["sd"]) and pd.isna(row["val_mean"])
    assert "not averaged" in row["note"] and row["missing"] == ""
    assert row["pooled"] == pytest.approx(p)
    # the figure draws the same groups and prints the same p
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    figures.fig_km({"abmil-a": pooled}, {"abmil-a": run}, ["abmil-a"], SURV, tmp_path / "km.png")
    ax = drawn[0].axes[0]
    assert f"log-rank p = {p:.2g}" in ax.get_title()
    labels = [x.get_text() for x in ax.get_legend().get_texts()]
    assert f"high risk (n={high.sum()}, {pe[high].sum()} events)" in labels
    # no recorded cut-off (older runs, late fusion): None with the reason, not a crash
    old = _surv_run("abmil-a", t, e, risk, folds)
    pooled_old = pooled_predictions(old, SURV)
    s = summary_table({"abmil-a": old}, {"abmil-a": pooled_old}, SURV, EvalConfig(n_boot=5))
    row = s.set_index("metric").loc["logrank_p"]
    assert pd.isna(row["pooled"]) and "no risk cut-off for folds 0, 1, 2, 3, 4" in row["missing"]
    figures.fig_km({"a": pooled_old}, {"a": old}, ["a"], SURV, tmp_path / "km.png")
    assert "no risk cut-off" in drawn[1].axes[0].texts[0].get_text().replace("\n", " ")
