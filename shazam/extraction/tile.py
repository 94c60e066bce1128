"""One teacher over every image of a tile task → ``results/tile_features/{task}/{teacher}.h5``.

Each teacher gives one vector per image, written to one file per task and teacher:

- ``features`` (+ ``features_low``, ``features_mid``): (N, D) per level, rows in listing order;
- ``labels`` (class index in the task's ``classes``), ``image_ids``, ``case_ids``;
- ``image_size`` (N, 2: height, width in pixels) and ``mpp_effective`` (µm/px the teacher saw);
- attrs: classes, teacher, weights identity, precision, MPP and how images were fitted.

Another image set (``images``: an external cohort to predict, listed with the task's settings
by :func:`~shazam.images.load_images`) is written the same way; an image without a label has
``labels`` -1, and the attrs add ``images`` (the listing) and ``n_unlabelled``.

Resolution: images are at the task's ``mpp`` (declared, or assumed to be the target MPP).
``fit: resize`` hands the whole ROI to the teacher (the convention of ROI benchmarks; the
effective MPP is recorded per image), ``fit: crop`` rescales to the target MPP and centre-crops
(pads with white) to the teacher's input, so the teacher sees its training magnification.
The model, device, precision, normalisation and batch loop are slide extraction's
(:mod:`shazam.extraction.batches`).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pandas as pd

from .. import __version__
from ..formats import write_tile_features
from ..images import image_sizes, load_images
from ..tasks import LabelError, TaskSpec
from ..teachers import get_spec
from .batches import ImageBatches, TeacherRun
from .params import ExtractParams

log = logging.getLogger(__name__)


def extract_tiles(
    spec: TaskSpec,
    teacher: str,
    out_h5: str | os.PathLike,
    params: ExtractParams | None = None,
    weights: str | os.PathLike | None = None,
    target_mpp: float = 0.5,
    progress: bool = True,
    images: str | os.PathLike | None = None,
) -> dict:
    """Every level of one teacher for every image of a tile task, in listing order, written
    atomically to one file. ``images``: another image set (CSV or folder) in place of the
    task's own, with the task's classes, MPP, fit and case pattern; labels optional."""
    t0 = time.perf_counter()
    params = params or ExtractParams()
    tspec = get_spec(teacher)
    listed = load_images(spec, images)
    sizes = image_sizes(listed)
    mpp = spec.mpp if spec.mpp is not None else target_mpp
    with TeacherRun.open(tspec, params, weights) as run:
        side, resize_to, eff = _fit_to_teacher(spec, tspec, sizes, mpp, target_mpp)
        feats = run.buffers(len(listed))
        ds = ImageBatches(list(listed["path"]), params.batch_size, side, spec.fit, mpp / target_mpp)

        def on_errors(errors):
            row, reason = errors[0]
            raise LabelError(
                f"task {spec.name}: image {listed['image_id'].iloc[row]} "
                f"({listed['path'].iloc[row]}): cannot decode: {reason}"
            )

        run.embed(ds, feats, resize_to, on_errors, f"{teacher}/{spec.name}", "image", progress)
        _warn_off_target(spec, teacher, listed, eff, target_mpp)
        meta = {
            "task": spec.name,
            "classes": json.dumps(list(spec.classes)),
            **run.meta(),
            "input_size": tspec.input_size,
            "fit": spec.fit,
            "mpp": mpp,
            "mpp_source": "declared" if spec.mpp is not None else "assumed (target_mpp)",
            "target_mpp": target_mpp,
            "shazam_version": __version__,
        }
        if images is not None:  # the task's own extraction keeps its attrs as they were
            meta["images"] = os.fspath(images)
            meta["n_unlabelled"] = int((listed["y"] < 0).sum())
        write_tile_features(out_h5, listed, feats, sizes, eff, meta)
    seconds = time.perf_counter() - t0
    return {"task": spec.name, "teacher": teacher, "n_images": len(listed),
            "seconds": round(seconds, 3), "device": str(run.device)}  # fmt: skip


def _fit_to_teacher(
    spec: TaskSpec, tspec, sizes: np.ndarray, mpp: float, target_mpp: float
) -> tuple[int, int | None, np.ndarray]:
    """(side the images are fitted to, the teacher's resize-then-crop size or None, the
    effective MPP the teacher sees per image)."""
    if spec.fit == "crop":
        # the teacher's input at the target MPP; the resize_to → crop step does not apply
        eff = np.full(len(sizes), target_mpp, dtype=np.float32)
        return tspec.input_size, None, eff
    side = tspec.resize_to or tspec.input_size
    eff = (mpp * np.sqrt(sizes[:, 0].astype(float) * sizes[:, 1]) / side).astype(np.float32)
    return side, tspec.resize_to, eff


def _warn_off_target(
    spec: TaskSpec, teacher: str, images: pd.DataFrame, eff: np.ndarray, target_mpp: float
) -> None:
    """A warning when images reach the teacher more than 1.4x away from the target MPP."""
    off = np.abs(np.log2(eff / target_mpp)) > 0.5
    if off.any():
        log.warning(
            "task %s: %d of %d images reach %s at an MPP more than 1.4x away from the target "
            "%.2f (e.g. %s at %.2f µm/px); fit: crop keeps the target MPP",
            spec.name, int(off.sum()), len(images), teacher, target_mpp,
            images["image_id"].iloc[int(np.argmax(off))], float(eff[np.argmax(off)]),
        )  # fmt: skip
