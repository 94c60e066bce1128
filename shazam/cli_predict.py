"""``shazam predict``: every trained model of a task on a new cohort — a slide sheet's cases, or
a tile task's image set — one table (and metrics table) per model. Registered by
:mod:`shazam.cli` (kept apart for its size); no torch import at parse time."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("shazam")


def _log_line(msg: str) -> None:
    from .cli import _log_line  # the package's messages to the log, as every subcommand's

    _log_line(msg)


def cmd_predict(a: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from .predict import NO_PATCHES, model_paths, write_table
    from .tasks import TaskSpec

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    models = list(dict.fromkeys(a.model))
    outs = model_paths(a.out, models, "--out")
    metrics = model_paths(a.metrics_out, models, "--metrics-out") if a.metrics_out else {}
    if a.spec is None:  # the task as the (first) trained model recorded it
        fold0 = Path(a.models_dir) / models[0] / "fold_0" / "config.json"
        a.spec = json.dumps(json.loads(fold0.read_text())["task"])
    spec = TaskSpec.from_json(a.spec)
    predict = _tile_predictor(a, spec) if spec.family == "tile" else _slide_predictor(a, spec)
    for m in models:  # one model's folds in memory at a time
        table = predict(m)
        write_table(table, outs[m])
        if m in metrics:  # the internal report's metrics on this cohort: ensemble and per fold
            from .evaluate.external import external_metrics

            write_table(external_metrics(table, spec, m), metrics[m])
        done = int((~table["note"].str.contains(NO_PATCHES)).sum())
        log.info("%s of task %s on cohort %s: %d of %d %s(s) predicted -> %s", m, spec.name,
                 a.cohort, done, len(table), spec.record.unit[:-3], outs[m])  # fmt: skip


def _slide_predictor(a: argparse.Namespace, spec):
    """model → its table on the cohort's slide sheet (labels validated once)."""
    from .predict import case_labels, predict_cohort
    from .slides import load_sheet

    if a.slides is None or a.tile_features:
        raise ValueError(f"predict: task {spec.name} is a slide task: give the cohort's --slides "
                         "(not --tile-features)")  # fmt: skip
    if a.metrics_out and not a.labels:
        raise ValueError("predict: --metrics-out needs the cohort's --labels")
    sheet = load_sheet(a.slides, check_files=False)
    labels = case_labels(spec, a.labels) if a.labels else None
    return lambda m: predict_cohort(
        spec, a.models_dir, m, a.runs, sheet, a.features_root, labels,
        cohort=a.cohort, device=a.device, log=_log_line,
    )  # fmt: skip


def _tile_predictor(a: argparse.Namespace, spec):
    """model → its table on the image set's tile feature files (``TEACHER=H5``)."""
    from .predict import predict_tiles

    if not a.tile_features or a.slides or a.labels:
        raise ValueError(
            f"predict: task {spec.name} is a tile task: give the image set's --tile-features "
            "TEACHER=H5 … (from `shazam extract-tiles --images`; its labels are the listing's), "
            "not --slides or --labels"
        )
    files = {}
    for item in a.tile_features:
        teacher, sep, path = item.partition("=")
        if not sep or not teacher or not path or teacher in files:
            why = "given twice" if teacher in files else "not TEACHER=H5"
            raise ValueError(f"predict: --tile-features {item}: {why}")
        files[teacher] = path
    return lambda m: predict_tiles(
        spec, a.models_dir, m, a.runs, files, cohort=a.cohort, device=a.device, log=_log_line
    )


def _add_predict(sub) -> None:
    from .models import registry

    pr = sub.add_parser("predict", help="apply every fold's model of a task to a new cohort")
    pr.add_argument("--spec", default=None,
                    help="the task as JSON (default: fold_0/config.json's)")  # fmt: skip
    pr.add_argument("--model", required=True, nargs="+",
                    help=f"one or more trained models ({registry.grammar()})")  # fmt: skip
    pr.add_argument("--models-dir", required=True, help="results/models/{task}")
    pr.add_argument(
        "--runs", type=int, default=None, help="fold folders: folds x seeds (default: folds)"
    )
    pr.add_argument("--slides", default=None, help="the cohort's slide sheet (slide tasks)")
    pr.add_argument("--tile-features", nargs="+", default=None, metavar="TEACHER=H5",
                    help="tile tasks: the image set's feature file of each teacher "
                    "(`shazam extract-tiles --images`)")  # fmt: skip
    pr.add_argument("--features-root", default="results", help="the cohort's features/ under it")
    pr.add_argument("--labels", default=None, help="the cohort's label file (task's columns)")
    pr.add_argument("--cohort", default="cohort", help="the cohort's name (messages)")
    pr.add_argument("--device", default=None, help="cpu, cuda:N (default: the training setting)")
    pr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    pr.add_argument("--out", required=True,
                    help="the table (.tsv), one row per case (image); {model}: the model's name "
                    "(needed with several models)")  # fmt: skip
    pr.add_argument("--metrics-out", default=None,
                    help="with --labels (tile tasks: a labelled image set): metrics "
                    "table (.tsv); {model} as in --out")  # fmt: skip
    pr.set_defaults(func=cmd_predict)
