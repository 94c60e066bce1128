"""Operating the workflow: the SLURM profile, rerun isolation, interruption and faults.

Tests that need a finished run copy the session's demo run (`demo_run`) with its Snakemake
metadata into tmp_path; none of them starts a second full demo run.
"""

import os
import shutil
import stat

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
    assert "extract_features" in p.stdout
    # the plugin's settings in the profile are accepted (an unknown key stops the parse)
    assert "slurm" in (SLURM_PROFILE / "config.yaml").read_text()


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
    for attempt, call in enumerate(sbatch, start=1):
        head = call.split("--wrap")[0]
        assert "--comment rule_extract_features_wildcards_toy_vit_S1" in head
        assert " --gpus=1" in head  # from the rule's gpu=1
        assert " -p gpu " in head and "--cpus-per-gpu=8" in head  # from the profile
        assert f" --mem {32000 * attempt} " in head and f" -t {120 * attempt} " in head
        assert "--gres" not in head
        assert "logs/slurm/rule_extract_features" in head
        assert f"--attempt {attempt}" in call
