"""Operating the workflow: the SLURM profile, rerun isolation, interruption and faults.

Tests that need a finished run copy the session's demo run (`demo_run`) with its Snakemake
metadata into tmp_path; none of them starts a second full demo run.
"""

import os
import re
import shutil
import stat
import subprocess

import pytest
from conftest import REPO, run_snakemake

SLURM_PROFILE = REPO / "workflow/profiles/slurm"

STAND_IN = """#!/bin/sh
# stand-in for the SLURM command {name}: record the call{what}
echo "{name} $*" >> "$FAKE_SLURM_LOG"
{tail}
"""


def _stand_in_slurm(bindir):
    """sbatch records its call and refuses the job; the query tools answer nothing."""
    bindir.mkdir()
    for name in ("sbatch", "squeue", "sacct", "sacctmgr", "sshare", "scontrol", "sinfo"):
        refuse = name == "sbatch"
        tail = 'echo "stand-in sbatch: refused" >&2\nexit 1' if refuse else "exit 0"
        what = " and refuse the job" if refuse else ""
        path = bindir / name
        path.write_text(STAND_IN.format(name=name, what=what, tail=tail))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_profile_parses_in_a_dry_run(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    p = run_snakemake(tmp_path, "-n", "--workflow-profile", str(SLURM_PROFILE))
    # the profile's per-rule resources reach the jobs (the plugin's own keys, such as
    # slurm-logdir, are accepted: an unknown one stops the parse)
    blocks = re.split(r"\n(?=(?:local)?rule )", p.stdout)
    extract = next(b for b in blocks if b.startswith("rule extract_features:"))
    tile = next(b for b in blocks if b.startswith("rule tile_slide:"))
    assert "slurm_partition=gpu" in extract and "gpu=1" in extract and "mem_mb=32000" in extract
    assert "cpus_per_gpu=8" in extract
    assert "slurm_partition=cpu" in tile and "mem_mb=4000" in tile


def test_slurm_sbatch_for_extract_features_requests_a_gpu(tmp_path, monkeypatch):
    """Submit one extract_features job through snakemake-executor-plugin-slurm to a stand-in
    sbatch on PATH and read the call the plugin built, on each of the profile's attempts."""
    _stand_in_slurm(tmp_path / "bin")
    (tmp_path / "a.svs").write_bytes(b"")
    (tmp_path / "slides.tsv").write_text("slide_id\tpath\tcase_id\nS1\ta.svs\tC1\n")
    # the slide is already tiled: only the GPU job is left to submit
    for f in ("results/patches/S1.h5", "results/qc/tiling/S1.json", "results/qc/tiling/S1.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    later = os.stat(tmp_path / "a.svs").st_mtime + 10
    for f in (tmp_path / "results").rglob("*.*"):
        os.utime(f, (later, later))
    (tmp_path / "own.yaml").write_text(
        f"slides: {tmp_path / 'slides.tsv'}\ndemo: {{enabled: false}}\n"
    )
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_SLURM_LOG", str(calls))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    p = run_snakemake(
        tmp_path, "--workflow-profile", str(SLURM_PROFILE),
        "--configfile", str(REPO / "config/config.yaml"), str(tmp_path / "own.yaml"),
        "--latency-wait", "1", "results/features/toy_vit/S1.h5", check=False, timeout=600,
    )  # fmt: skip
    assert p.returncode != 0  # the stand-in refuses every job
    sbatch = [ln for ln in calls.read_text().splitlines() if ln.startswith("sbatch ")]
    assert len(sbatch) == 3, p.stdout + p.stderr  # first try + the profile's 2 retries
    from shazam.extraction.groups import slide_groups

    (group,) = slide_groups(["S1"], 32)
    for attempt, call in enumerate(sbatch, start=1):
        head = call.split("--wrap")[0]
        assert f"--comment rule_extract_features_wildcards_toy_vit_{group}" in head
        assert " --gpus=1" in head  # from the rule's gpu=1
        assert " -p gpu " in head and "--cpus-per-gpu=8" in head  # from the profile
        assert f" --mem {32000 * attempt} " in head and f" -t {120 * attempt} " in head
        assert "--gres" not in head
        assert "logs/slurm/rule_extract_features" in head
        assert f"--attempt {attempt}" in call


def test_missing_local_weights_stop_the_dry_run_naming_the_file(tmp_path):
    """A gated teacher pointed at a local checkpoint that is not there: the run stops before
    any job starts and names the file (the hub fallback's error is tested in test_teachers)."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    missing = tmp_path / "models/UNI2-h/pytorch_model.bin"
    (tmp_path / "w.yaml").write_text(f"teacher_weights: {{toy_cnn: {missing}}}\n")
    p = run_snakemake(
        tmp_path, "-n", "--configfile", str(tmp_path / "config/config.yaml"),
        str(tmp_path / "w.yaml"), check=False,
    )  # fmt: skip
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "Missing input files for rule extract_features" in out and str(missing) in out


def test_truncated_feature_file_names_the_file_and_how_to_regenerate_it(tmp_path):
    import h5py
    import numpy as np
    import pandas as pd

    from shazam.formats import FeatureFileError
    from shazam.stores import FeatureStore

    sheet = pd.DataFrame({"slide_id": ["S1", "S2"], "case_id": ["C1", "C2"]})
    for sid in ("S1", "S2"):
        path = tmp_path / f"features/toy_vit/{sid}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f["features"] = np.ones((400, 192), np.float16)
            f["coords"] = np.zeros((400, 2), np.int64)
    FeatureStore.for_slides(sheet, ["toy_vit"], ["C1", "C2"], root=tmp_path)  # both readable
    bad = tmp_path / "features/toy_vit/S2.h5"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a copy that stopped half-way
    with pytest.raises(FeatureFileError) as e:
        FeatureStore.for_slides(sheet, ["toy_vit"], ["C1", "C2"], root=tmp_path)
    msg = str(e.value)
    assert str(bad) in msg and "truncated" in msg and f"snakemake --forcerun {bad}" in msg
    bad.unlink()
    with pytest.raises(FeatureFileError, match="S2.h5: not found"):
        FeatureStore.for_slides(sheet, ["toy_vit"], ["C1", "C2"], root=tmp_path)


# --------------------------------------------------------------------------- on a finished run


def planned(wd, *args):
    """{rule: [first output of each planned job]} of a dry run in wd."""
    p = run_snakemake(wd, "-n", "--cores", "2", *args)
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in p.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m[1]
            jobs.setdefault(rule, [])
        elif rule and line.startswith("    output: "):
            jobs[rule].append(line.split(": ", 1)[1].split(", ")[0])
            rule = None
    return jobs


def sheet_ids(wd):
    import pandas as pd

    return list(pd.read_csv(wd / "resources/demo/slides.tsv", sep="\t")["slide_id"])


def external_ids(wd):
    """The demo's external cohort's slides (tiled and extracted like the training sheet's)."""
    import pandas as pd

    sheet = wd / "resources/demo/external/slides.tsv"
    return list(pd.read_csv(sheet, sep="\t")["slide_id"]) if sheet.exists() else []


def run_config(wd):
    """Teachers and slide tasks of the finished run (the demo's may change; the tests follow
    it). Tile tasks (no slides) are left out: see ``tile_tasks``."""
    import yaml

    conf = yaml.safe_load((wd / "config/config.yaml").read_text())
    tasks = [k for k, v in conf["tasks"].items() if v.get("type") != "tile_classification"]
    return list(conf["teachers"]), tasks


def tile_tasks(wd):
    import yaml

    conf = yaml.safe_load((wd / "config/config.yaml").read_text())
    return [k for k, v in conf["tasks"].items() if v.get("type") == "tile_classification"]


def extraction_groups(wd):
    """{group: slide ids} of the finished run's extraction jobs."""
    import yaml

    from shazam.extraction.groups import slide_groups

    conf = yaml.safe_load((wd / "config/config.yaml").read_text())
    per_job = conf["extraction"]["slides_per_job"]  # an external cohort has groups of its own
    return {**slide_groups(sheet_ids(wd), per_job), **slide_groups(external_ids(wd), per_job)}


def group_table(wd, teacher, sid):
    """The table of the extraction job (group) that holds ``sid`` in the finished run."""
    group = next(g for g, members in extraction_groups(wd).items() if sid in members)
    return f"results/features/{teacher}/groups/{group}.tsv"


def copy_run(src, dst):
    """A finished run with its .snakemake metadata and file times (copy2 keeps mtimes)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture
def run_copy(demo_run, tmp_path):
    wd, _ = demo_run
    return copy_run(wd, tmp_path / "run")


TRAIN_RULES = ("train_baseline", "train_fusion", "train_shazam")


def check_replacing_one_slide(wd):
    ids = sheet_ids(wd)
    sid = ids[3]
    slide = next((wd / "resources/demo/slides").glob(f"{sid}.*"))
    slide.write_bytes(slide.read_bytes())  # the fixed slide: a new file at the same path
    jobs = planned(wd, "--until", "extract_features")
    assert jobs.pop("tile_slide") == [f"results/patches/{sid}.h5"]
    teachers, tasks = run_config(wd)
    # one extraction job per teacher: the slide's group (it keeps the group's other slides)
    tables = sorted(group_table(wd, t, sid) for t in teachers)
    assert sorted(jobs.pop("extract_features")) == tables
    assert set(jobs) <= {"all"}, jobs  # nothing downstream with --until
    jobs = planned(wd)
    assert jobs["tile_slide"] == [f"results/patches/{sid}.h5"]
    assert sorted(jobs["extract_features"]) == tables and "tiling_qc" in jobs
    group = next(g for g in extraction_groups(wd).values() if sid in g)
    assert sorted(jobs["feature_file"]) == sorted(
        f"results/features/{t}/{s}.h5" for t in teachers for s in group
    )
    assert not any(r.startswith(("make_splits", "make_demo_data")) for r in jobs)
    # every model consumes every slide's features: all of them are retrained
    models = {o.split("/fold_")[0].split("models/")[1] for r in TRAIN_RULES for o in jobs[r]}
    assert {f"{task}/abmil-{t}" for task in tasks for t in teachers} <= models


def check_changing_one_teachers_weights(wd):
    import yaml
    from conftest import BIN

    # the run already used a local checkpoint for one teacher: the config names it, it is
    # older than every output, and the feature files carry no record of the former setting
    teachers, _ = run_config(wd)
    changed = teachers[-1]
    weights = wd / f"{changed}.safetensors"
    weights.write_bytes(b"weights")
    os.utime(weights, (1e9, 1e9))
    conf = yaml.safe_load((wd / "config/config.yaml").read_text())
    conf["teacher_weights"] = {changed: str(weights)}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(conf))
    cnn = [f"results/features/{changed}/{s}.h5" for s in sheet_ids(wd) + external_ids(wd)]
    tables = sorted(f"results/features/{changed}/groups/{g}.tsv" for g in extraction_groups(wd))
    tiles = [f"results/tile_features/{task}/{changed}.h5" for task in tile_tasks(wd)]
    ext = wd.glob(f"results/external/*/tile_features/*/{changed}.h5")
    ext_tiles = sorted(str(p.relative_to(wd)) for p in ext)
    p = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(wd),
         "--cleanup-metadata", *tables, *tiles, *ext_tiles], capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert planned(wd) == {}, "the adopted setting alone must not rerun anything"
    weights.write_bytes(b"new weights")  # a new checkpoint at the same path
    jobs = planned(wd)
    assert sorted(jobs.pop("extract_features")) == tables
    assert sorted(jobs.pop("feature_file")) == sorted(cnn)
    assert sorted(jobs.pop("extract_tile_features", [])) == sorted(tiles)  # its tile features
    assert sorted(jobs.pop("extract_external_tiles", [])) == ext_tiles  # and the cohort's
    assert "tile_slide" not in jobs and not any(r.startswith("make_splits") for r in jobs)
    baselines = {o.split("/")[3] for o in jobs["train_baseline"]}
    assert baselines == {f"abmil-{changed}"}  # the other teachers' models keep their inputs
    if len(teachers) > 1:
        assert jobs["train_fusion"] and jobs["train_shazam"]


def check_changing_a_training_parameter(wd):
    # where training reads its features from changes no result: nothing reruns
    (wd / "disk.yaml").write_text("training: {cache: disk}\n")
    assert planned(wd, "--configfile", str(wd / "config/config.yaml"), str(wd / "disk.yaml")) == {}
    (wd / "more_epochs.yaml").write_text("training: {epochs: 3}\n")
    jobs = planned(wd, "--configfile", str(wd / "config/config.yaml"), str(wd / "more_epochs.yaml"))
    assert all(r in jobs for r in TRAIN_RULES)
    for stage in ("make_demo_data", "tile_slide", "tiling_qc", "extract_features"):
        assert stage not in jobs, jobs.get(stage)
    assert not any(r.startswith("make_splits") for r in jobs)
    check_adding_a_seed(wd)


def check_adding_a_seed(wd):
    """A second training seed repeats the cross-validation: its repetition's splits, its
    models (fold files k … 2k − 1, seed 43) and the reports; nothing that exists reruns."""
    import yaml

    conf = yaml.safe_load((wd / "config/config.yaml").read_text())
    (wd / "seeds.yaml").write_text("training: {seeds: [42, 43]}\n")
    p = run_snakemake(wd, "-n", "-p", "--cores", "2", "--configfile",
                      str(wd / "config/config.yaml"), str(wd / "seeds.yaml"))  # fmt: skip
    jobs = planned(wd, "--configfile", str(wd / "config/config.yaml"), str(wd / "seeds.yaml"))
    splits = {r for r in jobs if r.startswith("make_splits")}
    assert splits == {f"make_splits_{t}_repeat1" for t in conf["tasks"]}
    # the new models join the external cohort's ensembles: its predictions and reports redo
    predict = {f"predict_{t}" for t in conf["tasks"]}
    assert set(jobs) - splits <= {*TRAIN_RULES, "train_tile_model", "evaluate", "all",
                                  *predict, "external_report"}  # fmt: skip
    for rule in (*TRAIN_RULES, "train_tile_model"):
        for out in jobs.get(rule, []):  # results/models/{task}/{model}/fold_{k}/…
            task, k = out.split("/")[2], int(out.split("/fold_")[1].split("/")[0])
            assert k >= conf["tasks"][task].get("folds", 5), out
    out = (p.stdout + p.stderr).splitlines()
    trained = [line for line in out if "shazam train " in line and "--fold-csv" in line]
    assert trained and all('"seed": 43' in line for line in trained)


@pytest.mark.slow
def test_rerun_after_replacing_one_slide_redoes_only_that_slide(run_copy):
    check_replacing_one_slide(run_copy)


@pytest.mark.slow
def test_rerun_after_changing_one_teachers_weights_redoes_only_that_teacher(run_copy):
    check_changing_one_teachers_weights(run_copy)


@pytest.mark.slow
def test_rerun_after_changing_a_training_parameter_skips_tiling_and_extraction(run_copy):
    check_changing_a_training_parameter(run_copy)


def _job_pids(pgid, *words):
    """Processes of a process group whose command line contains every word."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat_ = open(f"/proc/{d}/stat").read()  # noqa: SIM115
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode()  # noqa: SIM115
        except OSError:
            continue
        fields = stat_.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and all(w in cmd for w in words):
            pids.append(int(d))
    return pids


def check_interrupted_job_is_redone(wd):
    """Kill a running extraction: SIGTERM to the job (what SLURM sends at the time limit), then
    SIGKILL to Snakemake and the job at once (a lost node). Neither leaves a complete-looking
    output, and `--rerun-incomplete` redoes the job with the same result."""
    import signal
    import time

    import h5py
    import numpy as np
    from conftest import BIN

    sid = sheet_ids(wd)[0]
    teacher = run_config(wd)[0][0]
    target = wd / f"results/features/{teacher}/{sid}.h5"
    table = wd / group_table(wd, teacher, sid)
    log = wd / f"logs/extract_features/{teacher}/{table.stem}.log"
    staged = wd / f"results/features/{teacher}/staged"
    with h5py.File(target) as f:
        before = {k: f[k][:] for k in f}
    # the slide's group has everything to compute again: its table and its staged files go
    for s in next(g for g in extraction_groups(wd).values() if sid in g):
        (staged / f"{s}.h5").unlink()
    table.unlink()
    target.unlink()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(wd),
           "--cores", "1", str(target.relative_to(wd))]  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGKILL):
        log.unlink(missing_ok=True)
        p = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (log.exists() and _job_pids(p.pid, "shazam", "extract")):
            assert p.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        time.sleep(3.0)  # mid-way through the job
        if sig == signal.SIGTERM:
            for pid in _job_pids(p.pid, "shazam", "extract"):
                os.kill(pid, sig)
        else:
            os.killpg(p.pid, sig)
        assert p.wait(timeout=300) != 0
        assert not table.exists() and not target.exists(), f"{sig!r} left a complete-looking output"
        for f in staged.glob("*.h5"):  # every staged file there is whole (written atomically)
            with h5py.File(f) as h:
                assert h["features"].shape[0] == h["coords"].shape[0]
    # after the SIGKILL the lock stays: unlock, then the interrupted job is planned again
    run_snakemake(wd, "--unlock")
    assert planned(wd)["extract_features"] == [str(table.relative_to(wd))]
    run_snakemake(wd, "--cores", "1", "--rerun-incomplete", str(target.relative_to(wd)))
    with h5py.File(target) as f:
        after = {k: f[k][:] for k in f}
    assert sorted(after) == sorted(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    # at most the consumers of the redone job are left (Snakemake skips even those when it
    # recorded the checksum of an identical, small file), never tiling or extraction
    left = planned(wd)
    upstream = ("make_demo_data", "tile_slide", "tiling_qc", "extract_features", "make_splits")
    assert not [r for r in left if r.startswith(upstream)], left


@pytest.mark.slow
def test_killed_job_leaves_nothing_complete_and_rerun_incomplete_finishes(run_copy):
    check_interrupted_job_is_redone(run_copy)


def check_keep_going_with_bad_slides(demo_wd, tmp_path):
    """An unreadable slide and a slide whose tiles fail to decode, beside a good one."""
    import pandas as pd
    import tifffile

    slides = sorted((demo_wd / "resources/demo/slides").glob("*_s1.svs"))
    shutil.copy(slides[0], tmp_path / "good.svs")
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 4096)
    data = bytearray(slides[1].read_bytes())
    with tifffile.TiffFile(slides[1]) as t:  # zero every level-0 JPEG tile
        for o, c in zip(t.pages[0].dataoffsets, t.pages[0].databytecounts, strict=True):
            data[o : o + c] = b"\x00" * c
    (tmp_path / "tiles.svs").write_bytes(bytes(data))
    (tmp_path / "slides.tsv").write_text(
        "slide_id\tpath\tcase_id\nG1\tgood.svs\tC1\nB1\tbroken.svs\tC2\nT1\ttiles.svs\tC3\n"
    )
    # one slide per extraction job: Snakemake's --keep-going isolates each (within a group
    # the job does it itself: tests/unit/test_extraction_groups.py)
    (tmp_path / "own.yaml").write_text(
        f"slides: {tmp_path / 'slides.tsv'}\ndemo: {{enabled: false}}\n"
        "tiling: {on_bad_slide: skip}\nteachers: [toy_cnn]\nextraction: {slides_per_job: 1}\n"
    )
    features = [f"results/features/toy_cnn/{s}.h5" for s in ("G1", "B1", "T1")]
    p = run_snakemake(
        tmp_path, "results/qc/tiling.tsv", *features, "--cores", "2", "--keep-going",
        "--configfile", str(REPO / "config/config.yaml"), str(tmp_path / "own.yaml"), check=False,
    )  # fmt: skip
    assert p.returncode != 0  # T1's extraction failed ...
    from shazam.extraction.groups import group_of, slide_groups

    t1 = group_of(slide_groups(["G1", "B1", "T1"], 1))["T1"]
    log = (tmp_path / f"logs/extract_features/toy_cnn/{t1}.log").read_text()
    assert "slide T1" in log and "cannot read patch" in log and "on_bad_patch" in log
    assert not (tmp_path / "results/features/toy_cnn/T1.h5").exists()
    # ... and every other job finished: the good slide, the skipped one, the QC table
    assert (tmp_path / "results/features/toy_cnn/G1.h5").exists()
    assert (tmp_path / "results/features/toy_cnn/B1.h5").exists()  # empty, valid
    qc = pd.read_csv(tmp_path / "results/qc/tiling.tsv", sep="\t").set_index("slide_id")
    assert qc.loc["B1", "status"] == "skipped" and "cannot open" in qc.loc["B1", "reason"]
    assert qc.loc["G1", "status"] == "ok" and qc.loc["T1", "status"] == "ok"


