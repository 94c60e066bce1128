"""``shazam`` subcommands that write outputs from finished artefacts: a teacher's features in
other tools' layouts (``export``), a trained model's attention heatmaps (``heatmap``) and the
report of a task on a labelled external cohort (``external-report``). Registered by
:mod:`shazam.cli` (kept apart for its size); no torch import at parse time."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("shazam")


def cmd_export(a: argparse.Namespace) -> None:
    from .export import export_features
    from .slides import load_sheet

    ids = a.slide_id or list(load_sheet(a.slides, check_files=False)["slide_id"])
    files = export_features(a.teacher, ids, a.layout, a.out, a.features_root, a.level, a.dtype)
    log.info("%d file(s) of teacher %s in %s's layout under %s", len(files), a.teacher,
             a.layout, a.out)  # fmt: skip


def _add_export(sub) -> None:
    ex = sub.add_parser(
        "export", help="a teacher's feature files in TRIDENT's or CLAM's layout (float32)"
    )
    ex.add_argument("--teacher", required=True)
    ex.add_argument("--layout", required=True, choices=("trident", "clam"),
                    help="trident: features_<teacher>/; clam: h5_files/ + pt_files/")  # fmt: skip
    ex.add_argument("--out", required=True, help="TRIDENT's job dir or CLAM's data dir")
    which = ex.add_mutually_exclusive_group(required=True)
    which.add_argument("--slides", help="slide sheet: every slide of it")
    which.add_argument("--slide-id", nargs="+", help="these slides")
    ex.add_argument("--features-root", default="results")
    ex.add_argument("--level", default="high", choices=("low", "mid", "high"))
    ex.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                    help="both tools feed features straight to float32 models")  # fmt: skip
    ex.set_defaults(func=cmd_export)


def cmd_heatmap(a: argparse.Namespace) -> None:
    from .heatmaps import load_fold_model, slide_heatmap

    if a.slide is not None and len(a.slide) != len(a.slide_id):
        raise ValueError(f"{len(a.slide_id)} --slide-id but {len(a.slide)} --slide files")
    paths = dict(zip(a.slide_id, a.slide or [None] * len(a.slide_id), strict=True))
    fm = load_fold_model(a.model_dir, a.device)
    for sid in a.slide_id:
        hm = slide_heatmap(
            a.model_dir, sid, a.out, slide_path=paths[sid], features_root=a.features_root,
            patches_h5=a.patches.format(slide=sid) if a.patches else None, top_k=a.top_k,
            geojson=a.geojson, rows=a.rows, device=a.device, mpp=a.mpp, fold_model=fm,
        )  # fmt: skip
        log.info("heatmap of %s under %s fold %s: %s", sid, fm.name, fm.fold,
                 ", ".join(str(p) for p in hm.files.values()))  # fmt: skip


def _add_heatmap(sub) -> None:
    hm = sub.add_parser(
        "heatmap", help="attention heatmaps of slides under one trained slide model (one fold)"
    )
    hm.add_argument("--model-dir", required=True,
                    help="a fold dir: results/models/{task}/{model}/fold_{k}")  # fmt: skip
    hm.add_argument("--slide-id", nargs="+", required=True)
    hm.add_argument("--slide", nargs="+", default=None,
                    help="the slide files, one per --slide-id (without: the h5 only)")  # fmt: skip
    hm.add_argument("--out", required=True, help="folder of {slide}.h5, .png, _montage.png")
    hm.add_argument("--features-root", default="results")
    hm.add_argument("--patches", default=None,
                    help="patch file path with {slide} (default: the features' attrs)")  # fmt: skip
    hm.add_argument("--mpp", type=float, default=None, help="override the slides' level-0 µm/px")
    hm.add_argument("--top-k", type=int, default=8, help="patches per row of the montage")
    hm.add_argument("--geojson", action="store_true", help="also {slide}.geojson for QuPath")
    hm.add_argument("--rows", type=int, default=4096, help="feature rows scored at a time")
    hm.add_argument("--device", default="cpu")
    hm.set_defaults(func=cmd_heatmap)


def cmd_external_report(a: argparse.Namespace) -> None:
    import json

    from .evaluate import EvalConfig
    from .evaluate.external_report import external_report, read_predictions
    from .io import parse_section
    from .tasks import TaskSpec

    spec = TaskSpec.from_json(a.spec)
    head = external_report(
        spec, a.cohort, read_predictions(a.predictions), a.summary, a.out_dir,
        cfg=parse_section(EvalConfig, a.evaluation, "evaluation"), student=a.student,
    )  # fmt: skip
    log.info("external report of task %s on cohort %s in %s: %s", spec.name, a.cohort,
             a.out_dir, json.dumps(head))  # fmt: skip


def _add_external_report(sub) -> None:
    ex = sub.add_parser(
        "external-report",
        help="a task's report on a labelled external cohort, from its prediction tables",
    )
    ex.add_argument("--spec", required=True, help="the task definition as JSON")
    ex.add_argument("--cohort", required=True, help="the cohort's name")
    ex.add_argument("--predictions", nargs="+", required=True,
                    help="shazam predict's tables (.tsv), one per model: the file's stem is "
                    "the model (results/predictions/{cohort}/{task}/{model}.tsv)")  # fmt: skip
    ex.add_argument("--summary", required=True,
                    help="the internal report's results/report/{task}/summary.tsv: its choice "
                    "of the single teacher")  # fmt: skip
    ex.add_argument("--evaluation", default="{}",
                    help="the config's `evaluation` section as JSON (n_boot, seed, level; "
                    "missing keys take their defaults)")  # fmt: skip
    ex.add_argument("--student", default="shazam", help="the model the baselines are against")
    ex.add_argument("--out-dir", required=True, help="the report's folder")
    ex.set_defaults(func=cmd_external_report)
