"""``shazam`` subcommands that write outputs from finished artefacts: a teacher's features in
other tools' layouts (``export``), a trained model's attention heatmaps (``heatmap``) and the
report of a task on an external cohort (``external-report``). Registered by
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

    if a.test_of and not a.slides:
        raise SystemExit("error: heatmap: --test-of needs the task's --slides sheet")
    if a.slides or a.external:
        return _heatmap_selection(a)
    if not a.slide_id:
        raise SystemExit("error: heatmap: give --slide-id, or --slides/--external to select")
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


def _heatmap_selection(a: argparse.Namespace) -> None:
    """The selection mode: the slides of :func:`shazam.heatmap_select.select_slides`, their
    files and ``index.tsv`` in ``--out``."""
    from .heatmap_select import EXTERNAL, TEST, Cohort, draw_selected, patch_counter, select_slides
    from .heatmaps import load_fold_model
    from .predict import case_labels
    from .slides import load_sheet
    from .splits import read_fold

    if a.slide or a.mpp is not None:
        raise SystemExit("error: heatmap: with --slides/--external the slide files and mpp "
                         "come from the sheets; drop --slide/--mpp")  # fmt: skip
    fm = load_fold_model(a.model_dir, a.device)
    spec = fm.spec
    test = fold = None
    if a.slides:
        labels = case_labels(spec, a.labels or spec.labels)
        test = Cohort(TEST, load_sheet(a.slides, check_files=False), labels, a.slides)
        fold = read_fold(a.test_of) if a.test_of else None
    external = [
        Cohort(EXTERNAL.format(name=name), load_sheet(sheet, check_files=False),
               None if lab.lower() == "none" else case_labels(spec, lab), sheet)
        for name, sheet, lab in a.external or []
    ]  # fmt: skip
    count = patch_counter(fm.teachers[0], a.features_root)
    picks = select_slides(spec, count, a.per_class, test, fold, external, a.slide_id or ())
    index = draw_selected(
        a.model_dir, picks, a.out, a.features_root, a.patches, a.top_k, a.geojson, a.rows,
        a.device, fold_model=fm, log=lambda s: log.info("%s fold %s: %s", fm.name, fm.fold, s),
    )  # fmt: skip
    n = int((index["note"] == "").sum())
    log.info("heatmaps of %s fold %s: %d slide(s) drawn, %d without patches -> %s/index.tsv",
             fm.name, fm.fold, n, len(index) - n, a.out)  # fmt: skip


def _add_heatmap(sub) -> None:
    hm = sub.add_parser(
        "heatmap", help="attention heatmaps of slides under one trained slide model (one fold)"
    )
    hm.add_argument("--model-dir", required=True,
                    help="a fold dir: results/models/{task}/{model}/fold_{k}")  # fmt: skip
    hm.add_argument("--slide-id", nargs="+", default=None,
                    help="these slides (with --slides/--external: also drawn, looked up in "
                    "the sheets)")  # fmt: skip
    hm.add_argument("--slide", nargs="+", default=None,
                    help="the slide files, one per --slide-id (without: the h5 only)")  # fmt: skip
    hm.add_argument(
        "--out",
        required=True,
        help="folder of {slide}.h5, .png, _montage.png (+ index.tsv when selecting)",
    )
    sel = hm.add_argument_group("selection (writes index.tsv)")
    sel.add_argument(
        "--slides", default=None, help="the task's slide sheet: slide files, and --test-of's slides"
    )
    sel.add_argument("--test-of", default=None, metavar="FOLD_CSV",
                     help="a fold file: --per-class of its test cases per class")  # fmt: skip
    sel.add_argument(
        "--labels", default=None, help="the task's label file (default: the one the model recorded)"
    )
    sel.add_argument(
        "--external",
        nargs=3,
        action="append",
        default=None,
        metavar=("NAME", "SHEET", "LABELS"),
        help="an external cohort (LABELS: its label file, or none); repeatable",
    )
    sel.add_argument(
        "--per-class",
        type=int,
        default=2,
        help="cases per class (survival: per event/censored) of each source",
    )
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
    extra = None
    if a.heatmaps:  # the gallery of the cohort's own slides

        def extra(doc):
            from .evaluate.gallery import heatmap_gallery

            heatmap_gallery(doc, a.heatmaps, [f"external:{a.cohort}"], rel_to=a.out_dir)

    head = external_report(
        spec, a.cohort, read_predictions(a.predictions), a.summary, a.out_dir,
        cfg=parse_section(EvalConfig, a.evaluation, "evaluation"), student=a.student,
        extra=extra,
    )  # fmt: skip
    log.info("external report of task %s on cohort %s in %s: %s", spec.name, a.cohort,
             a.out_dir, json.dumps(head))  # fmt: skip


def _add_external_report(sub) -> None:
    ex = sub.add_parser(
        "external-report",
        help="a task's report on an external cohort, from its prediction tables (an "
        "unlabelled cohort: its predictions only)",
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
    ex.add_argument("--student", default=None,
                    help="the model the baselines are against (default: the task's student, "
                    "shazam or, for a tile task, shazam-v1)")  # fmt: skip
    ex.add_argument("--heatmaps", nargs="+", default=None,
                    help="heatmap index.tsv files (the cohort's slides are shown)")  # fmt: skip
    ex.add_argument("--out-dir", required=True, help="the report's folder")
    ex.set_defaults(func=cmd_external_report)