@pytest.mark.slow
def test_keep_going_finishes_every_other_slide(demo_run, tmp_path):
    check_keep_going_with_bad_slides(demo_run[0], tmp_path)


def test_gpu_choice_honours_cuda_visible_devices_else_locks_a_free_device(monkeypatch, tmp_path):
    import signal
    import sys
    import time

    import torch

    from shazam.device import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SHAZAM_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # set by SLURM or the user: no lock
    assert select_device() == (torch.device("cuda:0"), None)
    assert not list(tmp_path.iterdir())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    # a job that holds GPU 0 and then dies by SIGKILL: its lock goes with it
    holder = subprocess.Popen(
        [sys.executable, "-c", "from shazam.device import acquire_device_lock as a;"
         "import sys, time; i, h = a(2); print(i, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "0"
    d1, h1 = select_device()
    assert d1 == torch.device("cuda:1")  # GPU 0 is taken
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    time.sleep(0.1)
    d0, h0 = select_device()
    assert d0 == torch.device("cuda:0")  # freed by the killed job
    h0.close()
    h1.close()


def check_truncated_feature_file_fails_training_clearly(wd):
    sid = sheet_ids(wd)[1]
    (teacher, *_), (task, *_) = run_config(wd)
    feat = wd / f"results/features/{teacher}/{sid}.h5"
    st = feat.stat()
    data = feat.read_bytes()
    feat.write_bytes(data[: len(data) // 3])  # a disk that filled up during a copy
    os.utime(feat, ns=(st.st_atime_ns, st.st_mtime_ns))  # Snakemake cannot tell
    model = f"results/models/{task}/abmil-{teacher}/fold_0"
    p = run_snakemake(wd, f"{model}/metrics.json", "-f", "--cores", "1", check=False)
    assert p.returncode != 0
    log = (wd / f"logs/train_baseline/{task}/abmil-{teacher}/fold_0.log").read_text()
    assert f"feature file {feat.relative_to(wd)}" in log and "truncated" in log
    assert f"snakemake --forcerun {feat.relative_to(wd)}" in log
    assert not (wd / model).exists() or not (wd / model / "metrics.json").exists()


@pytest.mark.slow
def test_truncated_feature_file_fails_training_naming_it(run_copy):
    check_truncated_feature_file_fails_training_clearly(run_copy)
