"""The external validation report (issue 17): built from synthetic prediction tables in
shazam predict's own format (:func:`shazam.predict.cohort_table` and ``add_truth``), with
cases without patches and without a label, and a fake internal summary whose choice of the
single teacher is not the best teacher on the cohort."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from shazam.cli import main
from shazam.evaluate import EvalConfig
from shazam.evaluate.external import METRIC_COLUMNS
from shazam.evaluate.external_report import (
    COMPARISON_COLUMNS,
    external_report,
    late_fusion_table,
    read_predictions,
)
from shazam.predict import add_truth, cohort_table, write_table
from shazam.tasks import LabelError, TaskSpec

CLS = TaskSpec(name="t", type="classification", labels="x.csv", classes=("lo", "hi"), folds=3)
SURV = TaskSpec(name="s", type="survival", labels="x.csv", time_col="t", event_col="e", folds=3)
BOOT = EvalConfig(n_boot=60)
N = 40
CASES = [f"c{i:02d}" for i in range(N)]
NO_PATCH = ("c00", "c01")
UNLABELLED = ("c01", "c02", "c03")  # c01: neither patches nor a label
N_SCORED = N - 4
# on the cohort abmil-b beats abmil-a, but the internal report chose abmil-a (summary below)
SKILL = {"abmil-a": 0.1, "abmil-b": 0.45, "concat": 0.3, "shazam": 0.5}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_tables(spec, skills=SKILL, n_folds=3, seed=0):
    """Each model's prediction table on the cohort: per fold, outputs that follow the truth
    with weight ``skill`` and noise with weight 1 − skill."""
    rng = np.random.default_rng(seed)
    sheet = pd.DataFrame({"slide_id": [f"{c}_s" for c in CASES], "case_id": CASES})
    sizes = {c: 0 if c in NO_PATCH else 50 for c in CASES}
    if spec.kind == "classification":
        y = np.array(["lo", "hi"] * (N // 2))
        labels = pd.DataFrame({"case_id": CASES, "label": y})
    else:
        time = rng.exponential(30, N) + 1
        labels = pd.DataFrame({"case_id": CASES, "time": time, "event": rng.random(N) < 0.7})
    labels = labels[~labels["case_id"].isin(UNLABELLED)]
    tables = {}
    for model, skill in skills.items():
        folds = []
        for _ in range(n_folds):
            if spec.kind == "classification":
                p = skill * (y == "hi") + (1 - skill) * rng.random(N)
                out = np.stack([1 - p, p], axis=1)
            else:
                out = -skill * time / time.std() + (1 - skill) * rng.normal(size=N)
            folds.append((sizes, {c: out[i] for i, c in enumerate(CASES) if sizes[c]}))
        table = cohort_table(spec, sheet, CASES, folds)
        tables[model] = add_truth(table, spec, labels, "ext", log=lambda m: None)
    return tables


def summary(spec):
    """The internal summary's columns that choose the single teacher: abmil-a has the best
    mean validation score, abmil-b the best test score."""
    return pd.DataFrame({"model": ["abmil-a", "abmil-b", "concat", "shazam"],
                         "metric": spec.primary_metric, "mean": [0.7, 0.9, 0.8, 0.8],
                         "val_mean": [0.8, 0.6, 0.9, 0.9]})  # fmt: skip


def write_files(tmp_path, spec, tables):
    paths = []
    for model, table in tables.items():
        paths.append(tmp_path / "pred" / f"{model}.tsv")
        paths[-1].parent.mkdir(exist_ok=True)
        write_table(table, paths[-1])
    summary(spec).to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    return paths


def test_report_files_and_the_comparison_against_the_internally_chosen_teacher(tmp_path):
    out = tmp_path / "report"
    head = external_report(CLS, "ext", make_tables(CLS), summary(CLS), out, BOOT)
    for f in ("metrics.tsv", "comparison.tsv", "report.md", "report.html"):
        assert (out / f).stat().st_size > 0
    for f in ("metrics.png", "roc.png"):
        assert (out / "figures" / f).read_bytes()[:8] == PNG_MAGIC
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2 and 'src="figures/' not in html
    m = pd.read_csv(out / "metrics.tsv", sep="\t").set_index(["model", "estimate", "metric"])
    ba = {n: m.loc[(n, "ensemble", "balanced_accuracy"), "value"] for n in SKILL}
    assert ba["abmil-b"] > ba["abmil-a"]  # the cohort prefers another teacher than internal
    comp = pd.read_csv(out / "comparison.tsv", sep="\t").set_index("baseline")
    assert list(comp.index) == ["abmil-a", "concat", "late-fusion", "abmil-b"]
    assert comp.loc["abmil-a", "comparison"] == "best single teacher, chosen on internal validation"
    assert "optimistic" in comp.loc["abmil-b", "comparison"]
    assert comp.loc["abmil-a", "delta"] == pytest.approx(ba["shazam"] - ba["abmil-a"], abs=1e-6)
    assert (comp["n_cases"] == N_SCORED).all() and (comp["n_boot"] > 0).all()
    assert comp.loc["abmil-a", "ci_low"] <= comp.loc["abmil-a", "delta"]
    assert head["baseline_internal"] == "abmil-a" and head["baseline_oracle"] == "abmil-b"
    assert head["n_cases"] == N_SCORED and head["mean_delta"] == pytest.approx(
        comp.loc["abmil-a", "delta"], abs=1e-6
    )
    md = (out / "report.md").read_text()
    answer = md.split("## Answer")[1].split("##")[0]
    assert "**abmil-a**" in answer and f"{N_SCORED} cases" in answer
    assert f"Δ = **{head['mean_delta']:+.3f}**" in answer


@pytest.mark.parametrize("spec", [CLS, SURV], ids=["classification", "survival"])
def test_late_fusion_is_the_mean_of_the_single_teachers(spec):
    tables = make_tables(spec)
    late = late_fusion_table(tables, ["abmil-a", "abmil-b"], spec).set_index("case_id")
    ok = [c for c in CASES if c not in NO_PATCH + UNLABELLED]
    assert list(late.index) == ok
    a, b = (tables[m].set_index("case_id").loc[ok] for m in ("abmil-a", "abmil-b"))
    if spec.kind == "classification":
        for col in ("prob_hi", "prob_lo", "prob_hi_fold2"):
            np.testing.assert_allclose(late[col], (a[col] + b[col]) / 2)
        assert list(late["pred"]) == list(np.where(late["prob_hi"] > 0.5, "hi", "lo"))
    else:
        for col in ("risk_rank", "risk_fold1"):
            rank = (rankdata(a[col]) + rankdata(b[col])) / (2 * len(ok))
            np.testing.assert_allclose(late[col], rank)


def test_the_reports_late_fusion_auc_is_that_of_the_mean(tmp_path):
    tables = make_tables(CLS)
    external_report(CLS, "ext", tables, summary(CLS), tmp_path, BOOT)
    m = pd.read_csv(tmp_path / "metrics.tsv", sep="\t").set_index(["model", "estimate", "metric"])
    ok = [c for c in CASES if c not in NO_PATCH + UNLABELLED]
    a, b = (tables[x].set_index("case_id").loc[ok] for x in ("abmil-a", "abmil-b"))
    auc = roc_auc_score(a["label"] == "hi", (a["prob_hi"] + b["prob_hi"]) / 2)
    assert m.loc[("late-fusion", "ensemble", "auc_macro"), "value"] == pytest.approx(auc)


def test_cases_without_patches_or_label_are_counted_and_not_scored(tmp_path):
    external_report(CLS, "ext", make_tables(CLS), summary(CLS), tmp_path, BOOT)
    m = pd.read_csv(tmp_path / "metrics.tsv", sep="\t")
    counts = m[(m["estimate"] == "ensemble") & (m["metric"] == "n_cases")]
    assert len(counts) == 5 and (counts["value"] == N_SCORED).all()
    left = (tmp_path / "report.md").read_text().split("## Cases left out")[1].split("##")[0]
    assert f"list {N} cases" in left and f"{N_SCORED} have patches and a label" in left
    assert "**2** without patches" in left and "c00, c01" in left
    assert "**3** without a label" in left and "c01, c02, c03" in left
    assert "1 case(s) are in both lists" in left


def test_survival_report_splits_the_student_at_the_cohorts_median_risk(tmp_path):
    tables = make_tables(SURV)
    head = external_report(SURV, "ext", tables, summary(SURV), tmp_path, BOOT)
    assert (tmp_path / "figures" / "km.png").read_bytes()[:8] == PNG_MAGIC
    t = tables["shazam"]
    high_all = t["risk_rank"] > t["risk_rank"].median()  # the cut-off: predictions only
    s = t[t["note"] == ""]
    high = high_all[s.index].to_numpy()
    e = s["event"].astype(bool).to_numpy()
    p = logrank_test(s["time"][high], s["time"][~high], e[high], e[~high]).p_value
    assert head["km_logrank_p"] == pytest.approx(p)
    md = (tmp_path / "report.md").read_text()
    assert "no outcome" in md and f"{p:.3g}" in md
    m = pd.read_csv(tmp_path / "metrics.tsv", sep="\t").set_index(["model", "estimate", "metric"])
    ipcw = m.loc[("shazam", "ensemble", "c_index_ipcw")]
    assert pd.isna(ipcw["value"]) and "training" in ipcw["reason"]
    assert 0 <= m.loc[("shazam", "ensemble", "c_index"), "value"] <= 1


def test_the_extra_section_comes_before_the_protocol(tmp_path):
    seen = []

    def gallery(doc):
        seen.append(doc)
        doc.h(2, "Heatmaps")
        doc.p("GALLERY")

    external_report(CLS, "ext", make_tables(CLS), summary(CLS), tmp_path, BOOT, extra=gallery)
    md = (tmp_path / "report.md").read_text()
    assert len(seen) == 1
    assert md.index("## Figures") < md.index("GALLERY") < md.index("## Protocol")
    assert "GALLERY" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("spec", [CLS, SURV], ids=["classification", "survival"])
def test_an_unlabelled_cohort_gets_the_short_report(tmp_path, spec):
    truth = ["label"] if spec.kind == "classification" else ["time", "event"]
    tables = {m: t.drop(columns=truth) for m, t in make_tables(spec).items()}
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "roc.png").write_bytes(PNG_MAGIC)  # of an earlier, labelled run
    head = external_report(spec, "ext", tables, tmp_path / "absent.tsv", tmp_path, BOOT)
    assert head["labelled"] is False and head["n_cases"] == N - 2 and "n_images" not in head
    for name, columns in (("metrics", METRIC_COLUMNS), ("comparison", COMPARISON_COLUMNS)):
        df = pd.read_csv(tmp_path / f"{name}.tsv", sep="\t")
        assert list(df.columns) == columns and df.empty
    assert list((tmp_path / "figures").iterdir()) == []
    md = (tmp_path / "report.md").read_text()
    assert "has no labels, so no metric and no comparison" in md
    assert "## Answer" not in md and "## Paired comparison" not in md and "## Figures" not in md
    rows = md.split("## Predictions per model")[1].split("##")[0]
    for model, t in tables.items():
        if spec.kind == "classification":
            n = t["pred"].value_counts()
            assert f"| {model} | {N - 2} | {n['lo']} | {n['hi']} |" in rows
        else:
            assert f"| {model} | {N - 2} | {t['risk_rank'].median():.3f} |" in rows
    left = md.split("## Cases left out")[1].split("##")[0]
    assert "**2** without patches" in left and "c00, c01" in left and "without a label" not in left
    assert "## Protocol" in md and (tmp_path / "report.html").stat().st_size > 0


def test_a_table_without_the_labels_the_others_have_is_named(tmp_path):
    tables = read_predictions(write_files(tmp_path, CLS, make_tables(CLS)))
    bare = tables["concat"].drop(columns="label")
    bare.attrs = tables["concat"].attrs
    with pytest.raises(ValueError, match="concat.tsv has no label column, other tables of the "
                       "cohort have labels.*--labels"):  # fmt: skip
        external_report(CLS, "ext", {**tables, "concat": bare}, summary(CLS), tmp_path, BOOT)
    empty = tables["shazam"].assign(label=np.nan)
    empty.attrs = tables["shazam"].attrs
    with pytest.raises(ValueError, match="shazam.tsv: no case has a label, other tables"):
        external_report(CLS, "ext", {**tables, "shazam": empty}, summary(CLS), tmp_path, BOOT)


def test_a_class_unknown_to_the_task_is_named(tmp_path):
    paths = write_files(tmp_path, CLS, make_tables(CLS))
    tables = read_predictions(paths)
    odd = tables["abmil-a"].rename(columns=lambda c: c.replace("prob_hi", "prob_mid"))
    odd.attrs = tables["abmil-a"].attrs
    with pytest.raises(LabelError, match=r"pred/abmil-a.tsv has class columns of \['lo', 'mid'\]"
                       r".*pred/shazam.tsv of \['hi', 'lo'\]"):  # fmt: skip
        external_report(CLS, "ext", {**tables, "abmil-a": odd}, summary(CLS), tmp_path, BOOT)
    every = {m: t.assign(prob_mid=0.0) for m, t in tables.items()}
    with pytest.raises(LabelError, match=r"shazam.tsv has probabilities of class\(es\) \['mid'\]"
                       r" that are not classes of task t \['lo', 'hi'\]"):  # fmt: skip
        external_report(CLS, "ext", every, summary(CLS), tmp_path, BOOT)
    tables["concat"].loc[5, "label"] = "mid"
    with pytest.raises(LabelError, match=r"concat.tsv, row 7 \(case c05\), label: label 'mid' "
                       "is not one of the task's classes"):  # fmt: skip
        external_report(CLS, "ext", tables, summary(CLS), tmp_path, BOOT)


def test_tables_of_other_cases_or_a_missing_model_are_named(tmp_path):
    tables = read_predictions(write_files(tmp_path, CLS, make_tables(CLS)))
    short = tables["abmil-b"].iloc[1:]
    short.attrs = tables["abmil-b"].attrs
    with pytest.raises(ValueError, match="abmil-b.tsv and .*shazam.tsv list different cases "
                       r"\(0 only in the first: ; 1 only in the second: c00\)"):  # fmt: skip
        external_report(CLS, "ext", {**tables, "abmil-b": short}, summary(CLS), tmp_path, BOOT)
    extra = {**tables, "shazam_metrics": tables["concat"]}
    with pytest.raises(ValueError, match="concat.tsv: unknown model 'shazam_metrics'"):
        external_report(CLS, "ext", extra, summary(CLS), tmp_path, BOOT)
    rest = {m: t for m, t in tables.items() if m != "shazam"}
    with pytest.raises(ValueError, match="no prediction table of the student shazam"):
        external_report(CLS, "ext", rest, summary(CLS), tmp_path, BOOT)
    rest = {m: t for m, t in tables.items() if m != "abmil-a"}
    with pytest.raises(ValueError, match="internal report chose abmil-a .* no prediction table"):
        external_report(CLS, "ext", rest, summary(CLS), tmp_path, BOOT)


def test_the_cli_writes_the_report_without_torch(tmp_path):
    paths = write_files(tmp_path, SURV, make_tables(SURV))
    args = ["external-report", "--spec", SURV.to_json(), "--cohort", "ext", "--predictions",
            *map(str, paths), "--summary", str(tmp_path / "summary.tsv"), "--evaluation",
            '{"n_boot": 50}', "--out-dir", str(tmp_path / "out")]  # fmt: skip
    code = (
        "import sys; from shazam.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    comp = pd.read_csv(tmp_path / "out" / "comparison.tsv", sep="\t")
    assert comp["baseline"].iloc[0] == "abmil-a" and (comp["n_boot"] == 50).all()
    assert (tmp_path / "out" / "figures" / "km.png").exists()
    assert "external report of task s on cohort ext" in p.stderr


def test_the_cli_names_a_missing_summary(tmp_path, capsys):
    paths = write_files(tmp_path, CLS, make_tables(CLS))
    rc = main(["external-report", "--spec", CLS.to_json(), "--cohort", "ext", "--predictions",
               *map(str, paths), "--summary", str(tmp_path / "nope.tsv"), "--out-dir",
               str(tmp_path / "out")])  # fmt: skip
    assert rc == 2 and "nope.tsv is missing — write the internal report" in capsys.readouterr().err
