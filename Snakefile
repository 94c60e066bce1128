# Shazam: slides -> patches -> teacher features -> splits -> baselines + student -> report.
# Thin entry point: every helper lives in rules/common.smk, every stage in its own rule file,
# and every rule is a shell call into the `shazam` package.
from snakemake.utils import min_version

from shazam.slides import SLIDE_ID_PATTERN

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    slide=SLIDE_ID_PATTERN,
    teacher=TEACHER_RE,
    task="|".join(TASKS) or "NO_TASK",
    fold=r"\d+",
    group=r"g[0-9a-f]{12}",
    shazam_model=registry.student_regex("slide"),
    tile_model=registry.wildcard_regex("tile", TEACHERS),


include: "rules/demo.smk"
include: "rules/tiling.smk"
include: "rules/extraction.smk"
include: "rules/import.smk"
include: "rules/splits.smk"
include: "rules/training.smk"
include: "rules/evaluate.smk"
include: "rules/predict.smk"
include: "rules/external.smk"
include: "rules/heatmaps.smk"
include: "rules/validate.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
