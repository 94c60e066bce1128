# Helpers for all stage files: config and sheet validation, slide lookups and input
# functions. What things are called and where they go is the package's: task kinds in
# shazam.tasks, model names in shazam.models.registry, the results/ layout in shazam.layout
# (all importable without torch, so parsing the DAG stays light).
import json
import math
import re
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

from snakemake.utils import validate

from shazam import layout
from shazam.demo import demo_plan, demo_tiles_plan, external_plan
from shazam.external_cohorts import check_cohort_sheets, parse_cohorts
from shazam.extraction.groups import group_of, slide_groups
from shazam.imports import ImportSpec, resolve
from shazam.models import registry
from shazam.slides import load_sheet, sheet_frame
from shazam.splits import summary_name
from shazam.tasks import TaskSpec
from shazam.teachers import REGISTRY

validate(config, "../workflow/schemas/config.schema.yaml")

_unknown = [t for t in config["teachers"] if isinstance(t, str) and t not in REGISTRY]
if _unknown:
    raise ValueError(
        f"config: unknown teacher(s) {', '.join(_unknown)} in `teachers`; "
        f"registered: {', '.join(REGISTRY)} (see `shazam teachers list`); features you "
        "already have: {name: NAME, features: FOLDER, format: trident | clam | shazam}"
    )
registry.check_ablations(config["shazam"]["ablations"])
# imported teachers (shazam.imports): features already extracted, adopted by import_features
IMPORTED = {
    t["name"]: ImportSpec.from_config(t, f"teachers[{i}]")
    for i, t in enumerate(config["teachers"])
    if not isinstance(t, str)
}
TEACHERS = [t if isinstance(t, str) else t["name"] for t in config["teachers"]]
OWN_TEACHERS = [t for t in TEACHERS if t not in IMPORTED]
if len(set(TEACHERS)) != len(TEACHERS):
    raise ValueError(f"config: a teacher name is given twice in `teachers`: {TEACHERS}")
if set(config["teacher_weights"]) & set(IMPORTED):
    raise ValueError(
        "config: teacher_weights does not apply to imported teacher(s) "
        f"{', '.join(sorted(set(config['teacher_weights']) & set(IMPORTED)))}: their "
        "features exist, no model is built"
    )
# wildcard constraints: which rule makes a teacher's feature files
TEACHER_RE = "|".join(re.escape(t) for t in TEACHERS) or "NO_TEACHER"
OWN_TEACHER_RE = "|".join(re.escape(t) for t in OWN_TEACHERS) or "NO_TEACHER"
IMPORTED_RE = "|".join(re.escape(t) for t in IMPORTED) or "NO_TEACHER"
# the run tiles (and its bags are our patch grid) only where a teacher is extracted here
TILES = bool(OWN_TEACHERS)
# task definitions are checked at parse time (labels are checked by make_splits)
TASK_SPECS = {
    name: TaskSpec.from_config(name, t) for name, t in config["tasks"].items()
}
TASKS = list(TASK_SPECS)
SLIDE_TASKS = [t for t in TASKS if not TASK_SPECS[t].is_tile]
TILE_TASKS = [t for t in TASKS if TASK_SPECS[t].is_tile]
if IMPORTED and TILE_TASKS:
    raise ValueError(
        f"config: tile task(s) {', '.join(TILE_TASKS)} need every teacher's model, and "
        f"imported teacher(s) {', '.join(IMPORTED)} have features of the slides only"
    )

# config sections travel to the CLI as JSON; the package's dataclasses hold the defaults
# `training.cache` changes no result (only where features are read from, so the job's memory):
# the training rules take it as a resource, not a param, so that changing it retrains nothing
# `training.seeds`: one repetition of every task's cross-validation per seed (`seed` is the
# one-run shorthand). A job's JSON carries its own seed only, so adding a seed adds jobs and
# reruns none.
SEEDS = list(config["training"].get("seeds") or [config["training"].get("seed", 42)])
if len(set(SEEDS)) != len(SEEDS):
    raise ValueError(f"config: training.seeds has a seed twice: {SEEDS}")
