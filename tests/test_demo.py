import numpy as np
import pandas as pd

from shazam.demo import demo_labels, demo_plan, render_tissue, write_demo
from shazam.slides import Slide, load_sheet
from shazam.tiling import saturation


def test_demo_plan_meets_the_cohort_spec():
    plan = demo_plan(seed=0)
    assert len(plan) >= 36
    cases = {s.case_id for s in plan}
    assert len(cases) >= 30
    per_case = pd.Series([s.case_id for s in plan]).value_counts()
    assert (per_case == 2).sum() >= 3
    assert {s.mpp for s in plan} == {0.25, 0.5}
    assert sum(not s.mpp_in_metadata for s in plan) == 1
    assert sum(s.blank for s in plan) == 1
    # every case has at least one slide with tissue
    assert {s.case_id for s in plan if not s.blank} == cases
    assert {s.phenotype for s in plan} == {"A", "B"}
    assert len({s.slide_id for s in plan}) == len(plan)


def test_demo_plan_is_seeded():
    assert demo_plan(3) == demo_plan(3)
    assert [s.phenotype for s in demo_plan(3)] != [s.phenotype for s in demo_plan(4)]


def test_phenotypes_differ_in_colour_and_texture():
    a = render_tissue(np.random.default_rng(1), "A", 0.5)
    b = render_tissue(np.random.default_rng(1), "B", 0.5)
    ta, tb = saturation(a) > 40, saturation(b) > 40
    ma, mb = a[ta].mean(0), b[tb].mean(0)
    assert np.abs(ma - mb).max() > 20  # colour
    # texture: B is crowded with dark nuclei
    dark_a = (a[ta].mean(1) < 120).mean()
    dark_b = (b[tb].mean(1) < 120).mean()
    assert dark_b > 3 * dark_a


def test_same_tissue_at_40x_and_20x():
    a40 = render_tissue(np.random.default_rng(5), "B", 0.25).astype(np.float32)
    a20 = render_tissue(np.random.default_rng(5), "B", 0.5).astype(np.float32)
    h, w = a20.shape[:2]
    red = a40[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
    assert np.abs(red - a20).mean() < 10


def test_write_demo_small(tmp_path):
    sheet = write_demo(tmp_path, seed=1, n_cases=4)
    df = load_sheet(tmp_path / "slides.tsv")
    assert list(df["slide_id"]) == list(sheet["slide_id"])
    sub = pd.read_csv(tmp_path / "labels_subtype.csv")
    os_ = pd.read_csv(tmp_path / "labels_os.csv")
    assert set(sub["case_id"]) == set(df["case_id"]) == set(os_["case_id"])
    assert set(sub["label"]) <= {"A", "B"}
    assert set(os_["censorship"]) <= {0, 1} and (os_["survival_months"] > 0).all()
    srcs = set()
    for _, row in df.iterrows():
        with Slide(row.slide_id, row.path) as s:
            assert s.vendor == "aperio" and s.level_count >= 3
            assert max(s.dimensions) >= 3000
            srcs.add(s.mpp.source)
    assert srcs == {"metadata", "objective_power"}


def test_labels_depend_on_phenotype():
    plan = demo_plan(0)
    sub, os_ = demo_labels(plan, 0)
    phen = {s.case_id: s.phenotype for s in plan}
    assert (sub["label"] == sub["case_id"].map(phen)).all()
    m = sub.merge(os_, on="case_id")
    med = m.groupby("label")["survival_months"].median()
    assert med["B"] < med["A"]
    assert 0 < m["censorship"].mean() < 0.6
