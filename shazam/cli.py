"""The ``shazam`` command line: one subcommand per workflow rule, each a thin call into the library.

Errors that are the user's to fix (bad slide, bad sheet, bad config) print one line naming what,
where and what to do, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .cli_outputs import _add_export, _add_external_report, _add_heatmap
from .cli_predict import _add_predict
from .teachers.commands import add_teachers

log = logging.getLogger("shazam")


def _optional_str(s: str) -> str | None:
    return None if s.lower() in ("", "none", "null") else s


# Per-job values (paths, ids, names) are flags; a config section travels as one JSON argument
# whose keys are the config's and whose defaults are the package dataclass's.
SECTION_HELP = (
    "the config's `{section}` section as JSON (missing keys take their defaults; see "
    "config/README.md)"
)


def _optional_float(s: str) -> float | None:
    return None if s.lower() in ("", "none", "null", "nan") else float(s)


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import write_demo

    sheet = write_demo(a.out, seed=a.seed, n_cases=a.cases, workers=a.workers, external=a.external)
    log.info("wrote %d slides for %d cases under %s", len(sheet), sheet["case_id"].nunique(), a.out)


def cmd_demo_tiles(a: argparse.Namespace) -> None:
    from .demo import write_demo_tiles

    table = write_demo_tiles(a.out, seed=a.seed, n_cases=a.cases, prefix=a.prefix)
    log.info("wrote %d ROI images of %d cases under %s", len(table), a.cases, a.out)


def cmd_tile(a: argparse.Namespace) -> None:
    from .io import parse_section
    from .tiling import TilingParams, tile_slide

    params = parse_section(TilingParams, a.tiling, "tiling")
    qc = tile_slide(
        a.slide_id,
        a.slide,
        a.out_h5,
        a.out_qc,
        a.out_thumbnail,
        params,
        mpp_override=a.mpp,
        case_id=a.case_id,
    )
    log.info(
        "slide %s: %s, %d patches (MPP %s from %s) in %.2fs",
        a.slide_id,
        qc["status"],
        qc.get("n_patches", 0),
        qc.get("mpp", "?"),
        qc.get("mpp_source", "?"),
        qc["seconds"],
    )
    if qc["status"] in ("skipped", "too_small"):
        log.warning("slide %s %s: %s", a.slide_id, qc["status"].replace("_", " "), qc["reason"])
    if qc.get("traceback") and _traceback_to_log(a):
        log.warning("traceback of the failure (also in %s):\n%s", a.out_qc, qc["traceback"])


def _traceback_to_log(a: argparse.Namespace) -> bool:
    """Whether the traceback of an unexpected failure is written to stderr: with ``-v``, or
    when stderr is a regular file — a workflow job's log (the rules send it there) — never
    to a terminal or a pipe, which get the one-line ``error:`` message only."""
    if getattr(a, "verbose", False):
        return True
    import os
    import stat

    try:
        return stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def cmd_tiling_qc(a: argparse.Namespace) -> None:
    from .tiling import summarize_qc

    df = summarize_qc(a.qc, a.out)
    counts = df["status"].value_counts().to_dict()
    log.info("tiling QC for %d slides: %s -> %s", len(df), counts, a.out)


def _extract_params(a: argparse.Namespace):
    import torch

    from .extraction import ExtractParams
    from .io import parse_section

    if a.threads:
        torch.set_num_threads(a.threads)
    return parse_section(ExtractParams, a.extraction, "extraction")


def cmd_extract(a: argparse.Namespace) -> None:
    from .extraction.slide import SlideJob, extract_slides

    n = len(a.slide_id)
    if not (len(a.slide) == len(a.patches) == len(a.out) == n):
        raise ValueError(
            f"extract: give as many --slide ({len(a.slide)}), --patches ({len(a.patches)}) and "
            f"--out ({len(a.out)}) as --slide-id ({n}), in the same order"
        )
    jobs = [SlideJob(*row) for row in zip(a.slide_id, a.slide, a.patches, a.out, strict=True)]
    rows = extract_slides(a.teacher, jobs, _extract_params(a), weights=a.weights)
    for r in rows:
        log.info(
            "%s/%s: %s, %d patches (%d skipped) in %.1fs%s on %s",
            a.teacher, r["slide_id"], r["status"], r["n_patches"], r["n_skipped_patches"],
            r["seconds"], " (up to date, kept)" if r["reused"] else "", r["device"],
        )  # fmt: skip
    if a.table:
        from .extraction.groups import write_group_table

        write_group_table(rows, a.table, a.group)


def cmd_extraction_qc(a: argparse.Namespace) -> None:
    from .extraction.groups import summarize_group_tables

    df = summarize_group_tables(a.tables, a.out)
    counts = df["status"].value_counts().to_dict()
    log.info("extraction QC for %d slide x teacher: %s -> %s", len(df), counts, a.out)


def cmd_extract_tiles(a: argparse.Namespace) -> None:
    from .extraction import extract_tiles
    from .tasks import TaskSpec

    spec = TaskSpec.from_json(a.spec)
    res = extract_tiles(
        spec, a.teacher, a.out, _extract_params(a), weights=a.weights, target_mpp=a.target_mpp,
        images=a.images,
    )  # fmt: skip
    log.info(
        "%s/%s: %d images in %.1fs on %s",
        a.teacher, spec.name, res["n_images"], res["seconds"], res["device"],
    )  # fmt: skip


def cmd_export_pt(a: argparse.Namespace) -> None:
    from .formats import export_pt

    n, c = export_pt(a.features, a.out)
    log.info("%s: %d images x %d dims -> %s", a.features, n, c, a.out)


def _log_line(msg: str) -> None:
    """A package message to the log: ``warning: …`` lines as warnings."""
    if msg.startswith("warning: "):
        log.warning(msg[len("warning: ") :])
    else:
        log.info(msg)


def cmd_import_features(a: argparse.Namespace) -> None:
    from .imports import import_features

    how = import_features(
        a.teacher, a.slide_id, a.out, a.source, coords_file=a.coords, fmt=a.format,
        width=a.width, reference=a.reference, grid=a.grid, log=_log_line,
    )  # fmt: skip
    log.info("%s/%s: %s -> %s", a.teacher, a.slide_id, how, a.out)


def cmd_splits(a: argparse.Namespace) -> None:
    from .slides import load_sheet
    from .splits import repeat_folds, summarize, write_splits
    from .tasks import TaskSpec

    spec = TaskSpec.from_json(a.spec)
    sheet = load_sheet(a.slides, check_files=False) if a.slides else None
    # a slide task without a sheet: a clear error
    cohort, folds = repeat_folds(spec, sheet, a.repeat)
    log.info(
        "%s (%d folds: %s; repetition %d)",
        cohort.report(), len(folds), spec.splits or "generated", a.repeat,
    )  # fmt: skip
    write_splits(folds, cohort, a.out_dir, a.repeat)
    log.info("splits for task %s:\n%s", spec.name, summarize(folds, cohort).to_string(index=False))


def cmd_train(a: argparse.Namespace) -> None:
    import dataclasses
    import json

    import torch

    from .device import single_malloc_arena
    from .slides import load_sheet
    from .tasks import TaskSpec
    from .training import TrainConfig, train_fold

    single_malloc_arena()  # before torch starts its threads
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = TaskSpec.from_json(a.spec)
    cfg = TrainConfig.for_task(spec, json.loads(a.train), json.loads(a.tile_train or "{}"))
    if a.cache:
        cfg = dataclasses.replace(cfg, cache=a.cache)
    # a slide task's cases come from the sheet (train_fold says so when it is missing)
    sheet = load_sheet(a.slides, check_files=False) if a.slides else None
    m = train_fold(
        a.model, spec, a.fold_csv, sheet, a.teachers.split(","), a.out_dir, cfg,
        features_root=a.features_root, log=log.info,
        shazam_cfg=json.loads(a.shazam) if a.shazam else None,
    )  # fmt: skip
    key = spec.primary_metric
    log.info(
        "%s on %s (%s): selected epoch %s, val %s %s, test %s %s",
        a.model, spec.name, a.fold_csv, m["selected_epoch"],
        key, m["val"].get(key), key, m.get(key),
    )  # fmt: skip


def cmd_evaluate(a: argparse.Namespace) -> None:
    import json

    from .evaluate import EvalConfig, evaluate_task
    from .io import parse_section
    from .slides import load_sheet
    from .tasks import TaskSpec

    spec = TaskSpec.from_json(a.spec)
    if a.slides is None and spec.family == "slide":
        raise SystemExit(f"error: task {spec.name} is a slide task: give its --slides sheet")
    sheet = load_sheet(a.slides, check_files=False) if a.slides else None
    head = evaluate_task(
        spec, a.models.split(","), a.teachers.split(",") if a.teachers else [],
        sheet, a.models_dir, a.splits_dir, a.out_dir,
        feature_files=a.feature_files,
        cfg=parse_section(EvalConfig, a.evaluation, "evaluation"),
        settings=json.loads(a.shazam) if a.shazam else None,
        seeds=[int(x) for x in a.seeds.split(",") if x] or None,
        heatmaps=a.heatmaps,
    )  # fmt: skip
    log.info("report for task %s in %s: %s", spec.name, a.out_dir, json.dumps(head))


def cmd_validate(a: argparse.Namespace) -> int:
    from .validate import validate

    df = validate(
        a.out, quick=a.quick, seed=a.seed, threads=a.threads,
        scenarios=a.scenarios.split(",") if a.scenarios else None,
    )  # fmt: skip
    failed = df.loc[df["status"] != "pass", "scenario"].tolist()
    log.info("%d/%d scenarios passed -> %s/summary.tsv", len(df) - len(failed), len(df), a.out)
    if failed:
        print(f"error: expectation(s) not met: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _add_demo(sub) -> None:
    d = sub.add_parser(
        "demo", help="write the embedded synthetic demo cohort (rule make_demo_data)"
    )
    d.add_argument("--out", required=True, help="output folder (slides/, slides.tsv, labels)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--cases", type=int, default=32)
    d.add_argument("--workers", type=int, default=1, help="processes writing slides")
    d.add_argument("--external", action="store_true",
                   help="the demo's external cohort (cases ext000…, one blank case)")  # fmt: skip
    d.set_defaults(func=cmd_demo)
    dt = sub.add_parser(
        "demo-tiles", help="write the demo's ROI image dataset (rule make_demo_tiles)"
    )
    dt.add_argument("--out", required=True, help="dataset folder; its table is written beside it")
    dt.add_argument("--seed", type=int, default=0)
    dt.add_argument("--cases", type=int, default=16)
    dt.add_argument("--prefix", default="roi_case", help="case ids: {prefix}{i:03d}")
    dt.set_defaults(func=cmd_demo_tiles)


def _add_tiling(sub) -> None:
    t = sub.add_parser("tile", help="segment tissue and write the patch grid of one slide")
    t.add_argument("--slide", required=True, help="slide file")
    t.add_argument("--slide-id", required=True)
    t.add_argument("--case-id", default=None)
    t.add_argument("--mpp", type=_optional_float, default=None, help="level-0 MPP override")
    t.add_argument("--out-h5", required=True)
    t.add_argument("--out-qc", required=True)
    t.add_argument("--out-thumbnail", required=True)
    t.add_argument("--tiling", default="{}", help=SECTION_HELP.format(section="tiling"))
    t.set_defaults(func=cmd_tile)
    q = sub.add_parser("tiling-qc", help="collect per-slide tiling QC into one table")
    q.add_argument("--out", required=True, help="cohort QC table (.tsv)")
    q.add_argument("qc", nargs="+", help="per-slide QC JSON files")
    q.set_defaults(func=cmd_tiling_qc)


def _add_extraction(sub) -> None:
    def common(e):
        e.add_argument("--teacher", required=True)
        e.add_argument("--weights", type=_optional_str, default=None)
        e.add_argument("--extraction", default="{}", help=SECTION_HELP.format(section="extraction"))
        e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")

    e = sub.add_parser(
        "extract", help="features of one teacher for one or more slides (one model load)"
    )
    common(e)
    e.add_argument("--slide-id", nargs="+", required=True)
    e.add_argument("--slide", nargs="+", required=True, help="slide files, one per --slide-id")
    e.add_argument("--patches", nargs="+", required=True, help="patch files from `shazam tile`")
    e.add_argument("--out", nargs="+", required=True, help="feature files, one per slide")
    e.add_argument("--table", default=None, help="also write the per-slide table (.tsv) here")
    e.add_argument("--group", default="", help="the group name written into --table")
    e.set_defaults(func=cmd_extract)
    q = sub.add_parser("extraction-qc", help="collect the extraction jobs' tables into one")
    q.add_argument("--out", required=True, help="cohort extraction table (.tsv)")
    q.add_argument("tables", nargs="+", help="per-job tables from `shazam extract --table`")
    q.set_defaults(func=cmd_extraction_qc)
    et = sub.add_parser(
        "extract-tiles", help="features of one teacher for every image of a tile task"
    )
    common(et)
    et.add_argument("--out", required=True)
    et.add_argument("--spec", required=True, help="the tile task definition as JSON")
    et.add_argument("--target-mpp", type=float, default=0.5, help="µm/px the teacher expects")
    et.add_argument("--images", default=None,
                    help="another image set (CSV path[,label][,case_id] or a folder, with or "
                    "without class subfolders) in place of the task's, e.g. a cohort to "
                    "predict; labels optional")  # fmt: skip
    et.set_defaults(func=cmd_extract_tiles)
    ep = sub.add_parser(
        "export-pt", help="a tile feature file as the seed's (features, labels) .pt tuple"
    )
    ep.add_argument("--features", required=True, help="results/tile_features/{task}/{teacher}.h5")
    ep.add_argument("--out", required=True, help="the .pt to write (tensors only)")
    ep.set_defaults(func=cmd_export_pt)


def _add_import(sub) -> None:
    im = sub.add_parser(
        "import-features",
        help="check one slide's existing (TRIDENT, CLAM, shazam) features and adopt them",
    )
    im.add_argument("--teacher", required=True, help="the imported teacher's name")
    im.add_argument("--slide-id", required=True)
    im.add_argument("--format", required=True, choices=("trident", "clam", "shazam"))
    im.add_argument("--source", type=_optional_str, default=None,
                    help="the slide's .h5 (or CLAM .pt); none: no file, an empty one")  # fmt: skip
    im.add_argument("--coords", type=_optional_str, default=None,
                    help="a CLAM patch file with the coords of a .pt")  # fmt: skip
    im.add_argument("--width", type=int, default=None, help="the teacher's width (registry)")
    im.add_argument("--reference", type=_optional_str, default=None,
                    help="the file whose width every file must have (without --width)")  # fmt: skip
    im.add_argument("--grid", type=_optional_str, default=None,
                    help="our patch file of the slide: the coords must be on its grid")  # fmt: skip
    im.add_argument("--out", required=True, help="results/features/{teacher}/{slide}.h5")
    im.set_defaults(func=cmd_import_features)


def _add_splits(sub) -> None:
    sp = sub.add_parser("splits", help="validate a task's labels and write its fold splits")
    sp.add_argument("--spec", required=True, help="the task definition as JSON (from the config)")
    sp.add_argument("--slides", default=None, help="slide sheet (slide-level tasks)")
    sp.add_argument("--out-dir", required=True, help="results/splits/{task}")
    sp.add_argument(
        "--repeat", type=int, default=0,
        help="repetition of the cross-validation (training.seeds): folds dealt with split seed "
        "seed + repeat, written as fold_{repeat*k + j}.csv",
    )  # fmt: skip
    sp.set_defaults(func=cmd_splits)


def _add_training(sub) -> None:
    from .models import registry

    tr = sub.add_parser("train", help="train one slide- or tile-level model on one fold")
    tr.add_argument("--model", required=True, help=f"a model name ({registry.grammar()})")
    tr.add_argument("--shazam", default=None, help=SECTION_HELP.format(section="shazam"))
    tr.add_argument("--spec", required=True, help="the task definition as JSON")
    tr.add_argument("--train", required=True, help=SECTION_HELP.format(section="training"))
    tr.add_argument("--fold-csv", required=True)
    tr.add_argument("--slides", default=None, help="slide sheet (slide-level tasks)")
    tr.add_argument("--tile-train", default=None, help=SECTION_HELP.format(section="tile_training"))
    tr.add_argument("--teachers", required=True, help="comma-separated teachers of the run")
    tr.add_argument("--features-root", default="results")
    tr.add_argument("--out-dir", required=True)
    tr.add_argument("--threads", type=int, default=0)
    tr.add_argument(
        "--cache", choices=("auto", "memory", "disk"), default=None,
        help="where training reads features from (overrides training.cache; changes no result)",
    )  # fmt: skip
    tr.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate", help="compare a task's models (CIs, paired test, figures, report)"
    )
    ev.add_argument("--spec", required=True, help="the task definition as JSON")
    ev.add_argument("--slides", help="slide sheet (slide tasks; a tile task has none)")
    ev.add_argument("--models", required=True, help="comma-separated model names of the task")
    ev.add_argument("--teachers", default="", help="comma-separated teachers of the run")
    ev.add_argument("--models-dir", required=True, help="results/models/{task}")
    ev.add_argument("--splits-dir", required=True, help="results/splits/{task}")
    ev.add_argument("--out-dir", required=True, help="results/report/{task}")
    ev.add_argument(
        "--feature-files", nargs="*", default=[], help="one feature file per teacher (versions)"
    )
    ev.add_argument("--shazam", default=None, help=SECTION_HELP.format(section="shazam"))
    ev.add_argument("--evaluation", default="{}", help=SECTION_HELP.format(section="evaluation"))
    ev.add_argument(
        "--seeds", default="",
        help="comma-separated training seeds, one repetition of the cross-validation each "
        "(training.seeds; default: one run)",
    )  # fmt: skip
    ev.add_argument(
        "--heatmaps", nargs="+", default=None, metavar="INDEX",
        help="the heatmap jobs' index.tsv files: the report shows their test and chosen "
        "slides (default: no heatmaps)",
    )  # fmt: skip
    ev.set_defaults(func=cmd_evaluate)


def _add_validate(sub) -> None:
    va = sub.add_parser("validate", help="known-answer checks on synthetic cohorts (rule validate)")
    va.add_argument("--out", default="results/validate", help="summary.tsv and cohorts/ go here")
    va.add_argument("--quick", action="store_true", help="CI size: a few minutes on 2 cores")
    va.add_argument("--seed", type=int, default=0)
    va.add_argument("--scenarios", default=None, help="comma-separated subset (default: all)")
    va.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    va.set_defaults(func=cmd_validate)


# one adder per workflow stage, in the order of the pipeline
STAGES = (
    _add_demo,
    _add_tiling,
    add_teachers,
    _add_extraction,
    _add_import,
    _add_splits,
    _add_training,
    _add_evaluate,
    _add_predict,
    _add_external_report,
    _add_validate,
    _add_export,
    _add_heatmap,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shazam", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"shazam {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for add in STAGES:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .slides import BadSlideError, SheetError
    from .tasks import LabelError
    from .teachers import UnknownTeacherError

    try:
        rc = args.func(args)
    except BadSlideError as e:
        hint = (
            ""
            if "on_bad_patch" in str(e) or "on_bad_slide" in str(e)
            else " — fix or replace the file, or set tiling.on_bad_slide: skip"
        )
        cause = e.__cause__  # an unexpected exception: its traceback is for the log
        if cause is not None:
            if _traceback_to_log(args):
                log.error(
                    "traceback of the failure (the error line follows):",
                    exc_info=(type(cause), cause, cause.__traceback__),
                )
            else:
                hint += " (`shazam -v ...` prints the traceback)"
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except (SheetError, LabelError, ValueError, UnknownTeacherError) as e:
        log.debug("details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or vanished folder: the machine's, not ours
        if _traceback_to_log(args):
            log.error("traceback of the failure (the error line follows):", exc_info=True)
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: cannot read or write a file{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .teachers.build import TeacherWeightsError

        if isinstance(e, TeacherWeightsError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
