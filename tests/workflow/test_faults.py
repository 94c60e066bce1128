"""Fault injection across stages, through Snakemake (issue 19): a slide truncated mid-run, a
corrupt level-0 tile, a feature file deleted before training, a full disk during an output
write and a training job killed with SIGKILL. Each ends with a clear message or a recorded
skip, leaves no half-written output (no complete-looking file, no temporary file), and a rerun
completes.

Every test copies the session's finished demo run (`demo_run`) and reruns only the targets
involved: one slide's feature file of one teacher, or one fold of one model.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, run_snakemake
from test_operations import _job_pids, copy_run, group_table, planned, run_config, sheet_ids


@pytest.fixture
def run_copy(demo_run, tmp_path):
    wd, _ = demo_run
    return copy_run(wd, tmp_path / "run")


def datasets(path):
    import h5py

    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def assert_same(a, b):
    import numpy as np

    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def temp_files(path):
    """The temporary files `shazam.io.atomic_path` makes beside ``path``."""
    return list(path.parent.glob(f".{path.name}.*"))


def error_lines(log_text):
    """The `error: ...` lines of a job's log (a progress bar may precede one on its line)."""
    return [ln[ln.index("error: ") :] for ln in log_text.splitlines() if "error: " in ln]


def tiled_slide(wd, min_patches=8):
    """(slide_id, slide path, patch coords, patch attrs) of a slide with tissue."""
    from shazam.formats import read_patch_file

    for sid in sheet_ids(wd):
        coords, attrs = read_patch_file(wd / f"results/patches/{sid}.h5")
        if len(coords) >= min_patches:
            return sid, next((wd / "resources/demo/slides").glob(f"{sid}.*")), coords, attrs
    raise AssertionError("no demo slide has tissue")


def own_config(wd, name, text):
    """--configfile arguments: the run's config with ``text`` on top (they take every word
    after them: put targets before)."""
    (wd / name).write_text(text)
    return ["--configfile", str(wd / "config/config.yaml"), str(wd / name)]


SKIP_PATCHES = "extraction: {on_bad_patch: skip}\n"
SKIP_SLIDES = "extraction: {on_bad_slide: skip}\n"


# --------------------------------------------------------------------------- a truncated slide


def check_slide_truncated_mid_run(wd):
    sid, slide, coords, _ = tiled_slide(wd)
    teacher = run_config(wd)[0][0]
    feat = wd / f"results/features/{teacher}/{sid}.h5"
    table_rel = group_table(wd, teacher, sid)  # the slide's extraction job (its group)
    table = wd / table_rel
    log = wd / f"logs/extract_features/{teacher}/{table.stem}.log"
    staged = wd / f"results/features/{teacher}/staged/{sid}.h5"
    before = datasets(feat)
    good, st = slide.read_bytes(), slide.stat()
    # tiling has read the slide; a half-finished copy then replaces it (its time kept, so
    # Snakemake cannot tell, as when the copy lands while the run goes on)
    slide.write_bytes(good[: len(good) // 2])
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns))
    target = str(feat.relative_to(wd))

    # on_bad_slide: fail (the default): one line naming the slide and its path (it no longer
    # opens: one message, not one per patch); the group's other slides are kept (their inputs
    # did not change), and the job writes no table
    p = run_snakemake(wd, target, "--cores", "1", "--forcerun", table_rel, check=False)
    assert p.returncode != 0
    assert "Error in rule extract_features" in p.stderr and table_rel in p.stderr
    text = log.read_text()
    error = error_lines(text)
    assert len(error) == 1, text
    assert f"slide {sid} ({slide.relative_to(wd)})" in error[0]
    assert "cannot open" in error[0] and "on_bad_slide: skip" in error[0]
    assert "other slide(s) of this" in error[0] and "up to date (same inputs), kept" in text
    assert "Traceback" not in text
    assert not table.exists() and not temp_files(staged) and not temp_files(table)

    # on_bad_slide: skip: an empty feature file that says why, and a `skipped` QC row
    qc = "results/qc/extraction.tsv"
    run_snakemake(wd, target, qc, "--cores", "1", *own_config(wd, "skip.yaml", SKIP_SLIDES))
    skipped = datasets(feat)
    assert len(skipped["coords"]) == 0 and len(skipped["features"]) == 0
    import h5py
    import pandas as pd

    with h5py.File(feat) as f:
        assert f.attrs["status"] == "skipped" and "cannot open" in f.attrs["reason"]
    rows = pd.read_csv(wd / qc, sep="\t")
    skipped_rows = rows[rows["status"] == "skipped"]
    assert set(skipped_rows["slide_id"]) == {sid} and teacher in set(skipped_rows["teacher"])
    assert set(rows["status"]) == {"ok", "skipped"}
    assert f"slide {sid} skipped: cannot open" in log.read_text()
    assert not temp_files(staged)

    # the slide restored: a plain rerun redoes the extraction (its setting changed back) and
    # gives the features of the first run
    slide.write_bytes(good)
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns))
    run_snakemake(wd, target, qc, "--cores", "1")  # every group's setting changed back
    assert_same(datasets(feat), before)
    left = planned(wd, "--until", "extract_features")
    assert not {"tile_slide", "extract_features"} & set(left), left