TRAIN_JSONS = [
    json.dumps(
        {
            **{
                k: v
                for k, v in config["training"].items()
                if k not in ("cache", "seeds")
            },
            "seed": seed,
        },
        sort_keys=True,
    )
    for seed in SEEDS
]
TRAIN_CACHE = config["training"].get("cache", "auto")
TILE_TRAIN_JSON = json.dumps(config["tile_training"], sort_keys=True)
SHAZAM_JSON = json.dumps(config["shazam"], sort_keys=True)

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
        return sheet_frame()
    if DEMO["enabled"]:
        if Path(sheet_path) != Path(DEMO_SHEET):
            raise ValueError(
                f"config: demo.enabled is true, so `slides` must be {DEMO_SHEET} "
                f"(got {sheet_path}); set demo.enabled: false to use your own sheet"
            )
        if not Path(sheet_path).exists():
            return sheet_frame(
                slide_id=[s.slide_id for s in DEMO_SLIDES],
                path=[f"{DEMO_DIR}/slides/{s.filename}" for s in DEMO_SLIDES],
                case_id=[s.case_id for s in DEMO_SLIDES],
            )
        # demo slides are outputs of make_demo_data: a missing one is rebuilt, not an error
        return load_sheet(sheet_path, check_files=False)
    return load_sheet(sheet_path)


SLIDES = _load_slides()
validate(SLIDES, "../workflow/schemas/slides.schema.yaml")
SLIDE_IDS = list(SLIDES["slide_id"])

# external cohorts (shazam.external_cohorts): other slides (or ROI images) that every task's
# trained models are applied to; their slides are tiled and extracted like the training sheet's
DEMO_EXTERNAL_DIR = f"{DEMO_DIR}/external"
DEMO_EXTERNAL = (
    external_plan(DEMO["external_seed"], DEMO["external_cases"])
    if DEMO["enabled"] and DEMO["external_cases"]
    else []
)
DEMO_EXTERNAL_TILES = DEMO["enabled"] and DEMO["external_tile_cases"] > 0
DEMO_COHORT = "demo_external"


def _demo_cohort():
    """The demo's own external cohort (demo.external_cases, demo.external_tile_cases): its
    slides with the labels of each slide task that reads the demo's labels, and its ROI
    images for each tile task that reads the demo's images. Only in demo mode: a user's
    config with its own sheet inherits no demo cohort."""
    entry = {}
    if DEMO_EXTERNAL:
        entry["slides"] = f"{DEMO_EXTERNAL_DIR}/slides.tsv"
        entry["labels"] = {
            t: f"{DEMO_EXTERNAL_DIR}/{Path(s.source).name}"
            for t, s in TASK_SPECS.items()
            if not s.is_tile and Path(s.source).parent == Path(DEMO_DIR)
        }
    if DEMO_EXTERNAL_TILES:
        entry["images"] = {
            t: f"{DEMO_EXTERNAL_DIR}/tiles.csv"
            for t, s in TASK_SPECS.items()
            if s.is_tile and Path(s.source) == Path(f"{DEMO_DIR}/tiles.csv")
        }
    return entry if entry.get("slides") or entry.get("images") else None


_external, _demo_entry = dict(config["external"]), _demo_cohort()
if _demo_entry:
    if DEMO_COHORT in _external:
        raise ValueError(
            f"config: external.{DEMO_COHORT} is the demo's own cohort's name"
        )
    _external[DEMO_COHORT] = _demo_entry
EXTERNAL = parse_cohorts(_external, TASK_SPECS)


