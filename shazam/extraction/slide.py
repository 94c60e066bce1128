"""One teacher over one slide: patch file + slide → ``results/features/{teacher}/{slide}.h5``.

Field of view is exact: a patch is the level-0 box of ``patch_size_level0`` pixels recorded by
tiling (``patch_size`` px at ``target_mpp``), read at ``patch_level`` and resized to the
teacher's input, so a 40× and a 20× scan give the teacher the same tissue.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from .. import __version__
from ..formats import read_patch_file, write_feature_file
from ..slides import BadSlideError
from ..teachers import get_spec
from .batches import PatchBatches, TeacherRun, read_geometry
from .params import ExtractParams

log = logging.getLogger(__name__)


def extract_slide(
    teacher: str,
    slide_id: str,
    slide_path: str | os.PathLike,
    patches_h5: str | os.PathLike,
    out_h5: str | os.PathLike,
    params: ExtractParams | None = None,
    weights: str | os.PathLike | None = None,
    extractor=None,
    progress: bool = True,
) -> dict:
    """Extract every level of one teacher for one slide and write the feature file atomically.

    ``extractor`` (a built :class:`~shazam.teachers.build.LevelExtractor` with its weights
    identity) can be passed to reuse a loaded model across slides.
    """
    t0 = time.perf_counter()
    params = params or ExtractParams()
    spec = get_spec(teacher)
    coords, attrs = read_patch_file(patches_h5)
    with TeacherRun.open(spec, params, weights, extractor) as run:
        feats = run.buffers(len(coords))
        bad = _embed_patches(run, slide_id, slide_path, coords, attrs, feats, progress)
        if bad:
            log.warning(
                "slide %s: dropped %d unreadable patch(es), first at %s: %s",
                slide_id, len(bad), tuple(coords[bad[0][0]].tolist()), bad[0][1],
            )  # fmt: skip
        keep = np.ones(len(coords), dtype=bool)
        keep[[r for r, _ in bad]] = False
        kept = coords[keep]
        meta = {
            **run.meta(),
            "n_skipped_patches": len(bad),
            "shazam_version": __version__,
            "slide_id": slide_id,
            "input_size": spec.input_size,
            "view": spec.view,
        }
        write_feature_file(
            out_h5, kept, attrs, {lv: a[keep] for lv, a in feats.items()}, meta, bad, coords
        )
        seconds = time.perf_counter() - t0
    return {
        "slide_id": slide_id,
        "teacher": teacher,
        "n_patches": int(len(kept)),
        "n_skipped": len(bad),
        "seconds": round(seconds, 3),
        "patches_per_s": round(len(kept) / seconds, 1) if seconds > 0 else None,
        "device": str(run.device),
    }


def _embed_patches(
    run: TeacherRun,
    slide_id: str,
    slide_path,
    coords: np.ndarray,
    attrs: dict,
    feats: dict,
    progress: bool,
) -> list[tuple[int, str]]:
    """Every patch of the slide through the teacher into ``feats``; returns the unreadable
    patches (row, reason) when ``on_bad_patch: skip``, else stops at the first one."""
    spec = run.spec
    bad: list[tuple[int, str]] = []
    if not len(coords):
        return bad
    # on the CPU, workers resize in parallel; on a GPU the batch is resized there
    on_cpu = run.device.type == "cpu"
    ds = PatchBatches(
        os.fspath(slide_path), coords, read_geometry(attrs), run.params.batch_size,
        resize_to=(spec.resize_to or spec.input_size) if on_cpu else None,
    )  # fmt: skip

    def on_errors(errors):
        if run.params.on_bad_patch == "fail":
            row, reason = errors[0]
            x, y = coords[row]
            raise BadSlideError(
                slide_id,
                slide_path,
                f"cannot read patch {row} at level-0 ({x}, {y}): {reason} — set "
                "extraction.on_bad_patch: skip to drop such patches",
            )
        bad.extend(errors)

    run.embed(ds, feats, spec.resize_to, on_errors, f"{spec.name}/{slide_id}", "patch", progress)
    return bad
