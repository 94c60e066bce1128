"""The demo run's external cohort and heatmaps (config `external`, `heatmaps`): predicted by
every trained model, validated where labelled, drawn per fold, and shown in the reports."""

import h5py
import numpy as np
import pandas as pd
import pytest

from shazam.demo import demo_tiles_plan, external_plan
from shazam.evaluate.external import internal_baseline
from shazam.models import registry
from shazam.tasks import TaskSpec
from tests.workflow.test_workflow import _assert_png, _demo_config

COHORT = "demo_external"


def _plan(cfg):
    return external_plan(cfg["demo"].get("external_seed", 1), cfg["demo"]["external_cases"])


@pytest.mark.slow
def test_demo_external_cohort_is_predicted_by_every_model_of_every_task(demo_run):
    wd, _ = demo_run
    cfg = _demo_config(wd)
    plan = _plan(cfg)
    cases = sorted({s.case_id for s in plan})
    blank = {s.case_id for s in plan if s.blank}
    ablations = cfg["shazam"]["ablations"]
    for task, t in cfg["tasks"].items():
        tile = t["type"] == "tile_classification"
        runs = t.get("folds", 5)
        for model in registry.roster(cfg["teachers"], ablations, tile=tile):
            table = pd.read_csv(wd / f"results/predictions/{COHORT}/{task}/{model}.tsv",
                                sep="\t", keep_default_na=False)  # fmt: skip
            if tile:  # one row per image of the cohort's ROI set, with its label
                images = demo_tiles_plan(1, cfg["demo"]["external_tile_cases"], prefix="roi_ext")
                assert sorted(table["image_id"]) == sorted(f"tiles/{p.image_id}" for p in images)
                assert list(table["label"]) == [i.split("/")[1] for i in table["image_id"]]
            else:  # one row per case; the blank case is listed, not predicted
                assert sorted(table["case_id"]) == cases
                no_patches = set(table.loc[table["note"] == "no patches", "case_id"])
                assert no_patches == blank
            scored = table[table["note"] == ""]
            if t["type"] == "survival":
                folds = [f"risk_fold{k}" for k in range(runs)]
                ranks = scored["risk_rank"].astype(float)
                assert ranks.between(0, 1).all() and ranks.nunique() > 1
            else:
                folds = [f"prob_{c}_fold{k}" for k in range(runs) for c in t["classes"]]
                probs = scored[[f"prob_{c}" for c in t["classes"]]].astype(float)
                np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
                fold_mean = np.mean([scored[f"prob_A_fold{k}"].astype(float)
                                     for k in range(runs)], axis=0)  # fmt: skip
                np.testing.assert_allclose(probs["prob_A"], fold_mean, rtol=1e-5)
            assert set(folds) <= set(table.columns)  # each fold's own output


@pytest.mark.slow
def test_demo_external_reports_compare_against_the_internally_chosen_teacher(demo_run):
    wd, _ = demo_run
    cfg = _demo_config(wd)
    for task, t in cfg["tasks"].items():
        d = wd / f"results/external/{COHORT}/{task}"
        for f in ("metrics.tsv", "comparison.tsv", "report.md", "report.html"):
            assert (d / f).stat().st_size > 0, d / f
        for png in (d / "figures").glob("*.png"):
            _assert_png(png)
        spec = TaskSpec.from_config(task, t)
        chosen = internal_baseline(wd / f"results/report/{task}/summary.tsv", spec)
        comparison = pd.read_csv(d / "comparison.tsv", sep="\t")
        first = comparison.iloc[0]
        assert "internal validation" in first["comparison"] and first["baseline"] == chosen
        metrics = pd.read_csv(d / "metrics.tsv", sep="\t")
        primary = metrics[(metrics["estimate"] == "ensemble")
                          & (metrics["metric"] == spec.primary_metric)]  # fmt: skip
        assert primary["value"].notna().all()
        md = (d / "report.md").read_text()
        if t["type"] == "classification":  # the XOR subtype: fusion learns it, on new slides too
            student = primary.set_index("model").loc["shazam"]
            assert student["value"] >= 0.75 and student["ci_low"] <= student["value"]
        if t["type"] != "tile_classification":  # the blank case is named, not scored
            assert "ext_blank" in md
            assert "## Where the models look" in md and "ext0" in md.split("## Where")[1]


@pytest.mark.slow
def test_demo_heatmaps_draw_fold_test_slides_and_the_external_cohort(demo_run):
    wd, _ = demo_run
    cfg = _demo_config(wd)
    per_class = cfg["heatmaps"]["per_class"]
    for task in ("subtype", "os"):
        fold = pd.read_csv(wd / f"results/splits/{task}/fold_0.csv")
        test = set(fold.loc[fold["split"] == "test", "case_id"])
        for model in ["shazam"] + [f"abmil-{t}" for t in cfg["teachers"]]:
            d = wd / f"results/heatmaps/{task}/{model}/fold_0"
            index = pd.read_csv(d / "index.tsv", sep="\t", keep_default_na=False)
            drawn = index[index["source"] == "test"]
            assert set(drawn["case_id"]) <= test  # the fold's own test cases only
            assert drawn.groupby("label").size().max() <= per_class and len(drawn) >= 2
            assert (index["source"] == f"external:{COHORT}").any()
            for r in index.itertuples():
                _assert_png(d / r.overlay)
                _assert_png(d / r.montage)
                assert (d / r.geojson).stat().st_size > 0
                with h5py.File(d / r.h5) as f:
                    att, coords = f["attention"][:], f["coords"][:]
                    assert len(att) == len(coords) > 0
                    np.testing.assert_allclose(att.sum(), 1, rtol=1e-4)
                    if model == "shazam":  # the gate per level sums to 1 over the teachers
                        np.testing.assert_allclose(f["gate"][:].sum(axis=1), 1, rtol=1e-5)
        md = (wd / f"results/report/{task}/report.md").read_text()
        gallery = md.split("## Where the models look")[1].split("## Protocol")[0]
        assert "heatmaps/" in gallery and "external" not in gallery.lower()


@pytest.mark.slow
def test_snakemake_report_includes_heatmaps_and_external_reports(demo_run):
    import base64

    from conftest import run_snakemake

    wd, _ = demo_run
    out = wd / "workflow-report-external.html"
    run_snakemake(wd, "--report", str(out))
    html = out.read_text()
    pngs = sorted(wd.glob("results/heatmaps/subtype/shazam/fold_0/*.png"))
    assert pngs
    for png in pngs[:2]:
        assert base64.b64encode(png.read_bytes()).decode()[:2000] in html, png
    summary = (wd / f"results/external/{COHORT}/subtype/comparison.tsv").read_bytes()
    assert base64.b64encode(summary).decode() in html