def _load_cohort_sheet(path):
    """An external cohort's sheet; the demo's own plan until make_demo_external has run."""
    if DEMO_EXTERNAL and Path(path) == Path(f"{DEMO_EXTERNAL_DIR}/slides.tsv"):
        if not Path(path).exists():
            return sheet_frame(
                slide_id=[s.slide_id for s in DEMO_EXTERNAL],
                path=[
                    f"{DEMO_EXTERNAL_DIR}/slides/{s.filename}" for s in DEMO_EXTERNAL
                ],
                case_id=[s.case_id for s in DEMO_EXTERNAL],
            )
        return load_sheet(path, check_files=False)
    return load_sheet(path)


COHORT_SHEETS = {
    n: _load_cohort_sheet(c.slides) for n, c in EXTERNAL.items() if c.slides
}
for _sheet in COHORT_SHEETS.values():
    validate(_sheet, "../workflow/schemas/slides.schema.yaml")
if (
    COHORT_SHEETS
):  # unique slide ids; no training case or slide file in an external cohort
    check_cohort_sheets(
        {
            "training": (config["slides"], SLIDES),
            **{n: (EXTERNAL[n].slides, df) for n, df in COHORT_SHEETS.items()},
        },
        "training",
    )
COHORT_SLIDES = {n: list(df["slide_id"]) for n, df in COHORT_SHEETS.items()}
_ALL_SHEETS = [SLIDES, *COHORT_SHEETS.values()]
# Plain dictionaries for the per-job look-ups below: input functions run once per job
# (30,000 jobs for 10,000 slides and 2 teachers), so they never touch pandas or the disk.
_SLIDE_PATH = {s: p for df in _ALL_SHEETS for s, p in zip(df["slide_id"], df["path"])}
_SLIDE_ARGS = {
    sid: f"--case-id {shlex.quote(case)} --mpp {'none' if math.isnan(mpp) else f'{mpp:g}'}"
    for df in _ALL_SHEETS
    for sid, case, mpp in zip(df["slide_id"], df["case_id"], df["mpp"])
}

# extraction jobs: stable groups of slides, one model load each (shazam.extraction.groups);
# each external cohort has groups of its own, so adding a cohort re-extracts no training slide
TRAIN_GROUPS = slide_groups(SLIDE_IDS, config["extraction"]["slides_per_job"])
COHORT_GROUPS = {
    n: slide_groups(ids, config["extraction"]["slides_per_job"])
    for n, ids in COHORT_SLIDES.items()
}
EXTRACT_GROUPS = {**TRAIN_GROUPS}
for _groups in COHORT_GROUPS.values():
    if set(_groups) & set(EXTRACT_GROUPS):  # names are 48 bits of a slide id's hash
        raise ValueError(
            f"extraction groups {set(_groups) & set(EXTRACT_GROUPS)} clash"
        )
    EXTRACT_GROUPS.update(_groups)
GROUP_OF = group_of(EXTRACT_GROUPS)

# each imported teacher's file per slide (None: none, and extraction.on_bad_slide is skip);
# one stat per slide, and every missing one listed in one error
IMPORT_SOURCES, _import_warnings = resolve(
    list(IMPORTED.values()),
    SLIDE_IDS + [s for ids in COHORT_SLIDES.values() for s in ids],
    config["extraction"]["on_bad_slide"],
)
for _line in _import_warnings:
    print(f"warning: {_line}", file=sys.stderr)


def _import_reference(teacher):
    """The width check of an imported teacher: the registry's width when it is a registry
    name (`--width`), else the file of the sheet's first slide that has one."""
    if teacher in REGISTRY and "high" in REGISTRY[teacher].dims:
        return f"--width {REGISTRY[teacher].dims['high']}"
    first = next((s for s in IMPORT_SOURCES[teacher].values() if s), None)
    return f"--reference {shlex.quote(first[0]) if first else 'none'}"


IMPORT_REFERENCE = {t: _import_reference(t) for t in IMPORTED}


