"""The ``shazam`` command line: one subcommand per workflow rule, each a thin call into the library.

Errors that are the user's to fix (bad slide, bad sheet, bad config) print one line naming what,
where and what to do, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__

log = logging.getLogger("shazam")


def _optional_float(s: str) -> float | None:
    return None if s.lower() in ("", "none", "null", "nan") else float(s)


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import write_demo

    sheet = write_demo(a.out, seed=a.seed, n_cases=a.cases)
    log.info("wrote %d slides for %d cases under %s", len(sheet), sheet["case_id"].nunique(), a.out)


def cmd_tile(a: argparse.Namespace) -> None:
    from .tiling import TilingParams, tile_slide

    params = TilingParams(
        target_mpp=a.target_mpp,
        patch_size=a.patch_size,
        overlap=a.overlap,
        min_tissue_fraction=a.min_tissue_fraction,
        default_mpp=a.default_mpp,
        on_bad_slide=a.on_bad_slide,
        seg_mpp=a.seg_mpp,
        min_saturation=a.min_saturation,
        min_component_area_um2=a.min_component_area_um2,
        max_hole_area_um2=a.max_hole_area_um2,
    )
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
    if qc["status"] == "skipped":
        log.warning("slide %s skipped: %s", a.slide_id, qc["reason"])


def cmd_tiling_qc(a: argparse.Namespace) -> None:
    from .tiling import summarize_qc

    df = summarize_qc(a.qc, a.out)
    counts = df["status"].value_counts().to_dict()
    log.info("tiling QC for %d slides: %s -> %s", len(df), counts, a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shazam", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"shazam {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="write the embedded synthetic demo cohort (rule make_demo_data)"
    )
    d.add_argument("--out", required=True, help="output folder (slides/, slides.tsv, labels)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--cases", type=int, default=32)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("tile", help="segment tissue and write the patch grid of one slide")
    t.add_argument("--slide", required=True, help="slide file")
    t.add_argument("--slide-id", required=True)
    t.add_argument("--case-id", default=None)
    t.add_argument("--mpp", type=_optional_float, default=None, help="level-0 MPP override")
    t.add_argument("--out-h5", required=True)
    t.add_argument("--out-qc", required=True)
    t.add_argument("--out-thumbnail", required=True)
    t.add_argument("--target-mpp", type=float, default=0.5)
    t.add_argument("--patch-size", type=int, default=256)
    t.add_argument("--overlap", type=int, default=0)
    t.add_argument("--min-tissue-fraction", type=float, default=0.25)
    t.add_argument("--default-mpp", type=_optional_float, default=None)
    t.add_argument("--on-bad-slide", choices=("fail", "skip"), default="fail")
    t.add_argument("--seg-mpp", type=float, default=16.0)
    t.add_argument("--min-saturation", type=int, default=20)
    t.add_argument("--min-component-area-um2", type=float, default=10_000.0)
    t.add_argument("--max-hole-area-um2", type=float, default=5_000.0)
    t.set_defaults(func=cmd_tile)

    q = sub.add_parser("tiling-qc", help="collect per-slide tiling QC into one table")
    q.add_argument("--out", required=True, help="cohort QC table (.tsv)")
    q.add_argument("qc", nargs="+", help="per-slide QC JSON files")
    q.set_defaults(func=cmd_tiling_qc)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .slides import BadSlideError, SheetError

    try:
        args.func(args)
    except BadSlideError as e:
        print(
            f"error: {e} — fix or replace the file, or set tiling.on_bad_slide: skip",
            file=sys.stderr,
        )
        return 2
    except (SheetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
