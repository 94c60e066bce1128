"""The ``results/`` layout (DESIGN §3): one path template per output, used by the workflow
(``rules/common.smk``) and by the package where one stage finds another's files (the feature
stores, training). Templates use Snakemake's ``{wildcard}`` syntax; :func:`at` fills one in,
under another root than ``results`` where a caller (a test, a scratch run) asks for it.

Pure Python: imported while Snakemake parses the DAG.
"""

from __future__ import annotations

import os

RESULTS = "results"

# tiling (rule tile_slide, tiling_qc)
PATCHES = "results/patches/{slide}.h5"
TILING_QC = "results/qc/tiling/{slide}.json"
THUMBNAIL = "results/qc/tiling/{slide}.png"
QC_TABLE = "results/qc/tiling.tsv"
# extraction (rules extract_features, feature_file, extraction_qc, extract_tile_features,
# export_tile_pt): a job extracts a group of slides (shazam.extraction.groups) into the staged
# files and lists them in its group table; each slide's feature file is then a hard link
FEATURES = "results/features/{teacher}/{slide}.h5"
FEATURE_GROUP = "results/features/{teacher}/groups/{group}.tsv"
STAGED_FEATURES = "results/features/{teacher}/staged/{slide}.h5"
EXTRACTION_QC = "results/qc/extraction.tsv"
TILE_FEATURES = "results/tile_features/{task}/{teacher}.h5"
TILE_PT = "results/tile_features/{task}/{teacher}.pt"
# splits (rule make_splits_{task})
SPLITS_DIR = "results/splits/{task}"
FOLD = SPLITS_DIR + "/fold_{fold}.csv"
SPLITS_SUMMARY = SPLITS_DIR + "/summary.tsv"
# training (rules train_*): one folder per task, model and fold (DESIGN §3.5)
MODELS_DIR = "results/models/{task}"
MODEL_DIR = MODELS_DIR + "/{model}/fold_{fold}"
MODEL_FILES = ("model.safetensors", "config.json", "history.csv", "predictions.csv", "metrics.json")
# evaluation (rule evaluate)
REPORT_DIR = "results/report/{task}"
REPORT_HTML = "results/report/{task}/report.html"
# external cohorts (rules predict_{task}, external_report, external_tiling_qc,
# extract_external_tiles): a prediction table per cohort, task and model, the cohort's
# validation report per task, its tiling QC and its ROI images' features
PREDICTIONS = "results/predictions/{cohort}/{task}/{model}.tsv"
EXTERNAL_DIR = "results/external/{cohort}/{task}"
EXTERNAL_HTML = EXTERNAL_DIR + "/report.html"
EXTERNAL_QC = "results/external/{cohort}/tiling_qc.tsv"
EXTERNAL_TILE_FEATURES = "results/external/{cohort}/tile_features/{task}/{teacher}.h5"
# heatmaps (rule heatmaps): one folder per task, model and fold, with its index.tsv
HEATMAP_DIR = "results/heatmaps/{task}/{model}/fold_{fold}"
# known-answer validation (rule validate)
VALIDATE_SUMMARY = "results/validate/summary.tsv"


def at(template: str, root: str | os.PathLike = RESULTS, **wildcards) -> str:
    """One file of ``template`` with its wildcards filled, under ``root`` instead of
    ``results``."""
    rel = template[len(RESULTS) + 1 :] if template.startswith(RESULTS + "/") else template
    return os.path.join(os.fspath(root), rel.format(**wildcards))


def model_outputs(task: str = "{task}", model: str = "{model}", fold: str = "{fold}") -> dict:
    """The files of one trained model, keyed by stem (``metrics``, ``predictions``, …)."""
    base = MODEL_DIR.format(task=task, model=model, fold=fold)
    return {f.split(".")[0]: f"{base}/{f}" for f in MODEL_FILES}