def import_inputs(wildcards):
    """The slide's source file (and CLAM patch file), and our patch file where we tile."""
    src = IMPORT_SOURCES[wildcards.teacher][wildcards.slide]
    files = {"source": [], "coords": [], "grid": []}
    if src:
        files["source"] = [src[0]]
        files["coords"] = [src[1]] if src[1] and src[1] != src[0] else []
    if TILES:
        files["grid"] = [layout.PATCHES.format(slide=wildcards.slide)]
    return files


def first_or_none(files):
    """The one file of a named input that may be empty, or `none` (the CLI's word)."""
    return files[0] if len(files) else "none"


TEACHER_FEATURES = {
    t: [layout.FEATURES.format(teacher=t, slide=sid) for sid in SLIDE_IDS]
    for t in TEACHERS
}
ALL_FEATURES = [f for t in TEACHERS for f in TEACHER_FEATURES[t]]


def slide_path(wildcards):
    return _SLIDE_PATH[wildcards.slide]


def slide_args(wildcards):
    """`--case-id C --mpp M` of a slide for `shazam tile` (one look-up instead of two)."""
    return _SLIDE_ARGS[wildcards.slide]


def group_patches(wildcards):
    return [layout.PATCHES.format(slide=s) for s in EXTRACT_GROUPS[wildcards.group]]


def group_slides(wildcards):
    return [_SLIDE_PATH[s] for s in EXTRACT_GROUPS[wildcards.group]]


def group_staged(wildcards):
    return [
        layout.STAGED_FEATURES.format(teacher=wildcards.teacher, slide=s)
        for s in EXTRACT_GROUPS[wildcards.group]
    ]


def slide_group_table(wildcards):
    """The table of the extraction job that holds this slide's features."""
    return layout.FEATURE_GROUP.format(
        teacher=wildcards.teacher, group=GROUP_OF[wildcards.slide]
    )


def section_json(section):
    """One config section as the JSON argument of its CLI stage."""
    return json.dumps(config[section], sort_keys=True)


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


def demo_tile_outputs():
    return {
        "table": f"{DEMO_DIR}/tiles.csv",
        "images": [f"{DEMO_DIR}/tiles/{t.image_id}" for t in DEMO_TILES],
    }


# -- per task: its data, its splits, its models


def task_spec_json(task):
    return TASK_SPECS[task].to_json()


def task_source(task):
    """What lists a task's data: a slide task's label table, a tile task's images (its CSV,
    or its folder with one subfolder per class)."""
    return TASK_SPECS[task].source


def task_labels(wildcards):
    return task_source(wildcards.task)


def task_sheet(task):
    """The slide sheet of a slide task (a tile task has none)."""
    return [] if TASK_SPECS[task].is_tile else config["slides"]


def task_split_inputs(task):
    """Imported split files of a task (a CLAM splits folder or one table), if any."""
    src = TASK_SPECS[task].splits
    if src in (None, "dataset"):  # generated, or a tile dataset's own split column
        return []
    if Path(src).is_dir():
        return sorted(str(p) for p in Path(src).glob("splits_*.csv"))
    return [src]


def task_folds(task):
    """Folds of one cross-validation of a task (1 for a tile dataset with its own split)."""
    return TASK_SPECS[task].n_folds


def task_runs(task):
    """Fold files of a task: its folds once per seed (repeated cross-validation)."""
    return TASK_SPECS[task].n_folds * len(SEEDS)