@pytest.mark.slow
def test_slide_truncated_after_tiling_fails_extraction_naming_it_or_records_skips(run_copy):
    check_slide_truncated_mid_run(run_copy)


# --------------------------------------------------------------------------- a corrupt tile


def corrupt_level0_tile(slide, coords, size0):
    """Zero the level-0 JPEG tile under the middle patch's top-left corner; returns the
    patches whose level-0 box touches that tile."""
    import tifffile

    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as t:
        page = t.pages[0]
        tw, th = page.tilewidth, page.tilelength
        x, y = (int(v) for v in coords[len(coords) // 2])
        i = (y // th) * -(-page.imagewidth // tw) + x // tw
        o, n = page.dataoffsets[i], page.databytecounts[i]
    data[o : o + n] = b"\x00" * n
    slide.write_bytes(bytes(data))
    tx, ty = x // tw * tw, y // th * th
    return {
        (int(a), int(b))
        for a, b in coords
        if a < tx + tw and tx < a + size0 and b < ty + th and ty < b + size0
    }


def check_corrupt_level0_tile(wd):
    sid, slide, coords, attrs = tiled_slide(wd)
    assert int(attrs["patch_level"]) == 0  # extraction reads level 0, tiling a low level
    teacher = run_config(wd)[0][0]
    feat = wd / f"results/features/{teacher}/{sid}.h5"
    table_rel = group_table(wd, teacher, sid)
    log = wd / f"logs/extract_features/{teacher}/{Path(table_rel).stem}.log"
    before = datasets(feat)
    good = slide.read_bytes()
    bad = corrupt_level0_tile(slide, coords, int(attrs["patch_size_level0"]))
    assert bad
    target = str(feat.relative_to(wd))

    # the changed slide is tiled again, without error (tiling reads no level-0 tile) ...
    p = run_snakemake(wd, target, "--cores", "1", check=False)
    assert p.returncode != 0
    qc = json.loads((wd / f"results/qc/tiling/{sid}.json").read_text())
    assert qc["status"] == "ok", qc
    retiled = datasets(wd / f"results/patches/{sid}.h5")["coords"]
    assert_same({"coords": retiled}, {"coords": coords})
    # ... and extraction stops at the first patch on the bad tile, naming slide and patch
    assert "Error in rule extract_features" in p.stderr and table_rel in p.stderr
    text = log.read_text()
    error = error_lines(text)
    assert len(error) == 1 and "Traceback" not in text, text
    assert f"slide {sid} ({slide.relative_to(wd)})" in error[0]
    where = [f"at level-0 ({x}, {y})" for x, y in bad]
    assert "cannot read patch" in error[0] and any(w in error[0] for w in where), error[0]
    assert not (wd / table_rel).exists() and not temp_files(wd / table_rel)

    # on_bad_patch: skip: exactly the patches on that tile are dropped and recorded
    run_snakemake(wd, target, "--cores", "1", *own_config(wd, "skip.yaml", SKIP_PATCHES))
    skipped = datasets(feat)
    assert {tuple(map(int, c)) for c in skipped["skipped_coords"]} == bad
    kept = {tuple(map(int, c)) for c in skipped["coords"]}
    assert kept == {tuple(map(int, c)) for c in coords} - bad
    assert len(skipped["features"]) == len(coords) - len(bad)
    assert f"slide {sid}: dropped {len(bad)} unreadable patch(es)" in log.read_text()

    # the slide restored: the rerun tiles and extracts it again, as in the first run
    slide.write_bytes(good)
    run_snakemake(wd, target, "--cores", "1")
    assert_same(datasets(feat), before)


@pytest.mark.slow
def test_corrupt_level0_tile_passes_tiling_and_extraction_names_the_patch_or_skips_it(run_copy):
    check_corrupt_level0_tile(run_copy)


# --------------------------------------------------------------------------- a deleted feature file


def check_feature_file_deleted_before_training(wd):
    sid = sheet_ids(wd)[1]
    teachers, tasks = run_config(wd)
    teacher = teachers[0]
    feat = wd / f"results/features/{teacher}/{sid}.h5"
    rel = str(feat.relative_to(wd))
    before = datasets(feat)
    feat.unlink()

    # Snakemake plans that one file again (a link to the job's staged file: no extraction)
    # and the models that read it, nothing else upstream
    jobs = planned(wd)
    assert jobs.pop("feature_file") == [rel] and "extract_features" not in jobs
    assert "tile_slide" not in jobs and "extract_tile_features" not in jobs
    assert not any(r.startswith(("make_splits", "make_demo_data")) for r in jobs)
    models = {
        o.split("/fold_")[0].split("models/")[1]
        for r in ("train_baseline", "train_fusion", "train_shazam")
        for o in jobs.get(r, [])
    }
    assert {f"{task}/abmil-{teacher}" for task in tasks} <= models
    assert not {f"{task}/abmil-{t}" for task in tasks for t in teachers[1:]} & models
    assert "train_tile_model" not in jobs  # tile models read no slide features

    # a training job started on it anyway (the file went after Snakemake checked its inputs)
    # stops with the message naming the file and how to regenerate it
    model = f"results/models/{tasks[0]}/abmil-{teacher}/fold_0"
    trained = (wd / model / "metrics.json").stat().st_mtime_ns
    p = run_snakemake(wd, "-n", "-p", "-f", f"{model}/metrics.json")
    shell = [ln.split(": ", 1)[1] for ln in p.stdout.splitlines() if ln.startswith("Shell ")]
    train = [c for c in shell if c.startswith("shazam train ")]
    assert len(train) == 1, p.stdout
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    q = subprocess.run(["bash", "-c", train[0]], cwd=wd, env=env, capture_output=True, text=True)
    assert q.returncode != 0
    text = (wd / f"logs/train_baseline/{tasks[0]}/abmil-{teacher}/fold_0.log").read_text()
    assert f"error: feature file {rel}: not found" in text and f"--forcerun {rel}" in text
    assert "Traceback" not in text
    assert (wd / model / "metrics.json").stat().st_mtime_ns == trained  # the old model stays

    # the rerun (here of the file and that one model, not the whole plan) makes the feature
    # file again, identical, and retrains the model on it
    run_snakemake(wd, rel, f"{model}/metrics.json", "--cores", "1")
    assert_same(datasets(feat), before)
    assert (wd / model / "metrics.json").stat().st_mtime_ns > trained
    assert json.loads((wd / model / "metrics.json").read_text())


@pytest.mark.slow
def test_feature_file_deleted_before_training_is_planned_again_and_named_by_training(run_copy):
    check_feature_file_deleted_before_training(run_copy)


# --------------------------------------------------------------------------- a full disk

# Loaded by every Python process of the run (PYTHONPATH); acts in `shazam` jobs only: the write
# of the output whose path ends with $SHAZAM_TEST_ENOSPC half-fills its temporary file, then
# fails as a full disk does.
DISK_FULL_HOOK = """
import contextlib, errno, os, sys

_FAIL = os.environ.get("SHAZAM_TEST_ENOSPC")
if _FAIL and os.path.basename(sys.argv[0]) == "shazam":
    import shazam.io as _io

    _atomic_path = _io.atomic_path

    @contextlib.contextmanager
    def atomic_path(path):
        with _atomic_path(path) as tmp:
            yield tmp
            if os.fspath(path).endswith(_FAIL):
                with open(tmp, "r+b") as f:
                    f.truncate(os.path.getsize(tmp) // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(tmp))

    _io.atomic_path = atomic_path
"""


def full_disk(monkeypatch, tmp_path, target):
    hook = tmp_path / "disk_full_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(DISK_FULL_HOOK)
    paths = [str(hook), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("SHAZAM_TEST_ENOSPC", target)


def check_full_disk(wd, monkeypatch, tmp_path):
    sid = sheet_ids(wd)[2]
    teachers, tasks = run_config(wd)
    teacher = teachers[-1]
    feat = wd / f"results/features/{teacher}/{sid}.h5"
    rel = str(feat.relative_to(wd))
    table_rel = group_table(wd, teacher, sid)
    staged_rel = f"results/features/{teacher}/staged/{sid}.h5"
    staged = wd / staged_rel
    before = datasets(feat)
    staged.unlink()  # the job must compute it (the group's other slides are kept)
    model = wd / f"results/models/{tasks[0]}/abmil-{teacher}/fold_1"
    model_files = ("model.safetensors", "config.json", "history.csv", "predictions.csv")
    metrics = str((model / "metrics.json").relative_to(wd))

    with monkeypatch.context() as m:
        # the feature file: one HDF5 write
        full_disk(m, tmp_path, staged_rel)
        p = run_snakemake(wd, rel, "--cores", "1", "--forcerun", table_rel, check=False)
        assert p.returncode != 0
        log = f"logs/extract_features/{teacher}/{Path(table_rel).stem}.log"
        assert "Error in rule extract_features" in p.stderr and log in p.stderr
        text = (wd / log).read_text()
        assert error_lines(text) == [
            f"error: cannot read or write a file ({staged_rel}): No space left on device"
        ]
        assert not staged.exists() and not temp_files(staged)
        assert not (wd / table_rel).exists()
        # a model: four files written, the fifth (metrics.json, written last) fails
        full_disk(m, tmp_path, metrics)
        p = run_snakemake(wd, metrics, "-f", "--cores", "1", check=False)
        assert p.returncode != 0
        log = f"logs/train_baseline/{tasks[0]}/abmil-{teacher}/fold_1.log"
        assert "Error in rule train_baseline" in p.stderr and log in p.stderr
        assert "No space left on device" in (wd / log).read_text()
        left = [f for f in model.iterdir()] if model.exists() else []
        assert not left, f"a failed job left {left}"  # Snakemake removes the other four

    # space again: the rerun makes both, the feature file as before
    run_snakemake(wd, rel, metrics, "--cores", "1")
    assert_same(datasets(feat), before)
    assert json.loads((model / "metrics.json").read_text())
    assert all((model / f).stat().st_size for f in model_files)
    assert not [f for f in model.iterdir() if f.name.startswith(".")]


@pytest.mark.slow
def test_full_disk_during_an_output_write_leaves_no_file_and_rerun_completes(
    run_copy, monkeypatch, tmp_path
):
    check_full_disk(run_copy, monkeypatch, tmp_path)


# --------------------------------------------------------------------------- a killed training job

LONG_TRAINING = "training: {epochs: 300}\n"  # time to kill it between epochs


def check_killed_training_job(wd):
    """SIGKILL to the training job alone (the OOM killer), then to Snakemake and the job at
    once (a lost node): neither leaves a model file, and the run resumes with
    `--rerun-incomplete` (test_operations kills an extraction job the same way)."""
    _, tasks = run_config(wd)
    teacher = run_config(wd)[0][0]
    name = f"{tasks[0]}/abmil-{teacher}/fold_0"
    model = wd / f"results/models/{name}"
    metrics = str((model / "metrics.json").relative_to(wd))
    log = wd / f"logs/train_baseline/{name}.log"
    conf = own_config(wd, "long.yaml", LONG_TRAINING)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(wd),
           "--cores", "1", metrics, *conf]  # fmt: skip
    for whom in ("job", "group"):
        log.unlink(missing_ok=True)
        p = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        # mid-way through the epochs
        while not (log.exists() and '"epoch": 5,' in log.read_text()):
            assert p.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        jobs = _job_pids(p.pid, "shazam", "train")
        assert jobs
        if whom == "job":
            for pid in jobs:
                os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(p.pid, signal.SIGKILL)
        err = p.stderr.read()
        p.stderr.close()
        assert p.wait(timeout=300) != 0
        if whom == "job":
            assert "Error in rule train_baseline" in err and str(log.relative_to(wd)) in err
        left = list(model.iterdir()) if model.exists() else []
        assert not left, f"SIGKILL to the {whom} left {left}"
    # after the lost node the lock stays: unlock, then the interrupted job is planned again
    run_snakemake(wd, "--unlock")
    assert list(planned(wd, metrics, *conf)) == ["train_baseline"]
    run_snakemake(wd, "--cores", "1", "--rerun-incomplete", metrics, *conf)
    record = json.loads((model / "config.json").read_text())
    assert record["train"]["epochs"] == 300
    assert json.loads((model / "metrics.json").read_text())
    assert planned(wd, metrics, *conf) == {}


@pytest.mark.slow
def test_training_killed_with_sigkill_leaves_no_model_and_the_run_resumes(run_copy):
    check_killed_training_job(run_copy)
