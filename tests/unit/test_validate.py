"""Known-answer validation: `shazam validate --quick` passes, and every scenario's check fails
when the property it claims is removed (with real training, on the same quick cohorts)."""

import subprocess
import sys

import pandas as pd
import pytest

from shazam import cli
from shazam.formats import read_feature_file
from shazam.validate import (
    SCENARIOS,
    Validator,
    run,
    run_scenario,
    with_run,
)
from shazam.validate.cohorts import DIMS, QUICK


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The whole quick validation, run once; its Validator keeps cohorts and trained runs so
    the tests below only train the runs they change."""
    import shazam.validate as sv

    out = tmp_path_factory.mktemp("validate")
    made = []

    def keep(*args, **kw):  # the CLI's own Validator, kept for the tests below
        made.append(Validator(*args, **kw))
        return made[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sv, "Validator", keep)
        rc = cli.main(["validate", "--quick", "--out", str(out)])  # `shazam validate --quick`
    assert made[0].size == QUICK
    return out, made[0], rc


def test_quick_validation_passes_every_scenario(quick):
    out, _, rc = quick
    table = pd.read_csv(out / "summary.tsv", sep="\t")
    assert list(table.columns) == ["scenario", "expected", "observed", "status", "seconds"]
    assert list(table["scenario"]) == list(SCENARIOS)
    assert (table["status"] == "pass").all(), table.to_string()
    assert table["observed"].str.len().gt(10).all()
    assert rc == 0


def test_cohorts_are_real_feature_files(quick):
    out, v, _ = quick
    c = v.cohort("xor")
    case = c.split["test"][0]
    for t in ("A", "B", "C"):
        for level in ("low", "mid", "high"):
            feats, coords, attrs = read_feature_file(
                out / "cohorts/xor/features" / t / f"{case}.h5", level
            )
            assert feats.shape == (len(coords), DIMS[t]) and attrs["teacher"] == t


def _fails(v, name, role, r):
    row = run_scenario(v, with_run(SCENARIOS[name], role, r))
    assert row["status"] == "FAIL", row
    return row


def test_complementary_fails_when_concat_sees_only_teacher_a(quick):
    _, v, _ = quick
    _fails(v, "complementary", "concat", run("xor", "concat", "A"))


def test_useless_teacher_fails_with_the_gate_disabled(quick):
    _, v, _ = quick
    _fails(v, "useless_teacher", "shazam_ABC", run("xor", "shazam", "A", "B", "C", gate=False))
    res = v.result(run("xor", "shazam", "A", "B", "C", gate=False))
    assert max(res.gate_mean.values()) - min(res.gate_mean.values()) < 1e-6  # uniform


def test_needle_fails_without_attention(quick):
    _, v, _ = quick
    # mean pooling in the attention role: uniform weights put only the signal's share (<= 10%)
    # of the mass on the signal patches
    row = _fails(v, "needle", "abmil", run("needle", "meanpool-A", "A"))
    assert v.result(run("needle", "meanpool-A", "A")).attention_mass <= 0.10
    assert "attention mass" in row["observed"]


def test_survival_fails_when_the_hazard_factor_is_invisible(quick):
    _, v, _ = quick
    _fails(v, "survival", "single_A", run("survival", "abmil-B", "B"))


def test_distillation_fails_when_distillation_is_off(quick):
    _, v, _ = quick
    _fails(v, "distillation", "distill", run("xor", "shazam", "A", "B", distill_weight=0.0))


def test_cli_exit_status(quick, tmp_path, monkeypatch):
    _, v, _ = quick
    # a failing expectation: non-zero exit, the scenario named on stderr, the table written
    broken = with_run(SCENARIOS["needle"], "abmil", run("needle", "meanpool-A", "A"))
    monkeypatch.setitem(SCENARIOS, "needle", broken)
    monkeypatch.setattr("shazam.validate.Validator", lambda *a, **k: v)  # reuse trained runs
    assert cli.main(["validate", "--quick", "--out", str(tmp_path), "--scenarios", "needle"]) == 1
    assert pd.read_csv(tmp_path / "summary.tsv", sep="\t")["status"].tolist() == ["FAIL"]
    monkeypatch.undo()
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "validate", "--scenarios", "nope", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2 and "unknown scenario(s) nope" in p.stderr