def train_json(wildcards):
    """The `training` section of one job: with the seed of its repetition (fold // folds)."""
    return TRAIN_JSONS[int(wildcards.fold) // task_folds(wildcards.task)]


def model_names(task):
    """The models a task trains (shazam.models.registry.roster)."""
    return registry.roster(
        TEACHERS, config["shazam"]["ablations"], tile=TASK_SPECS[task].is_tile
    )


def model_outputs(model):
    return layout.model_outputs(model=model)


def model_files(task, name):
    """One output file of every model and fold of a task."""
    return [
        layout.model_outputs(task, m, k)[name.split(".")[0]]
        for m in model_names(task)
        for k in range(task_runs(task))
    ]


def task_feature_samples(wildcards):
    """One feature file per teacher: the report reads the teacher's identity from it."""
    task = wildcards.task
    if TASK_SPECS[task].is_tile:
        return [layout.TILE_FEATURES.format(task=task, teacher=t) for t in TEACHERS]
    return [TEACHER_FEATURES[t][0] for t in TEACHERS] if SLIDE_IDS else []


def tile_model_features(wildcards):
    """The tile feature files a tile model reads: its teacher's, or every teacher's."""
    used = registry.parse(wildcards.tile_model).teachers(TEACHERS)
    return [layout.TILE_FEATURES.format(task=wildcards.task, teacher=t) for t in used]


# -- external cohorts: their inputs to prediction, reports and heatmaps


def cohort_features(cohort, task):
    """What a task's models read of a cohort: every teacher's feature file of its slides, or
    its ROI images' tile feature file per teacher."""
    if TASK_SPECS[task].is_tile:
        return [
            layout.EXTERNAL_TILE_FEATURES.format(cohort=cohort, task=task, teacher=t)
            for t in TEACHERS
        ]
    return [
        layout.FEATURES.format(teacher=t, slide=s)
        for t in TEACHERS
        for s in COHORT_SLIDES[cohort]
    ]


def cohort_sheet(cohort, task):
    return [] if TASK_SPECS[task].is_tile else [EXTERNAL[cohort].slides]


def cohort_labels(cohort, task):
    path = EXTERNAL[cohort].labels.get(task)
    return [path] if path else []


def predict_data(cohort, task, input):
    """`shazam predict`'s data arguments: the sheet (slide tasks) or the tile feature file of
    each teacher (tile tasks), and the labels where the cohort has them."""
    if TASK_SPECS[task].is_tile:
        pairs = " ".join(f"{t}={f}" for t, f in zip(TEACHERS, input.features))
        args = f"--tile-features {pairs}"
    else:
        args = f"--slides {shlex.quote(input.slides[0])}"
    return args + (f" --labels {shlex.quote(input.labels[0])}" if input.labels else "")


def prediction_files(cohort, task):
    return [
        layout.PREDICTIONS.format(cohort=cohort, task=task, model=m)
        for m in model_names(task)
    ]


def external_outputs():
    """Every cohort's prediction tables, the validation report of each labelled (cohort,
    slide task) and of each (cohort, tile task), and each slide cohort's tiling QC."""
    out = []
    for name, c in EXTERNAL.items():
        out += [f for task in c.tasks for f in prediction_files(name, task)]
        reported = [*c.labels, *(t for t in c.images if t in c.tasks)]
        out += [layout.EXTERNAL_HTML.format(cohort=name, task=t) for t in reported]
        out += [layout.EXTERNAL_QC.format(cohort=name)] if c.slides and TILES else []
    return out


# -- heatmaps: which tasks, models and folds are drawn (config `heatmaps`)
HEATMAPS = config["heatmaps"]


def _heatmap_jobs():
    """(task, model, fold) of every heatmap job: by default each slide task's student and
    single-teacher ABMILs on every fold of the first seed."""
    if not HEATMAPS["enabled"]:
        return []
    tasks = HEATMAPS["tasks"] if HEATMAPS["tasks"] is not None else SLIDE_TASKS
    jobs = []
    for task in tasks:
        if task not in SLIDE_TASKS:
            raise ValueError(
                f"config: heatmaps.tasks: {task} is not a slide task "
                f"(slide tasks: {', '.join(SLIDE_TASKS) or 'none'})"
            )
        trained = model_names(task)
        models = HEATMAPS["models"]
        if models is None:  # (one teacher: no student)
            models = [m for m in trained if m == "shazam" or m.startswith("abmil-")]
        for m in models:
            if m not in trained:
                raise ValueError(
                    f"config: heatmaps.models: task {task} trains no model {m} "
                    f"(it trains {', '.join(trained)})"
                )
        folds = HEATMAPS["folds"]
        folds = range(task_folds(task)) if folds is None else folds
        for k in folds:
            if k >= task_runs(task):
                raise ValueError(
                    f"config: heatmaps.folds: task {task} has fold files 0-"
                    f"{task_runs(task) - 1}, not {k}"
                )
        jobs += [(task, m, k) for m in models if m in trained for k in folds]
    return jobs


HEATMAP_JOBS = _heatmap_jobs()
_unknown_slides = sorted(set(HEATMAPS["slides"]) - set(_SLIDE_PATH))
if _unknown_slides:
    raise ValueError(
        f"config: heatmaps.slides: {', '.join(_unknown_slides)} is in no slide sheet "
        "(the training sheet and the external cohorts' sheets)"
    )
# the external cohorts drawn under each task's models
HEATMAP_COHORTS = (
    [n for n, c in EXTERNAL.items() if c.slides] if HEATMAPS["external"] else []
)


def heatmap_outputs():
    return [
        layout.HEATMAP_DIR.format(task=t, model=m, fold=k) for t, m, k in HEATMAP_JOBS
    ]


def task_heatmaps(task):
    """The heatmap folders of a task (the reports' galleries read their index.tsv)."""
    return [
        layout.HEATMAP_DIR.format(task=t, model=m, fold=k)
        for t, m, k in HEATMAP_JOBS
        if t == task
    ]


# A heatmap job draws training slides (its fold's test cases) and external ones. The training
# slides' feature and patch files are not listed: the model, an input, is made from them, so
# they exist (2N inputs per heatmap job would double what Snakemake matches at 10,000 slides).
_HEATMAP_EXTERNAL = [s for n in HEATMAP_COHORTS for s in COHORT_SLIDES[n]]


def heatmap_features(wildcards):
    """The external cohorts' feature files of the model's teachers."""
    used = registry.parse(wildcards.model).teachers(TEACHERS)
    return [
        layout.FEATURES.format(teacher=t, slide=s)
        for t in used
        for s in _HEATMAP_EXTERNAL
    ]


def heatmap_patches(wildcards):
    if not TILES:
        return []
    return [layout.PATCHES.format(slide=s) for s in _HEATMAP_EXTERNAL]


def heatmap_cohort_files(wildcards):
    """The external cohorts' sheets and this task's labels of them."""
    files = []
    for n in HEATMAP_COHORTS:
        files.append(EXTERNAL[n].slides)
        files += cohort_labels(n, wildcards.task)
    return files


def heatmap_external_args(wildcards):
    """`--external NAME SHEET LABELS|none` per external cohort."""
    return " ".join(
        f"--external {n} {shlex.quote(EXTERNAL[n].slides)} "
        f"{shlex.quote(EXTERNAL[n].labels.get(wildcards.task, 'none'))}"
        for n in HEATMAP_COHORTS
    )


def heatmap_chosen_args(wildcards):
    ids = HEATMAPS["slides"]
    return f"--slide-id {' '.join(ids)}" if ids else ""


def final_outputs():
    """Every task's report, plus the QC table and features (useful without any task)."""
    tile_features = [
        layout.TILE_FEATURES.format(task=task, teacher=t)
        for task in TILE_TASKS
        for t in TEACHERS
    ]
    exports = [  # the seed's (features, labels) .pt, where a tile task asks for it
        layout.TILE_PT.format(task=task, teacher=t)
        for task in TILE_TASKS
        if TASK_SPECS[task].export_pt
        for t in TEACHERS
    ]
    qc = [layout.QC_TABLE] if TILES else []  # no tiling where every teacher is imported
    qc += [layout.EXTRACTION_QC] if OWN_TEACHERS else []
    return (
        (qc if SLIDE_IDS else [])
        + ALL_FEATURES
        + tile_features
        + exports
        + [layout.REPORT_HTML.format(task=task) for task in TASKS]
        + external_outputs()
        + heatmap_outputs()
    )
