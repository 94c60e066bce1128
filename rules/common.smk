# Helpers for all stage files: config and sheet validation, slide lookups and
# input functions. Validation logic itself lives in the shazam package (unit-tested there).
import json
import math
import shlex
from importlib.metadata import version
from pathlib import Path

from snakemake.utils import validate

from shazam.tasks import TaskSpec
from shazam.demo import demo_plan, demo_tiles_plan
from shazam.slides import load_sheet
from shazam.models.tile import tile_model_names
from shazam.teachers import REGISTRY

validate(config, "../workflow/schemas/config.schema.yaml")

_unknown = [t for t in config["teachers"] if t not in REGISTRY]
if _unknown:
    raise ValueError(
        f"config: unknown teacher(s) {', '.join(_unknown)} in `teachers`; "
        f"registered: {', '.join(REGISTRY)} (see `shazam teachers list`)"
    )
TEACHERS = list(config["teachers"])
# task definitions are checked at parse time (labels are checked by make_splits)
TASK_SPECS = {
    name: TaskSpec.from_config(name, t) for name, t in config["tasks"].items()
}
TASKS = list(TASK_SPECS)
# -- tile-level (ROI) tasks: image datasets with their own rules (rules/tiles.smk)
SLIDE_TASKS = [t for t in TASKS if not TASK_SPECS[t].is_tile]
TILE_TASKS = [t for t in TASKS if TASK_SPECS[t].is_tile]
TILE_TRAIN_JSON = json.dumps(config["tile_training"], sort_keys=True)

TRAIN_JSON = json.dumps(config["training"], sort_keys=True)
SHAZAM_JSON = json.dumps(config["shazam"], sort_keys=True)
SHAZAM_MODELS = ["shazam"] + [m for m in config["shazam"]["ablations"] if m != "shazam"]

# Passed as a param to every rule so that upgrading the package shows up as a rerun reason.
SHAZAM_VERSION = version("shazam")

DEMO = config["demo"]
DEMO_DIR = DEMO["out"]
DEMO_SLIDES = demo_plan(DEMO["seed"], DEMO["cases"])
DEMO_SHEET = f"{DEMO_DIR}/slides.tsv"
DEMO_TILES = demo_tiles_plan(DEMO["seed"], DEMO["tile_cases"])


def _load_slides():
    """The slide sheet; in demo mode, the demo's own plan until make_demo_data has run."""
    sheet_path = config["slides"]
    if not sheet_path:  # tile-level tasks only
        if SLIDE_TASKS or DEMO["enabled"]:
            raise ValueError(
                "config: `slides` (the slide sheet) is needed by slide-level tasks and the demo; "
                "only a config whose tasks are all tile_classification can leave it out"
            )
        # slide rules name the sheet as an input; with no sheet they have none (and no jobs)
        config["slides"] = []
        import pandas as pd

        return pd.DataFrame(columns=["slide_id", "path", "case_id", "mpp"]).astype(
            {"mpp": float}
        )
    if DEMO["enabled"]:
        if Path(sheet_path) != Path(DEMO_SHEET):
            raise ValueError(
                f"config: demo.enabled is true, so `slides` must be {DEMO_SHEET} "
                f"(got {sheet_path}); set demo.enabled: false to use your own sheet"
            )
        if not Path(sheet_path).exists():
            import pandas as pd

            return pd.DataFrame(
                {
                    "slide_id": [s.slide_id for s in DEMO_SLIDES],
                    "path": [f"{DEMO_DIR}/slides/{s.filename}" for s in DEMO_SLIDES],
                    "case_id": [s.case_id for s in DEMO_SLIDES],
                    "mpp": [math.nan] * len(DEMO_SLIDES),
                }
            )
        # demo slides are outputs of make_demo_data: a missing one is rebuilt, not an error
        return load_sheet(sheet_path, check_files=False)
    return load_sheet(sheet_path)


SLIDES = _load_slides()
validate(SLIDES, "../workflow/schemas/slides.schema.yaml")
SLIDE_IDS = list(SLIDES["slide_id"])
# Plain dictionaries for the per-job look-ups below: input functions run once per job
# (30,000 jobs for 10,000 slides and 2 teachers), so they never touch pandas or the disk.
_SLIDE_PATH = dict(zip(SLIDES["slide_id"], SLIDES["path"]))
_SLIDE_ARGS = {
    sid: f"--case-id {shlex.quote(case)} --mpp {'none' if math.isnan(mpp) else f'{mpp:g}'}"
    for sid, case, mpp in zip(SLIDES["slide_id"], SLIDES["case_id"], SLIDES["mpp"])
}


TEACHER_FEATURES = {
    t: [f"results/features/{t}/{sid}.h5" for sid in SLIDE_IDS] for t in TEACHERS
}
ALL_FEATURES = [f for t in TEACHERS for f in TEACHER_FEATURES[t]]


def slide_path(wildcards):
    return _SLIDE_PATH[wildcards.slide]


def slide_args(wildcards):
    """`--case-id C --mpp M` of a slide for `shazam tile` (one look-up instead of two)."""
    return _SLIDE_ARGS[wildcards.slide]


