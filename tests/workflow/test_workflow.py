"""Workflow-level tests: dry run, lint, formatting, and a real run of the embedded demo."""

import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, REPO, run_snakemake

from shazam.demo import CLASSES, demo_plan, demo_tiles_plan, external_plan


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def _own_sheet(wd, on_bad_slide="fail"):
    """Config arguments for a user's own sheet at wd/slides.tsv on top of the default config."""
    extra = wd / "own.yaml"
    extra.write_text(
        f"slides: {wd / 'slides.tsv'}\ndemo: {{enabled: false}}\n"
        f"tiling: {{on_bad_slide: {on_bad_slide}}}\n"
    )
    return ["--configfile", str(REPO / "config/config.yaml"), str(extra)]


@pytest.fixture
def fresh_workdir(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def test_dry_run_lists_expected_jobs(fresh_workdir):
    p = run_snakemake(fresh_workdir, "-n", "--cores", "2")
    counts = _job_counts(p.stdout)
    cfg = _demo_config(REPO)
    ext = external_plan(cfg["demo"].get("external_seed", 1), cfg["demo"]["external_cases"])
    n, n_ext = len(demo_plan(0, 32)), len(ext)
    assert counts["make_demo_data"] == counts["make_demo_external"] == 1
    assert counts["tile_slide"] == n + n_ext  # the external cohort's slides too
    assert counts["tiling_qc"] == counts["external_tiling_qc"] == 1
    # toy_vit and toy_cnn: one job per group of slides, one linked feature file per slide;
    # the external cohort's slides in groups of their own
    from shazam.extraction.groups import slide_groups

    per_job = cfg["extraction"]["slides_per_job"]
    groups = slide_groups([s.slide_id for s in demo_plan(0, 32)], per_job)
    ext_groups = slide_groups([s.slide_id for s in ext], per_job)
    assert counts["extract_features"] == 2 * (len(groups) + len(ext_groups)) < 2 * n
    assert counts["feature_file"] == 2 * (n + n_ext) and counts["extraction_qc"] == 1
    # every model of each slide task on the external cohort: one job per task; a report per
    # labelled task; heatmaps of the student and both single teachers on fold 0 per task
    # the tile task on the cohort's ROI images: extracted per teacher, predicted, reported
    assert counts["predict_subtype"] == counts["predict_os"] == counts["predict_tiles"] == 1
    assert counts["make_demo_external_tiles"] == 1 and counts["extract_external_tiles"] == 2
    assert counts["external_report"] == 3
    assert counts["heatmaps"] == 2 * 3
    assert counts["make_splits_subtype"] == counts["make_splits_os"] == 1
    assert counts["train_baseline"] == 2 * 2 * 5  # tasks x teachers x folds
    assert counts["train_fusion"] == 2 * 5
    # tasks x (shazam, shazam-high) x folds (the demo's one ablation)
    assert counts["train_shazam"] == 2 * 2 * 5
    assert counts["evaluate"] == 3  # one report per task (subtype, os and the tile task)
    # the tile task: demo images, one feature file per teacher, folds, 4 models x 2 folds
    assert counts["make_demo_tiles"] == counts["make_splits_tiles"] == 1
    assert counts["extract_tile_features"] == 2
    assert counts["train_tile_model"] == 4 * 2  # mlp x 2, concat-mlp, shazam-v1
    assert counts["all"] == 1
    assert "workflow specific profile" in p.stdout + p.stderr  # profiles/default is picked up


def test_one_teacher_dry_run_still_reports_every_task(fresh_workdir):
    p = run_snakemake(fresh_workdir, "-n", "--cores", "2", "--config", "teachers=['toy_vit']")
    counts = _job_counts(p.stdout)
    assert counts["train_baseline"] == 2 * 5 and counts["evaluate"] == 3
    assert "train_shazam" not in counts and "train_fusion" not in counts


def test_validate_rule_is_separate_from_all(fresh_workdir):
    p = run_snakemake(fresh_workdir, "-n", "validate", "--printshellcmds")
    assert _job_counts(p.stdout) == {"validate": 1, "total": 1}
    assert "shazam validate --out results/validate" in p.stdout
    p = run_snakemake(fresh_workdir, "-n", "--cores", "2")
    assert "validate" not in _job_counts(p.stdout)


def test_tile_only_config_needs_no_slide_sheet(tmp_path):
    from PIL import Image

    for c in "XY":
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + 8 * i, 48)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(
        "teachers: [toy_vit, toy_cnn]\n"
        "tasks: {crc: {type: tile_classification, images: data, classes: [X, Y], folds: 3,"
        " image_level_splits: true}}\n"
    )
    counts = _job_counts(run_snakemake(tmp_path, "-n", "--cores", "2").stdout)
    assert counts == {"extract_tile_features": 2, "make_splits_crc": 1, "train_tile_model": 15,
                      "evaluate": 1, "all": 1, "total": 20}  # fmt: skip
    (tmp_path / "config/config.yaml").write_text(
        "tasks: {s: {type: classification, labels: l.csv, classes: [a, b]}}\n"
    )
    p = run_snakemake(tmp_path, "-n", check=False)
    assert p.returncode != 0 and "`slides` (the slide sheet) is needed" in p.stdout + p.stderr


