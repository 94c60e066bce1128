"""Many slides per extraction job: stable groups, one model load, per-slide isolation."""

import random
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import textured

from shazam.extraction import ExtractParams, extract_slide
from shazam.extraction.groups import slide_groups, summarize_group_tables, write_group_table
from shazam.extraction.slide import SlideJob, extract_slides
from shazam.slides import BadSlideError
from shazam.tiling import TilingParams, tile_slide

P = ExtractParams(batch_size=16, num_workers=0)
IDS = [f"TCGA-{i:04d}-{j:02d}" for i in range(400) for j in range(2)]


# --------------------------------------------------------------------------- grouping


@pytest.mark.parametrize("per_job", [1, 4, 8, 25])
def test_groups_cover_every_slide_once_in_bounded_sizes(per_job):
    groups = slide_groups(IDS, per_job)
    members = [s for g in groups.values() for s in g]
    assert sorted(members) == sorted(IDS)
    sizes = np.array([len(g) for g in groups.values()])
    assert sizes.max() <= 2 * per_job
    if per_job == 1:
        assert (sizes == 1).all()
    else:
        assert 0.5 * per_job <= sizes.mean() <= per_job
    assert all(len(name) == 13 and name.startswith("g") for name in groups)


def test_groups_do_not_depend_on_sheet_order():
    shuffled = IDS.copy()
    random.Random(0).shuffle(shuffled)
    assert slide_groups(shuffled, 8) == slide_groups(IDS, 8)


@pytest.mark.parametrize("change", ["add", "remove"])
def test_adding_or_removing_a_slide_leaves_the_other_groups_alone(change):
    """Editing the sheet changes the group the slide falls in (a new boundary slide splits it
    in two) and, over 100 edits, almost never anything else."""
    base = slide_groups(IDS, 8)
    changed = []
    for k in range(100):
        ids = IDS + [f"NEW-{k}"] if change == "add" else IDS[:k] + IDS[k + 1 :]
        new = slide_groups(ids, 8)
        changed.append(sum(base[g] != new.get(g) for g in base))
    assert np.median(changed) == 1
    assert np.mean(changed) < 1.5


def test_slides_per_job_below_one_is_refused():
    with pytest.raises(ValueError, match="slides_per_job must be at least 1"):
        slide_groups(IDS, 0)
    with pytest.raises(ValueError, match="slides_per_job must be at least 1"):
        ExtractParams(slides_per_job=0)