def cli_args(section):
    """`--key value` arguments for one config section, in a stable order."""
    args = []
    for key, value in sorted(config[section].items()):
        flag = key.replace("_", "-")
        if isinstance(value, list):
            value = ",".join(map(str, value))
        args.append(f"--{flag} {'none' if value is None else value}")
    return " ".join(args)


def _teacher_weights_input(wildcards):
    path = config["teacher_weights"].get(wildcards.teacher)
    return [path] if path else []


def _teacher_weights_param(wildcards):
    return config["teacher_weights"].get(wildcards.teacher) or "none"


# A local weight file is an input of its teacher's jobs: replacing it reruns only them.
# Without local weights these are constants, which spares two function calls per job.
teacher_weights_input = _teacher_weights_input if config["teacher_weights"] else []
teacher_weights_param = _teacher_weights_param if config["teacher_weights"] else "none"


def demo_outputs():
    return {
        "sheet": DEMO_SHEET,
        "labels": [f"{DEMO_DIR}/labels_subtype.csv", f"{DEMO_DIR}/labels_os.csv"],
        "slides": [f"{DEMO_DIR}/slides/{s.filename}" for s in DEMO_SLIDES],
    }


def task_spec_json(task):
    return TASK_SPECS[task].to_json()


def task_split_inputs(task):
    """Imported split files of a task (a CLAM splits folder or one table), if any."""
    src = config["tasks"][task].get("splits")
    if not src:
        return []
    if Path(src).is_dir():
        return sorted(str(p) for p in Path(src).glob("splits_*.csv"))
    return [src]


def task_labels(wildcards):
    """A slide task's label table; a tile task's image listing (its labels)."""
    if wildcards.task in TILE_TASKS:
        return tile_images(wildcards.task)
    return config["tasks"][wildcards.task]["labels"]


def task_sheet(wildcards):
    """The slide sheet a slide task's report reads (a tile task has none)."""
    return [] if wildcards.task in TILE_TASKS else config["slides"]


def task_feature_samples(wildcards):
    """One feature file per teacher: the report reads the teacher's identity from it."""
    if wildcards.task in TILE_TASKS:
        return [f"results/tile_features/{wildcards.task}/{t}.h5" for t in TEACHERS]
    return teacher_feature_samples()


MODEL_FILES = (
    "model.safetensors",
    "config.json",
    "history.csv",
    "predictions.csv",
    "metrics.json",
)


def model_outputs(model):
    base = f"results/models/{{task}}/{model}/fold_{{fold}}"
    return {f.split(".")[0]: f"{base}/{f}" for f in MODEL_FILES}


def model_names(task=None):
    """Models per task and fold: one ABMIL per teacher, concat and the Shazam student with its
    configured ablations when there are 2+ teachers; a tile task's models are
    mlp-{teacher}, concat-mlp and shazam-v1[-nodistill]."""
    if task in TILE_TASKS:
        return tile_model_names(TEACHERS, config["shazam"]["ablations"])
    fused = ["concat"] + SHAZAM_MODELS if len(TEACHERS) > 1 else []
    return [f"abmil-{t}" for t in TEACHERS] + fused


def task_folds(task):
    """Fold files of a task (1 for a tile dataset that brings its own split)."""
    return TASK_SPECS[task].n_folds


def model_files(task, name):
    """One output file of every model and fold of a task."""
    return [
        f"results/models/{task}/{m}/fold_{k}/{name}"
        for m in model_names(task)
        for k in range(task_folds(task))
    ]


def teacher_feature_samples():
    """One feature file per teacher: the report reads the teacher's identity from it."""
    return (
        [f"results/features/{t}/{SLIDE_IDS[0]}.h5" for t in TEACHERS]
        if SLIDE_IDS
        else []
    )


def final_outputs():
    """Every task's report, plus the QC table and features (useful without any task)."""
    return (
        (["results/qc/tiling.tsv"] if SLIDE_IDS else [])
        + ALL_FEATURES
        + expand(
            "results/tile_features/{task}/{teacher}.h5",
            task=TILE_TASKS,
            teacher=TEACHERS,
        )
        + [  # the seed's (features, labels) .pt, where a tile task asks for it
            f"results/tile_features/{task}/{t}.pt"
            for task in TILE_TASKS
            if TASK_SPECS[task].export_pt
            for t in TEACHERS
        ]
        + [f"results/report/{task}/report.html" for task in TASKS]
    )


# -- tile-level (ROI) tasks


def tile_images(task):
    """A tile task's listing: its CSV, or its folder (one subfolder per class)."""
    return TASK_SPECS[task].images


def tile_split_inputs(task):
    src = TASK_SPECS[task].splits
    return [] if src in (None, "dataset") else task_split_inputs(task)


def tile_model_features(wildcards):
    m = wildcards.tile_model
    used = [m[len("mlp-") :]] if m.startswith("mlp-") else TEACHERS
    return [f"results/tile_features/{wildcards.task}/{t}.h5" for t in used]


def demo_tile_outputs():
    return {
        "table": f"{DEMO_DIR}/tiles.csv",
        "images": [f"{DEMO_DIR}/tiles/{t.image_id}" for t in DEMO_TILES],
    }
