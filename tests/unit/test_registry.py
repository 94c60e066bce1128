"""The model registry (one owner of model names), the task kinds and the results layout."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shazam import layout
from shazam.models import registry
from shazam.tasks import TASK_KINDS, TaskSpec

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def schema_defaults(section: str) -> dict:
    props = SCHEMA["properties"][section]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def test_parsing_the_workflow_and_listing_models_imports_no_torch():
    code = (
        # what rules/common.smk imports while Snakemake parses the DAG, and the CLI
        "import sys, shazam, shazam.cli, shazam.tasks, shazam.layout, shazam.formats\n"
        "import shazam.demo, shazam.slides, shazam.teachers\n"
        "from shazam.models import registry\n"
        "print(registry.roster(['a', 'b'], ['shazam-nodistill']))\n"
        "print(registry.wildcard_regex('slide', ['a', 'b']), registry.grammar())\n"
        "heavy = [m for m in ('torch', 'timm', 'snakemake') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "shazam-nodistill" in p.stdout


def test_rosters_per_task_kind():
    assert registry.roster(["x"]) == ["abmil-x"]  # one teacher: nothing to fuse or distil
    assert registry.roster(["x", "y"], ["shazam-nodistill", "shazam", "shazam-high"]) == [
        "abmil-x", "abmil-y", "concat", "shazam", "shazam-nodistill", "shazam-high",
    ]  # fmt: skip
    # a tile task trains the ablations registered for tiles only
    assert registry.roster(["x", "y"], ["shazam-nodistill", "shazam-high"], tile=True) == [
        "mlp-x", "mlp-y", "concat-mlp", "shazam-v1", "shazam-v1-nodistill",
    ]  # fmt: skip


def test_every_trained_name_parses_and_matches_its_wildcard():
    teachers = ["toy_vit", "uni2_h"]
    every = registry.ablation_names()
    for family, tile in (("slide", False), ("tile", True)):
        pattern = re.compile(registry.wildcard_regex(family, teachers))
        for name in registry.roster(teachers, every, tile=tile):
            m = registry.parse(name)
            assert m.family == family and pattern.fullmatch(name), name
            assert m.teachers(teachers) == ([m.teacher] if m.role == "single" else teachers)
        assert not pattern.fullmatch("abmil-other") and not pattern.fullmatch("late-fusion")
    assert registry.parse("shazam-v1").family == "tile"
    assert registry.parse("late-fusion").role == "late-fusion"
    with pytest.raises(ValueError, match="unknown model 'shazam-v2'"):
        registry.parse("shazam-v2")


def test_a_new_ablation_is_one_record(monkeypatch):
    """What a contributor adds for a new ablation: one entry of ABLATIONS. Every consumer —
    config check, roster, wildcard, settings, the report's description — follows."""
    new = registry.Ablation({"feed_forward": False}, "without feed-forward layers", tile=True)
    monkeypatch.setitem(registry.ABLATIONS, "noff", new)
    registry.check_ablations(["shazam-noff"])
    assert "shazam-noff" in registry.roster(["a", "b"], ["shazam-noff"])
    assert "shazam-v1-noff" in registry.roster(["a", "b"], ["shazam-noff"], tile=True)
    assert re.fullmatch(registry.student_regex("slide"), "shazam-noff")
    m = registry.parse("shazam-noff")
    assert m.settings({"layers": 2}).feed_forward is False and m.settings({}).layers == 4
    assert m.describe(["a", "b"], 2) == "Shazam ablation: without feed-forward layers"


def test_unknown_ablation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ablation.*shazam-nope.*known: shazam, shazam-"):
        registry.check_ablations(["shazam-nodistill", "shazam-nope"])


def test_student_defaults_are_the_config_schemas():
    s = registry.StudentSettings().as_dict()
    for k, v in schema_defaults("shazam").items():
        if k == "ablations":
            continue
        # d_model None in the package means "the training section's", whose default it is
        want = SCHEMA["properties"]["training"]["properties"]["d_model"]["default"]
        assert (s[k] if k != "d_model" else s[k] or want) == v, k


def _section_class(section):
    from shazam.evaluate import EvalConfig
    from shazam.extraction import ExtractParams
    from shazam.tiling import TilingParams
    from shazam.training import TrainConfig

    return {
        "tiling": TilingParams,
        "extraction": ExtractParams,
        "training": TrainConfig,
        "evaluation": EvalConfig,
    }[section]


@pytest.mark.parametrize("section", ["tiling", "extraction", "training", "evaluation"])
def test_config_section_defaults_are_the_package_dataclasses(section):
    """The schema fills a section's defaults for the workflow, the dataclass for the CLI and
    the library: the two must agree, and every schema key must be a dataclass field (the CLI
    reads the section with shazam.io.parse_section, which rejects unknown keys)."""
    from shazam.io import parse_section

    cls = _section_class(section)
    defaults = schema_defaults(section)
    assert parse_section(cls, defaults, section) == cls(), section


def test_task_kinds_say_what_each_stage_branches_on():
    assert {k: (r.objective, r.unit, r.primary) for k, r in TASK_KINDS.items()} == {
        "classification": ("classification", "case_id", "balanced_accuracy"),
        "survival": ("survival", "case_id", "c_index"),
        "tile_classification": ("classification", "image_id", "balanced_accuracy"),
    }
    surv = TaskSpec("os", "survival", "l.csv", time_col="t", event_col="e", n_bins=6)
    assert surv.n_out == 6 and surv.primary_metric == "c_index" and not surv.is_tile
    tile = TaskSpec("roi", "tile_classification", images="d", classes=("a", "b", "c"))
    assert tile.n_out == 3 and tile.is_tile and tile.source == "d"


def test_layout_fills_templates_under_any_root(tmp_path):
    assert layout.FEATURES.format(teacher="t", slide="s") == "results/features/t/s.h5"
    assert layout.at(layout.FEATURES, tmp_path, teacher="t", slide="s") == str(
        tmp_path / "features/t/s.h5"
    )
    files = layout.model_outputs("subtype", "concat", 3)
    assert files["metrics"] == "results/models/subtype/concat/fold_3/metrics.json"
    assert set(files) == {f.split(".")[0] for f in layout.MODEL_FILES}