# --------------------------------------------------------------------------- one job, many slides


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small slides of different tissue, tiled."""
    from shazam.demo import write_svs

    d = tmp_path_factory.mktemp("cohort")
    jobs = []
    for i, colour in enumerate([(200, 80, 160), (110, 60, 170), (180, 120, 140), (90, 90, 190)]):
        img = np.asarray(textured(768, 1024, colour, seed=i))
        path = d / f"s{i}.svs"
        write_svs(path, img, mpp=0.5, objective_power=20, n_levels=2)
        patches = d / f"s{i}.h5"
        tile_slide(f"s{i}", path, patches, d / f"s{i}.json", d / f"s{i}.png",
                   TilingParams(min_tissue_fraction=0.0))  # fmt: skip
        jobs.append(SlideJob(f"s{i}", str(path), str(patches), ""))
    return d, jobs


def _jobs(cohort, out):
    _, jobs = cohort
    out.mkdir(exist_ok=True)
    return [SlideJob(j.slide_id, j.slide, j.patches, str(out / f"{j.slide_id}.h5")) for j in jobs]


def _arrays(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def test_one_job_over_many_slides_equals_one_job_per_slide(cohort, tmp_path):
    jobs = _jobs(cohort, tmp_path / "group")
    rows = extract_slides("toy_cnn", jobs, P, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 4 and not any(r["reused"] for r in rows)
    for j in jobs:
        single = tmp_path / f"single_{j.slide_id}.h5"
        extract_slide("toy_cnn", j.slide_id, j.slide, j.patches, single, P, progress=False)
        a, b = _arrays(j.out), _arrays(single)
        assert set(a) == set(b) == {"coords", "features", "features_low", "features_mid"}
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{j.slide_id}/{k}")
        assert len(a["coords"]) > 0


def _broken(tmp_path, job):
    """The slide file replaced by garbage after tiling."""
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 4096)
    return SlideJob(job.slide_id, str(bad), job.patches, job.out)


def test_a_failed_slide_does_not_sink_its_group_and_a_rerun_redoes_only_it(cohort, tmp_path):
    jobs = _jobs(cohort, tmp_path / "f")
    jobs[1] = _broken(tmp_path, jobs[1])
    with pytest.raises(BadSlideError) as e:
        extract_slides("toy_vit", jobs, P, progress=False)
    msg = str(e.value)
    assert "slide s1" in msg and "broken.svs" in msg and "cannot open" in msg
    assert "3 other slide(s)" in msg and "on_bad_slide: skip" in msg
    for j in (jobs[0], jobs[2], jobs[3]):  # complete, valid files
        with h5py.File(j.out) as f:
            assert f["features"].shape[0] == f["coords"].shape[0] > 0
            assert np.isfinite(f["features"][:]).all()
    assert not (tmp_path / "f/s1.h5").exists()
    assert not list((tmp_path / "f").glob("*.tmp*"))
    # the slide is fixed: the rerun computes it and keeps the three others
    _, orig = cohort
    jobs[1] = SlideJob("s1", orig[1].slide, orig[1].patches, jobs[1].out)
    before = {j.slide_id: (tmp_path / f"f/{j.slide_id}.h5").stat().st_mtime_ns for j in jobs[::2]}
    rows = extract_slides("toy_vit", jobs, P, progress=False)
    assert [r["reused"] for r in rows] == [True, False, True, True]
    for sid, t in before.items():
        assert (tmp_path / f"f/{sid}.h5").stat().st_mtime_ns == t


def test_skip_policy_records_the_failed_slide_with_an_empty_file(cohort, tmp_path):
    jobs = _jobs(cohort, tmp_path / "f")
    jobs[2] = _broken(tmp_path, jobs[2])
    params = ExtractParams(batch_size=16, num_workers=0, on_bad_slide="skip")
    rows = extract_slides("toy_vit", jobs, params, progress=False)
    status = {r["slide_id"]: (r["status"], r["reason"]) for r in rows}
    assert status["s2"][0] == "skipped" and "cannot open" in status["s2"][1]
    assert {status[s][0] for s in ("s0", "s1", "s3")} == {"ok"}
    with h5py.File(jobs[2].out) as f:
        assert f["coords"].shape == (0, 2) and f["features"].shape == (0, 192)
        assert f.attrs["status"] == "skipped" and "cannot open" in f.attrs["reason"]
    # the group's table and the cohort table show it
    write_group_table(rows, tmp_path / "g.tsv", "gabc")
    qc = summarize_group_tables([tmp_path / "g.tsv"], tmp_path / "qc.tsv")
    assert list(qc["slide_id"]) == ["s0", "s1", "s2", "s3"]
    back = pd.read_csv(tmp_path / "qc.tsv", sep="\t").set_index("slide_id")
    assert back.loc["s2", "status"] == "skipped" and back.loc["s0", "group"] == "gabc"
    # a skipped slide is tried again by the next run (and skipped again while still broken)
    rows = extract_slides("toy_vit", jobs, params, progress=False)
    assert [r["reused"] for r in rows] == [True, True, False, True]


def test_changed_settings_are_not_reused(cohort, tmp_path):
    jobs = _jobs(cohort, tmp_path / "f")[:1]
    extract_slides("toy_vit", jobs, P, progress=False)
    rows = extract_slides("toy_vit", jobs, ExtractParams(batch_size=5, num_workers=0))
    assert rows[0]["reused"]  # batch size changes no feature value
    rows = extract_slides("toy_vit", jobs, ExtractParams(num_workers=0, levels=("high",)))
    assert not rows[0]["reused"]
    with h5py.File(jobs[0].out) as f:
        assert set(f) == {"coords", "features"}


def test_cli_extracts_a_group_and_writes_its_table(cohort, tmp_path):
    jobs = _jobs(cohort, tmp_path / "f")[:2]
    cmd = [sys.executable, "-m", "shazam", "extract", "--teacher", "toy_cnn",
           "--slide-id", *[j.slide_id for j in jobs], "--slide", *[j.slide for j in jobs],
           "--patches", *[j.patches for j in jobs], "--out", *[j.out for j in jobs],
           "--table", str(tmp_path / "g.tsv"), "--group", "g0",
           "--extraction", '{"num_workers": 0, "batch_size": 32}']  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    table = pd.read_csv(tmp_path / "g.tsv", sep="\t")
    assert list(table["slide_id"]) == ["s0", "s1"] and set(table["status"]) == {"ok"}
    p = subprocess.run(cmd[:-6] + ["--out", jobs[0].out], capture_output=True, text=True)
    assert p.returncode == 2 and "as many --slide" in p.stderr
