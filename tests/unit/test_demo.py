import numpy as np
import pandas as pd

from shazam.demo import COLOURS, TEXTURES, demo_labels, demo_plan, render_tissue, write_demo
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
    assert {s.label for s in plan} == {"A", "B"}
    assert len({s.slide_id for s in plan}) == len(plan)
    # 2 colours x 2 textures, balanced over cases
    cells = pd.Series(
        [(s.colour, s.texture) for s in plan if not s.blank and s.slide_id.endswith("s1")]
    )
    assert len(cells.value_counts()) == 4 and cells.value_counts().min() == len(cases) // 4


def test_demo_plan_is_seeded():
    assert demo_plan(3) == demo_plan(3)
    assert [s.colour for s in demo_plan(3)] != [s.colour for s in demo_plan(4)]


def _tissue_stats(colour, texture, seed=1):
    img = render_tissue(np.random.default_rng(seed), colour, texture, 0.5)
    t = saturation(img) > 40
    grey = img.mean(2)
    # texture statistic: how much of the tissue is in small dark blobs, via the fraction of
    # dark pixels whose 5x5 neighbourhood is mostly light (edges of small nuclei)
    from scipy import ndimage

    dark = grey < 0.7 * np.median(grey[t])
    near = ndimage.uniform_filter(dark.astype(float), 5)
    return img[t].mean(0), (dark & (near < 0.6))[t].mean() / max(dark[t].mean(), 1e-9)


def test_colour_and_texture_are_independent_factors():
    stats = {(c, x): _tissue_stats(c, x) for c in COLOURS for x in TEXTURES}
    for x in TEXTURES:  # colour changes the mean colour, whatever the texture
        assert np.abs(stats["pink", x][0] - stats["purple", x][0]).max() > 20
    for c in COLOURS:  # texture leaves the mean colour nearly unchanged ...
        assert np.abs(stats[c, "sparse"][0] - stats[c, "dense"][0]).max() < 6
        # ... but small dense nuclei have much more edge per nucleus area than sparse large
        assert stats[c, "dense"][1] > 1.5 * stats[c, "sparse"][1]


def test_same_tissue_at_40x_and_20x():
    a40 = render_tissue(np.random.default_rng(5), "purple", "dense", 0.25).astype(np.float32)
    a20 = render_tissue(np.random.default_rng(5), "purple", "dense", 0.5).astype(np.float32)
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


def test_label_is_the_xor_of_colour_and_texture():
    plan = demo_plan(0)
    sub, os_ = demo_labels(plan, 0)
    cell = {s.case_id: (s.colour, s.texture) for s in plan}
    want = {("pink", "sparse"): "A", ("purple", "dense"): "A",
            ("pink", "dense"): "B", ("purple", "sparse"): "B"}  # fmt: skip
    assert (sub["label"] == sub["case_id"].map(cell).map(want)).all()
    # neither factor alone predicts the label: each colour (texture) is half A, half B
    for k in (0, 1):
        by = sub.assign(f=sub["case_id"].map(lambda c, k=k: cell[c][k]))
        share = by.groupby("f")["label"].apply(lambda v: (v == "A").mean())
        assert share.between(0.4, 0.6).all(), share
    m = sub.merge(os_, on="case_id")
    med = m.groupby("label")["survival_months"].median()
    assert med["B"] < med["A"]
    assert 0 < m["censorship"].mean() < 0.6


def test_external_plan_is_another_cohort_with_a_case_without_tissue():
    from shazam.demo import external_plan

    ext, main = external_plan(1, 8), demo_plan(0, 32)
    assert not {s.case_id for s in ext} & {s.case_id for s in main}
    assert not {s.slide_id for s in ext} & {s.slide_id for s in main}
    blank = [s for s in ext if s.blank]
    assert [s.case_id for s in blank] == ["ext_blank"]  # a case of its own: no patches at all
    assert {s.case_id for s in ext if not s.blank} == {f"ext{i:03d}" for i in range(8)}
    assert {s.label for s in ext if not s.blank} == {"A", "B"}
    assert external_plan(1, 8) == ext and external_plan(2, 8) != ext