def test_snakemake_lint_is_clean(fresh_workdir):
    p = run_snakemake(fresh_workdir, "--lint", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Congratulations" in p.stdout + p.stderr


def test_snakefmt_check():
    p = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "rules"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("mode", [["check"], ["format", "--check"]])
def test_ruff(mode):
    p = subprocess.run(
        [str(BIN / "ruff"), *mode, "shazam", "tests", "benchmarks"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


def test_sheet_problem_stops_at_parse_time(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "slides.tsv").write_text("slide_id\tpath\tcase_id\nS1\ta.svs\tC1\nS1\ta.svs\tC2\n")
    p = run_snakemake(tmp_path, "-n", *_own_sheet(tmp_path), check=False)
    assert p.returncode != 0
    assert "line 3, column slide_id: duplicate slide id 'S1'" in p.stdout + p.stderr


def test_unknown_teacher_is_rejected_at_parse_time(fresh_workdir):
    p = run_snakemake(fresh_workdir, "-n", "--config", "teachers=['virchow3']", check=False)
    assert p.returncode != 0
    assert "unknown teacher(s) virchow3" in p.stdout + p.stderr


def test_local_weight_file_is_an_input_of_its_teacher_only(fresh_workdir):
    w = fresh_workdir / "toy_cnn.safetensors"
    w.write_bytes(b"x")
    (fresh_workdir / "w.yaml").write_text(f"teacher_weights: {{toy_cnn: {w}}}\n")
    p = run_snakemake(
        fresh_workdir, "-n", "--configfile", str(fresh_workdir / "config/config.yaml"),
        str(fresh_workdir / "w.yaml"), "--forceall",
        "--until", "extract_features", "--printshellcmds",
    )  # fmt: skip
    cmds = [ln for ln in p.stdout.splitlines() if "shazam extract" in ln]
    assert cmds and all((f"--weights {w}" in c) == ("--teacher toy_cnn" in c) for c in cmds)


def test_config_validation_rejects_bad_values(fresh_workdir):
    p = run_snakemake(
        fresh_workdir, "-n", "--config", "tiling={'on_bad_slide': 'ignore'}", check=False
    )
    assert p.returncode != 0
    assert "on_bad_slide" in p.stdout + p.stderr


@pytest.mark.slow
def test_demo_run_produces_every_tiling_output(demo_run):
    wd, _ = demo_run
    plan = demo_plan(0, 32)
    assert (wd / "resources/demo/slides.tsv").exists()
    for s in plan:
        assert (wd / f"results/patches/{s.slide_id}.h5").exists()
        assert (wd / f"results/qc/tiling/{s.slide_id}.json").exists()
        assert (wd / f"results/qc/tiling/{s.slide_id}.png").exists()
        assert (wd / f"logs/tile_slide/{s.slide_id}.log").exists()
        assert (wd / f"results/benchmarks/tile_slide/{s.slide_id}.tsv").exists()
    qc = pd.read_csv(wd / "results/qc/tiling.tsv", sep="\t").set_index("slide_id")
    assert set(qc.index) == {s.slide_id for s in plan}
    blank = next(s for s in plan if s.blank)
    assert qc.loc[blank.slide_id, "status"] == "no_tissue"
    assert qc.loc[blank.slide_id, "n_patches"] == 0
    objective = next(s for s in plan if not s.mpp_in_metadata)
    assert qc.loc[objective.slide_id, "mpp_source"] == "objective_power"
    ok = qc[qc["status"] == "ok"]
    assert len(ok) == len(plan) - 1 and (ok["n_patches"] > 10).all()
    # 40x slides get patches twice as wide in level-0 pixels as 20x slides
    assert set(qc.loc[qc["mpp"] == 0.25, "patch_size_level0"]) == {512}
    assert set(qc.loc[qc["mpp"] == 0.5, "patch_size_level0"]) == {256}
    with h5py.File(wd / f"results/patches/{plan[0].slide_id}.h5") as f:
        assert f["coords"].attrs["patch_size_level0"] in (256, 512)
    rec = json.loads((wd / f"results/qc/tiling/{plan[0].slide_id}.json").read_text())
    assert rec["status"] == "ok"


@pytest.mark.slow
def test_demo_run_makes_splits_for_both_tasks(demo_run):
    wd, _ = demo_run
    for task, extra in (("subtype", {"n_A", "n_B"}), ("os", {"events", "censored"})):
        summary = pd.read_csv(wd / f"results/splits/{task}/summary.tsv", sep="\t")
        assert extra <= set(summary.columns) and len(summary) == 5 * 3
        tested = []
        for k in range(5):
            fold = pd.read_csv(wd / f"results/splits/{task}/fold_{k}.csv")
            assert list(fold.columns) == ["case_id", "split"] and len(fold) == 32
            tested += fold.loc[fold["split"] == "test", "case_id"].tolist()
        assert sorted(tested) == sorted({s.case_id for s in demo_plan(0, 32)})


MODEL_FILES = ["model.safetensors", "config.json", "history.csv", "predictions.csv", "metrics.json"]


@pytest.mark.slow
def test_demo_run_trains_every_model_and_needs_both_teachers(demo_run):
    wd, _ = demo_run
    models = ["abmil-toy_vit", "abmil-toy_cnn", "concat"]
    for task in ("subtype", "os"):
        for m in models + ["shazam", "shazam-high"]:
            for k in range(5):
                d = wd / f"results/models/{task}/{m}/fold_{k}"
                assert sorted(p.name for p in d.iterdir()) == sorted(MODEL_FILES)
                rule = {"concat": "train_fusion", "abmil-toy_vit": "train_baseline",
                        "abmil-toy_cnn": "train_baseline"}.get(m, "train_shazam")  # fmt: skip
                assert (wd / f"logs/{rule}/{task}/{m}/fold_{k}.log").exists()
    bacc = {
        m: np.mean(
            [
                json.loads((wd / f"results/models/subtype/{m}/fold_{k}/metrics.json").read_text())[
                    "balanced_accuracy"
                ]
                for k in range(5)
            ]
        )
        for m in models + ["shazam"]
    }
    # subtype is the XOR of colour and texture; each toy teacher sees one factor only: single
    # teachers stay near chance, fusion (early: concat; the student) learns it
    assert all(bacc[m] <= 0.65 for m in models[:2]), bacc
    assert bacc["concat"] >= 0.85 and bacc["shazam"] >= 0.85, bacc
    shz = json.loads((wd / "results/models/subtype/shazam/fold_0/metrics.json").read_text())
    assert set(shz["gate_mean"]) == {"toy_vit", "toy_cnn"}
    os_m = json.loads((wd / "results/models/os/abmil-toy_vit/fold_0/metrics.json").read_text())
    for key in ("c_index", "c_index_ipcw", "ibs", "td_auc_mean", "logrank_p", "n_events", "val"):
        assert key in os_m


TILE_MODELS = ["mlp-toy_vit", "mlp-toy_cnn", "concat-mlp", "shazam-v1"]


@pytest.mark.slow
def test_demo_run_trains_the_tile_task(demo_run):
    from shazam.formats import read_tile_features
    from shazam.teachers import get_spec

    wd, _ = demo_run
    plan = demo_tiles_plan(0, 16)
    for teacher in ("toy_vit", "toy_cnn"):
        path = wd / f"results/tile_features/tiles/{teacher}.h5"
        feats, rows, attrs = read_tile_features(path, levels=("low", "mid", "high"))
        # one row per listed image, in the listing's order, labels with them
        assert list(rows["image_id"]) == [f"tiles/{t.image_id}" for t in plan]
        assert list(rows["y"]) == [CLASSES.index(t.label) for t in plan]
        assert feats["high"].shape == (len(plan), get_spec(teacher).dims["high"])
        with h5py.File(path) as f:  # mixed image sizes went through
            assert len({tuple(hw) for hw in f["image_size"][:]}) == 4
        assert attrs["teacher"] == teacher and attrs["mpp_source"] == "declared"
        # export_pt: the seed's (features, labels) tuple, the same rows
        x, y = torch.load(path.with_suffix(".pt"), weights_only=True)
        np.testing.assert_array_equal(x.numpy(), feats["high"].astype(np.float32))
        assert y.tolist() == list(rows["y"])
    for m in TILE_MODELS:
        bacc = []
        for k in range(2):
            d = wd / f"results/models/tiles/{m}/fold_{k}"
            assert sorted(p.name for p in d.iterdir()) == sorted(MODEL_FILES)
            assert (wd / f"logs/train_tile_model/tiles/{m}/fold_{k}.log").exists()
            metrics = json.loads((d / "metrics.json").read_text())
            bacc.append(metrics["balanced_accuracy"])
            assert metrics["val"]["balanced_accuracy"] is not None  # both classes in val
            pred = pd.read_csv(d / "predictions.csv")
            fold = pd.read_csv(wd / f"results/splits/tiles/fold_{k}.csv")
            test_cases = set(fold.loc[fold["split"] == "test", "case_id"])
            assert set(pred["case_id"]) == test_cases and len(pred) == 3 * len(test_cases)
        # the phenotypes differ in colour and texture: every tile model learns them
        assert np.mean(bacc) >= 0.75, (m, bacc)


@pytest.mark.slow
def test_demo_features_separate_the_xor_only_together(demo_run):
    """The construction, checked on the demo's real features: toy_vit's bag means give the
    colour, toy_cnn's the texture, neither the label; both together give the label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from shazam.formats import read_feature_file

    wd, _ = demo_run
    plan = [s for s in demo_plan(0, 32) if not s.blank]
    cases = sorted({s.case_id for s in plan})
    cell = {s.case_id: s for s in plan}
    x = {}
    for t in ("toy_vit", "toy_cnn"):
        x[t] = np.stack([
            np.concatenate([
                read_feature_file(wd / f"results/features/{t}/{s.slide_id}.h5")[0]
                for s in plan if s.case_id == c
            ]).astype(np.float32).mean(0)
            for c in cases
        ])  # fmt: skip
    colour = np.array([cell[c].colour == "pink" for c in cases])
    texture = np.array([cell[c].texture == "sparse" for c in cases])
    label = np.array([cell[c].label == "A" for c in cases])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)

    def score(model, feats, target):
        pipe = make_pipeline(StandardScaler(), model)
        return balanced_accuracy_score(target, cross_val_predict(pipe, feats, target, cv=cv))

    def linear():
        return LogisticRegression(C=0.1, max_iter=2000)

    assert score(linear(), x["toy_vit"], colour) >= 0.9
    assert score(linear(), x["toy_cnn"], texture) >= 0.9
    assert score(linear(), x["toy_vit"], texture) <= 0.7
    for t in x:
        assert score(linear(), x[t], label) <= 0.7, t
    both = np.concatenate([x["toy_vit"], x["toy_cnn"]], axis=1)
    assert score(SVC(kernel="rbf", C=10), both, label) >= 0.85


@pytest.mark.slow
def test_demo_run_extracts_both_toy_teachers(demo_run):
    from shazam.formats import read_feature_file
    from shazam.teachers import get_spec

    wd, _ = demo_run
    for teacher in ("toy_vit", "toy_cnn"):
        dims = get_spec(teacher).dims
        for s in demo_plan(0, 32):
            feats, coords, attrs = read_feature_file(
                wd / f"results/features/{teacher}/{s.slide_id}.h5"
            )
            with h5py.File(wd / f"results/patches/{s.slide_id}.h5") as f:
                assert (coords == f["coords"][:]).all()
            assert feats.shape == (len(coords), dims["high"])
            assert attrs["teacher"] == teacher
        # one extraction job per group of slides, its table listing each slide it extracted
        qc = pd.read_csv(wd / "results/qc/extraction.tsv", sep="\t", dtype={"slide_id": str})
        rows = qc[qc["teacher"] == teacher].set_index("slide_id")
        assert sorted(rows.index) == sorted(s.slide_id for s in demo_plan(0, 32))
        assert set(rows["status"]) == {"ok"} and rows["group"].nunique() >= 1
        for g in rows["group"].unique():
            assert (wd / f"logs/extract_features/{teacher}/{g}.log").exists()
            assert (wd / f"results/features/{teacher}/groups/{g}.tsv").exists()
        # the feature file is a hard link to the job's staged file: the same bytes, once
        for s in demo_plan(0, 32)[:3]:
            feat = wd / f"results/features/{teacher}/{s.slide_id}.h5"
            assert feat.stat().st_ino == (feat.parent / "staged" / feat.name).stat().st_ino
        blank = next(s for s in demo_plan(0, 32) if s.blank)
        feats, coords, _ = read_feature_file(wd / f"results/features/{teacher}/{blank.slide_id}.h5")
        assert feats.shape == (0, dims["high"])


@pytest.mark.slow
def test_rerun_is_a_no_op_and_one_slide_can_be_redone(demo_run):
    wd, _ = demo_run
    p = run_snakemake(wd, "-n", "--cores", "2")
    assert "Nothing to be done" in p.stdout + p.stderr
    sid = demo_plan(0, 32)[3].slide_id
    p = run_snakemake(wd, "-n", "--cores", "2", "-R", f"results/patches/{sid}.h5")
    counts = _job_counts(p.stdout)
    assert counts["tile_slide"] == 1 and "make_demo_data" not in counts
    # that slide's group, one job per teacher (it keeps the group's unchanged slides)
    assert counts["extract_features"] == 2


@pytest.mark.slow
def test_bad_slide_skip_is_recorded_in_cohort_table(demo_run, tmp_path):
    """A cohort with an unreadable slide: with on_bad_slide=skip the run completes and the
    QC table says why; with fail the job fails naming the slide."""
    wd, _ = demo_run
    good = wd / "resources/demo/slides/case000_s1.svs"
    shutil.copy(good, tmp_path / "good.svs")
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 4096)
    (tmp_path / "slides.tsv").write_text(
        "slide_id\tpath\tcase_id\nG1\tgood.svs\tC1\nB1\tbroken.svs\tC2\n"
    )
    target = "results/qc/tiling.tsv"  # the demo tasks' label files do not exist here
    p = run_snakemake(tmp_path, target, "--cores", "2", *_own_sheet(tmp_path), check=False)
    assert p.returncode != 0
    log = (tmp_path / "logs/tile_slide/B1.log").read_text()
    assert "error: slide B1" in log and "broken.svs" in log and "cannot open" in log
    assert not (tmp_path / "results/patches/B1.h5").exists()
    run_snakemake(tmp_path, target, "--cores", "2", *_own_sheet(tmp_path, on_bad_slide="skip"))
    qc = pd.read_csv(tmp_path / "results/qc/tiling.tsv", sep="\t").set_index("slide_id")
    assert qc.loc["B1", "status"] == "skipped" and "cannot open" in qc.loc["B1", "reason"]
    assert qc.loc["G1", "status"] == "ok"


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert min(im.size) > 50, (path, im.size)


def _demo_config(wd):
    import yaml

    return yaml.safe_load((wd / "config/config.yaml").read_text())


@pytest.mark.slow
def test_demo_run_reports_every_task(demo_run):
    wd, _ = demo_run
    cfg = _demo_config(wd)
    assert cfg["tasks"] and len(cfg["teachers"]) >= 2  # the demo: two tasks, two teachers
    assert {t["type"] for t in cfg["tasks"].values()} == {
        "classification", "survival", "tile_classification"}  # fmt: skip
    for task, t in cfg["tasks"].items():
        tile = t["type"] == "tile_classification"
        d = wd / "results/report" / task
        for f in ("report.md", "report.html", "summary.tsv", "per_fold.tsv", "comparison.tsv",
                  "dataset.tsv"):  # fmt: skip
            assert (d / f).stat().st_size > 0, d / f
        assert (wd / f"logs/evaluate/{task}.log").exists()
        figures = {p.stem: p for p in (d / "figures").glob("*.png")}
        per_type = {"km"} if t["type"] == "survival" else {"roc", "confusion"}
        gate = set() if tile else {"gate"}  # the v1 tile classifier has no gate
        assert set(figures) == {"metrics", "delta"} | gate | per_type
        for png in figures.values():
            _assert_png(png)
        summary = pd.read_csv(d / "summary.tsv", sep="\t")
        prefix, student = ("mlp-", "shazam-v1") if tile else ("abmil-", "shazam")
        singles = {f"{prefix}{x}" for x in cfg["teachers"]}
        fused = {"concat-mlp"} if tile else {"concat"}
        assert singles | fused | {"late-fusion", student} <= set(summary["model"])
        primary = summary[summary["metric"].isin(["balanced_accuracy", "c_index"])]
        assert primary["pooled"].notna().all() and (primary["ci_low"] <= primary["ci_high"]).all()
        comparison = pd.read_csv(d / "comparison.tsv", sep="\t")
        assert set(comparison["student"]) == {student}
        # the best single teacher (chosen on validation), then the fair controls: early and
        # late fusion, which see every teacher as the student does
        fusion = "concat-mlp" if tile else "concat"
        assert set(comparison["baseline"]) <= singles | {fusion, "late-fusion"}
        assert "validation" in comparison.iloc[0]["comparison"]
        assert {fusion, "late-fusion"} <= set(comparison["baseline"])
        assert comparison["params_student"].notna().all()
        md = (d / "report.md").read_text()
        k = t.get("folds", 5)  # the demo keeps one seed, and its report says so
        assert f"all {k} runs (1 seed(s) × {k} fold(s))" in md
        assert "One training seed and one cross-validation" in md
        heads = ["## Answer", "## Results per model", "## Paired comparison", "## Figures",
                 "## Dataset", "## Protocol", "## Software and teachers"]  # fmt: skip
        assert [md.index(h) for h in heads] == sorted(md.index(h) for h in heads)
        assert "95% CI" in md and all(f"figures/{n}.png" in md for n in figures)
        if tile:  # counted in images and cases; the bootstrap draws whole cases
            plan = demo_tiles_plan(0, cfg["demo"]["tile_cases"])
            n_cases = len({p.case_id for p in plan})
            assert f"{n_cases} cases, {len(plan)} images" in md
            assert "a drawn case brings all its images" in md
        html = (d / "report.html").read_text()
        assert html.count("data:image/png;base64,") == len(figures)
        if not tile:  # the heatmaps of fold 0's test slides, embedded as small JPEGs
            assert md.index("## Dataset") < md.index("## Where the models look")
            assert md.count("](../../heatmaps/") == html.count("data:image/jpeg;base64,") > 0


@pytest.mark.slow
def test_snakemake_report_contains_figures_tables_and_thumbnails(demo_run):
    import base64

    wd, _ = demo_run
    out = wd / "workflow-report.html"
    run_snakemake(wd, "--report", str(out))
    html = out.read_text()
    pngs = sorted(wd.glob("results/report/*/figures/*.png"))
    assert len(pngs) >= 8
    thumbs = sorted(wd.glob("results/qc/tiling/*.png"))
    for png in pngs + thumbs[:3]:
        assert base64.b64encode(png.read_bytes()).decode() in html, png
    for task in _demo_config(wd)["tasks"]:  # slide and tile tasks
        summary = (wd / f"results/report/{task}/summary.tsv").read_bytes()
        assert base64.b64encode(summary).decode() in html


def test_cli_help_lists_subcommands():
    p = subprocess.run([sys.executable, "-m", "shazam", "--help"], capture_output=True, text=True)
    for sub in ("demo", "tile", "tiling-qc", "evaluate", "validate"):
        assert sub in p.stdout
