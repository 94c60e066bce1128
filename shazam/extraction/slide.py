"""One teacher over slides: patch file + slide → one feature file per slide.

Field of view is exact: a patch is the level-0 box of ``patch_size_level0`` pixels recorded by
tiling (``patch_size`` px at ``target_mpp``), read at ``patch_level`` and resized to the
teacher's input, so a 40× and a 20× scan give the teacher the same tissue.

:func:`extract_slides` is what a workflow job runs: one model load for a group of slides
(``extraction.slides_per_job``), one atomically written file per slide, and per-slide failure
isolation. A slide that fails does not stop the others; under ``on_bad_slide: skip`` it gets
an empty feature file whose attrs say why, under ``fail`` the job ends with an error naming it
after every other slide is done. A slide whose file already holds features computed from the
same inputs (same patch file, slide file, weights, settings and version: its *source
fingerprint*) is not computed again, so a rerun after a failure redoes the failed slide only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..formats import read_patch_file, write_feature_file
from ..slides import BadSlideError
from ..teachers import get_spec
from .batches import PatchBatches, TeacherRun, error_reason, read_geometry
from .params import ExtractParams

log = logging.getLogger(__name__)

SKIPPED = "skipped"


@dataclass(frozen=True)
class SlideJob:
    """One slide of an extraction job: its id, slide file, patch file and feature file."""

    slide_id: str
    slide: str
    patches: str
    out: str


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
    """Extract every level of one teacher for one slide and write the feature file atomically
    (a job of one slide; failures raise). ``extractor``: an already built (LevelExtractor,
    weights identity) to reuse."""
    job = SlideJob(slide_id, os.fspath(slide_path), os.fspath(patches_h5), os.fspath(out_h5))
    params = params or ExtractParams()
    with TeacherRun.open(get_spec(teacher), params, weights, extractor) as run:
        return _extract_one(run, job, source_fingerprint(run, job), progress)


def extract_slides(
    teacher: str,
    jobs: list[SlideJob],
    params: ExtractParams | None = None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict]:
    """Every slide of ``jobs`` with one loaded teacher; returns one record per slide (status
    ``ok`` or ``skipped``, ``reused`` when its file was already up to date).

    Raises :class:`BadSlideError` naming the failed slide(s) once every other slide is written,
    when a slide fails and ``params.on_bad_slide`` is ``fail`` or the failure is not the slide's
    (out of memory, a CUDA error: those are never skipped).
    """
    params = params or ExtractParams()
    t0 = time.perf_counter()
    rows, failed = [], []
    with TeacherRun.open(get_spec(teacher), params, weights) as run:
        log.info(
            "%s ready on %s in %.1fs; %d slide(s)", teacher, run.device,
            time.perf_counter() - t0, len(jobs),
        )  # fmt: skip
        for job in jobs:
            fp = source_fingerprint(run, job)
            kept = _kept_counts(job.out, fp, params.on_bad_patch)
            if kept is not None:
                log.info("slide %s: %s is up to date (same inputs), kept", job.slide_id, job.out)
                n, n_bad = kept
                rows.append(
                    {**_record(job, teacher, run, reused=True), "n_patches": n,
                     "n_skipped_patches": n_bad, "seconds": 0.0, "patches_per_s": None}
                )  # fmt: skip
                continue
            try:
                rows.append(_extract_one(run, job, fp, progress))
            except _WriteError as e:  # a full disk fails every slide: stop here
                raise e.__cause__ from None
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # isolate: the other slides go on
                if params.on_bad_slide == "skip" and _slides_fault(e):
                    rows.append(_skip(run, job, fp, e))
                else:
                    log.error("slide %s failed: %s", job.slide_id, error_reason(e))
                    failed.append((job, e))
    if failed:
        first = failed[0][1]  # an unexpected error keeps its traceback (for the job's log)
        raise _group_error(failed, len(jobs), run.spec.name) from (
            None if isinstance(first, BadSlideError) else first
        )
    return rows


# --------------------------------------------------------------------------- one slide


def _extract_one(run: TeacherRun, job: SlideJob, fingerprint: str, progress: bool) -> dict:
    """Compute one slide's features, then write them (a write error is the machine's, not the
    slide's: it is raised apart, see :func:`extract_slides`)."""
    t0 = time.perf_counter()
    file = _compute(run, job, fingerprint, progress)
    try:
        write_feature_file(job.out, *file)
    except OSError as e:
        raise _WriteError(e) from e
    seconds = time.perf_counter() - t0
    n, n_bad = len(file[0]), file[3]["n_skipped_patches"]
    return {
        **_record(job, run.spec.name, run),
        "n_patches": int(n),
        "n_skipped_patches": int(n_bad),
        "seconds": round(seconds, 3),
        "patches_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }


class _WriteError(Exception):
    """An output could not be written (full disk, vanished folder): stops the job."""


def _compute(run: TeacherRun, job: SlideJob, fingerprint: str, progress: bool) -> tuple:
    """The arguments of :func:`write_feature_file` for one slide."""
    spec = run.spec
    coords, attrs = read_patch_file(job.patches)
    if len(coords):
        _check_opens(job)
    feats = run.buffers(len(coords))
    bad = _embed_patches(run, job.slide_id, job.slide, coords, attrs, feats, progress)
    if bad:
        log.warning(
            "slide %s: dropped %d unreadable patch(es), first at %s: %s",
            job.slide_id, len(bad), tuple(coords[bad[0][0]].tolist()), bad[0][1],
        )  # fmt: skip
    keep = np.ones(len(coords), dtype=bool)
    keep[[r for r, _ in bad]] = False
    meta = {
        **_meta(run, job, fingerprint),
        "n_skipped_patches": len(bad),
        "input_size": spec.input_size,
        "view": spec.view,
    }
    return coords[keep], attrs, {lv: a[keep] for lv, a in feats.items()}, meta, bad, coords


def _check_opens(job: SlideJob) -> None:
    """The slide opens (one clear line instead of one error per patch when it does not)."""
    import openslide

    try:
        openslide.OpenSlide(job.slide).close()
    except Exception as e:
        raise BadSlideError(
            job.slide_id, job.slide, f"cannot open: {error_reason(e)} (it was tiled; was the "
            "file replaced or truncated since? re-copy it, then rerun)",
        ) from e  # fmt: skip


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


# --------------------------------------------------------------------------- records


def _meta(run: TeacherRun, job: SlideJob, fingerprint: str) -> dict:
    return {
        **run.meta(),
        "shazam_version": __version__,
        "slide_id": job.slide_id,
        "source_fingerprint": fingerprint,
    }


def _record(job: SlideJob, teacher: str, run: TeacherRun, reused: bool = False) -> dict:
    rec = {"slide_id": job.slide_id, "teacher": teacher, "status": "ok", "reason": ""}
    return {**rec, "device": str(run.device), "reused": reused}


def _reason(e: Exception) -> str:
    return e.reason if isinstance(e, BadSlideError) else error_reason(e)


def _skip(run: TeacherRun, job: SlideJob, fingerprint: str, e: Exception) -> dict:
    """Under ``on_bad_slide: skip``: an empty feature file whose attrs say why (as tiling
    writes an empty patch file for a skipped slide), and a ``skipped`` record."""
    reason = _reason(e)
    log.warning("slide %s skipped: %s", job.slide_id, reason)
    try:
        coords, attrs = read_patch_file(job.patches)
    except Exception:
        coords, attrs = np.zeros((0, 2), dtype=np.int64), {}
    meta = {**_meta(run, job, fingerprint), "n_skipped_patches": int(len(coords))}
    meta.update(status=SKIPPED, reason=reason)
    empty = np.zeros((0, 2), dtype=np.int64)
    write_feature_file(job.out, empty, attrs, run.buffers(0), meta, [], empty)
    return {
        **_record(job, run.spec.name, run),
        "status": SKIPPED,
        "reason": reason,
        "n_patches": 0,
        "n_skipped_patches": int(len(coords)),
        "seconds": 0.0,
        "patches_per_s": None,
    }


def _slides_fault(e: Exception) -> bool:
    """Whether a failure is the slide's (unreadable slide or patch file), which
    ``on_bad_slide: skip`` may skip, rather than the machine's or the model's."""
    if isinstance(e, BadSlideError | OSError | ValueError | KeyError):
        return True
    return type(e).__module__.split(".")[0] == "openslide"


def _group_error(failed: list, n_jobs: int, teacher: str) -> BadSlideError:
    job, e = failed[0]
    reason = _reason(e)
    more = (
        f"; {len(failed) - 1} more failed: {', '.join(j.slide_id for j, _ in failed[1:])}"
        if len(failed) > 1
        else ""
    )
    done = n_jobs - len(failed)
    kept = (
        f"; the {done} other slide(s) of this {teacher} job are written and a rerun reuses them"
        if done
        else ""
    )
    hint = (
        " — fix or replace the file, or set extraction.on_bad_slide: skip"
        if _slides_fault(e) and "on_bad_patch" not in reason
        else ""
    )
    return BadSlideError(job.slide_id, job.slide, f"{reason}{more}{kept}{hint}")


# --------------------------------------------------------------------------- reuse


def source_fingerprint(run: TeacherRun, job: SlideJob) -> str:
    """A digest of everything a slide's features depend on: the patch file's bytes, the slide
    file's size and modification time, the teacher (weights identity, levels, precision,
    device type, storage dtype) and the versions of the package, torch and timm. Batch size,
    loader workers and grouping change no feature and are left out; so is ``on_bad_patch``,
    which changes a file only when a patch was dropped (see :func:`_kept_counts`)."""
    h = hashlib.sha256()
    with open(job.patches, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    try:
        st = os.stat(job.slide)
        slide = [st.st_size, st.st_mtime_ns]
    except OSError:
        slide = None
    import timm
    import torch

    key = {
        "patches_sha256": h.hexdigest(),
        "libraries": [torch.__version__, timm.__version__],
        "slide": slide,
        "teacher": run.meta(),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _kept_counts(path: str, fingerprint: str, on_bad_patch: str) -> tuple[int, int] | None:
    """(patches, dropped patches) of a feature file that can be kept: complete (files are
    written atomically), with this fingerprint, not a recorded skip (a skipped slide is always
    tried again) and, under ``on_bad_patch: fail``, with no dropped patch. None otherwise."""
    if not os.path.exists(path):
        return None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            n_bad = int(a.get("n_skipped_patches", 0))
            if (
                a.get("source_fingerprint") == fingerprint
                and a.get("status") != SKIPPED
                and (on_bad_patch == "skip" or n_bad == 0)
            ):
                return int(f["coords"].shape[0]), n_bad
    except Exception:  # unreadable: compute it again
        pass
    return None
