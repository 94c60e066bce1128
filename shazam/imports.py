"""Teachers whose patch features already exist (TRIDENT's or CLAM's folders, or another Shazam
run's): rule ``import_features``, CLI ``shazam import-features``.

A ``teachers:`` entry ``{name: NAME, features: FOLDER, format: trident | clam | shazam}`` is an
*imported* teacher: no model is built, no patch is read. Each slide's file in ``FOLDER`` becomes
``results/features/{NAME}/{slide}.h5`` (``layout.FEATURES``), which training, the store and the
report read like any feature file.

Layouts (checked against the tools' own code):

- TRIDENT: ``<job_dir>/<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/<slide>.h5`` (point
  ``features`` at the ``features_<encoder>`` folder): datasets ``features`` (N, D) float32 and
  ``coords`` (N, 2) int64 level-0 (x, y), both chunked (one row per chunk); the patch geometry
  is on ``coords`` (``patch_size``, ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``level0_width``/``height``) and the encoder on
  ``features`` (``encoder``). A slide without patches has ``features`` of shape (0,).
- CLAM: ``<feat_dir>/h5_files/<slide>.h5`` (``features`` (N, D), ``coords`` (N, 2) int32,
  chunks of 32 rows, no attrs) and ``<feat_dir>/pt_files/<slide>.pt`` (a float tensor (N, D),
  same order, no coords). A ``.pt`` alone is used only with CLAM's patch file
  ``<patches>/<slide>.h5`` (``coords`` with ``patch_size``, ``patch_level``, ``downsample``).
- shazam: ``<folder>/<slide>.h5``, our own layout (DESIGN §3.3), e.g. another run's features.

**Adoption.** An ``.h5`` whose ``features`` are 2-D floats and whose ``coords`` are (N, 2)
integers, with ``features`` contiguous and uncompressed (our own layout, e.g. another run's
folder), is what the store maps already, so after the checks below the feature file is a
*symbolic link* to the source (absolute path): nothing is copied. The link's own time is when
it was made, so replacing a source file makes Snakemake redo that slide's import (its input is
newer than the link) and what reads it. TRIDENT's and CLAM's ``.h5`` are chunked (one row and 32
rows per chunk): read through h5py, a training batch of 4,096 rows takes 90–170× as long as
from a mapped file (``benchmarks/imported_reads.py``), so they are rewritten once as our own
file, contiguous float16 (half a float32 source's bytes). So are a CLAM ``.pt`` (loaded with
``torch.load(path, weights_only=True)`` only) and TRIDENT's empty (0,) ``features``
(:func:`shazam.formats.write_feature_file`, atomically).

**Checks.** Every slide of the sheet has a file (at parse time, :func:`resolve`); every file has
the teacher's width (the registry's when the name is a registry teacher, else that of the
sheet's first slide with a file); and where the run also tiles (own teachers), the coords are
on our patch grid (:func:`grid_check`).

Pure Python at import (no torch, no h5py): the workflow imports it while parsing the DAG.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FORMATS = ("trident", "clam", "shazam")
# what a teacher name may be: a path segment, a wildcard value, a model-name suffix
# (``abmil-{teacher}``) and an item of the comma-separated ``--teachers`` list
TEACHER_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME_RE = re.compile(rf"^{TEACHER_NAME_PATTERN}$")
# the smallest share of our patches, and of the imported ones, that must coincide for the two
# to count as one grid (see grid_check)
GRID_FAIL_SHARE = 0.5


class FeatureImportError(ValueError):
    """An imported feature file that cannot be used; the message names it and the mismatch."""


@dataclass(frozen=True)
class ImportSpec:
    """One imported teacher of the config."""

    name: str
    features: str
    format: str
    patches: str | None = None

    @classmethod
    def from_config(cls, entry: dict, where: str = "teachers") -> ImportSpec:
        name = str(entry.get("name", ""))
        if not _NAME_RE.match(name):
            raise ValueError(
                f"config: {where}: imported teacher name {name!r} must match "
                f"{TEACHER_NAME_PATTERN} (letters, digits, _ . -; it names files and models)"
            )
        fmt = entry.get("format")
        if fmt not in FORMATS:
            raise ValueError(f"config: {where} ({name}): format must be one of {FORMATS}")
        patches = entry.get("patches")
        if patches and fmt != "clam":
            raise ValueError(
                f"config: {where} ({name}): `patches` is for CLAM .pt files; {fmt} files "
                "carry their coords"
            )
        folder = os.fspath(entry["features"])
        if not os.path.isdir(folder):
            raise ValueError(f"config: {where} ({name}): features folder {folder} does not exist")
        return cls(name, folder, fmt, os.fspath(patches) if patches else None)

    def candidates(self, slide: str) -> list[tuple[str, str | None]]:
        """(features file, patch file or None) a slide may have, in order of preference."""
        if self.format != "clam":
            return [(os.path.join(self.features, f"{slide}.h5"), None)]
        h5 = os.path.join(self.features, "h5_files", f"{slide}.h5")
        pt = os.path.join(self.features, "pt_files", f"{slide}.pt")
        coords = os.path.join(self.patches, f"{slide}.h5") if self.patches else h5
        return [(h5, None), (pt, coords)]


def resolve(specs: list[ImportSpec], slide_ids: list[str], on_missing: str = "fail"):
    """({teacher: {slide: (features file, patch file or None) or None}}, warnings): one stat
    per slide (CLAM: at most three). Slides without a usable file stop the run in one error
    that lists them all, unless ``on_missing`` is ``skip`` (``extraction.on_bad_slide``): then
    they map to None (an empty feature file) and are listed in the warnings."""
    sources: dict[str, dict] = {}
    problems, warnings = [], []
    for spec in specs:
        found, missing, no_coords = {}, [], []
        for sid in slide_ids:
            found[sid] = None
            for feats, coords in spec.candidates(sid):
                if os.path.exists(feats):
                    if coords is not None and not os.path.exists(coords):
                        no_coords.append(f"{sid} ({feats} has no coords; no {coords})")
                        break
                    found[sid] = (feats, coords)
                    break
            else:
                missing.append(sid)
        sources[spec.name] = found
        where = f"imported teacher {spec.name} ({spec.format} features in {spec.features})"
        if no_coords:
            problems.append(
                f"{where}: {len(no_coords)} CLAM .pt file(s) without coords: "
                + "; ".join(no_coords[:10])
                + (" …" if len(no_coords) > 10 else "")
                + " — a .pt has features only: set `patches:` to the folder of CLAM's patch "
                "files (<patches>/<slide>.h5 with `coords`) or provide h5_files/<slide>.h5"
            )
        if missing:
            first = spec.candidates(missing[0])[0][0]
            listed = ", ".join(missing[:20]) + (" …" if len(missing) > 20 else "")
            line = (
                f"{where}: {len(missing)} of {len(slide_ids)} slide(s) of the sheet have no "
                f"feature file (e.g. {first}): {listed}"
            )
            if on_missing == "skip":
                warnings.append(
                    line + " — extraction.on_bad_slide is skip: they get empty feature files "
                    "(cases without patches are left out)"
                )
            else:
                problems.append(
                    line + " — add the files, remove those slides from the sheet, or set "
                    "extraction.on_bad_slide: skip to give them empty feature files"
                )
    if problems:
        raise ValueError("config: " + "\n".join(problems))
    return sources, warnings


# --------------------------------------------------------------------------- the job


def reference_width(path: str | None) -> int | None:
    """The feature width of a source file (``.h5`` ``features`` or CLAM ``.pt``)."""
    if not path:
        return None
    if path.endswith(".pt"):
        return int(_load_pt(path).shape[1])
    import h5py

    with h5py.File(path, "r") as f:
        d = f["features"] if "features" in f else None
        return int(d.shape[1]) if d is not None and d.ndim == 2 else None


def _load_pt(path: str):
    import torch

    x = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        desc = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise FeatureImportError(f"{path}: not a CLAM feature tensor (N, D) of floats ({desc})")
    return x


def read_source(path: str, coords_file: str | None = None):
    """(features array, or the shape of an adoptable h5's, coords (N, 2), coords attrs, file
    attrs, adoptable): the source's rows, checked for shape. ``adoptable``: an h5 whose
    features are contiguous and uncompressed, which the store maps as it is (linked, not
    copied); a chunked or compressed one is read whole, to be rewritten contiguous."""
    import h5py
    import numpy as np

    if path.endswith(".pt"):
        if coords_file is None or not os.path.exists(coords_file):
            raise FeatureImportError(
                f"{path}: a CLAM .pt file has features but no coords, and there is no patch "
                f"file {coords_file or '(none given)'}; set `patches:` to CLAM's patch folder"
            )
        feats = _load_pt(path).float().numpy()
        with h5py.File(coords_file, "r") as f:
            coords, cattrs = f["coords"][:], _attrs(f["coords"])
        if len(coords) != len(feats):
            raise FeatureImportError(
                f"{path}: {len(feats)} feature rows but {len(coords)} coords in {coords_file}; "
                "the .pt must come from that patch file"
            )
        return feats, np.asarray(coords).reshape(-1, 2), cattrs, {}, False
    try:
        with h5py.File(path, "r") as f:
            for need in ("features", "coords"):
                if need not in f:
                    raise FeatureImportError(f"{path}: no `{need}` dataset (not a feature file?)")
            d, c = f["features"], f["coords"]
            coords, cattrs = c[:], _attrs(c)
            fattrs = {**_attrs(f), **_attrs(d)}
            if d.ndim == 1 and d.shape[0] == 0:  # TRIDENT: a slide without patches
                return np.zeros((0, 0), np.float32), coords.reshape(-1, 2), cattrs, fattrs, False
            if d.ndim != 2 or d.dtype.kind != "f":
                raise FeatureImportError(f"{path}: `features` is {d.dtype} {d.shape}, not (N, D)")
            # contiguous and uncompressed: the store maps it as it is; chunked (TRIDENT: one
            # row per chunk, CLAM: 32) reads a training batch 90–170x slower through h5py
            # (benchmarks/imported_reads.py), so those are rewritten once, contiguous
            mapped = d.chunks is None and d.compression is None
            feats = d.shape if mapped else d[:]
    except OSError as e:
        raise FeatureImportError(f"{path}: unreadable HDF5 file ({e})") from None
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype.kind not in "iu":
        raise FeatureImportError(f"{path}: `coords` is {coords.dtype} {coords.shape}, not (N, 2)")
    n = feats[0] if mapped else len(feats)
    if len(coords) != n:
        raise FeatureImportError(f"{path}: {n} feature rows but {len(coords)} coords")
    return feats, coords, cattrs, fattrs, mapped


def _attrs(obj) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in obj.attrs.items()}


def geometry(attrs: dict) -> str:
    """The patch geometry recorded in a file's ``coords`` attrs, in words."""
    parts = []
    if attrs.get("target_mpp") not in (None, "none"):
        parts.append(f"{float(attrs['target_mpp']):g} µm/px")
    if attrs.get("target_magnification") not in (None, "none", -1):
        parts.append(f"{attrs['target_magnification']}x")
    if "patch_size" in attrs:
        parts.append(f"{attrs['patch_size']} px patches")
    if "patch_size_level0" in attrs:
        parts.append(f"{attrs['patch_size_level0']} px at level 0")
    elif "downsample" in attrs and "patch_size" in attrs:  # CLAM's patch files
        ds = float(__import__("numpy").ravel(attrs["downsample"])[0])
        parts.append(f"{int(round(float(attrs['patch_size']) * ds))} px at level 0")
    if attrs.get("overlap") not in (None, "none", 0):
        parts.append(f"overlap {attrs['overlap']}")
    return ", ".join(parts) or "not recorded"


def grid_check(path: str, coords, attrs: dict, grid_file: str) -> str | None:
    """Compare imported coords with our patch grid (``results/patches/{slide}.h5``): raise when
    fewer than ``GRID_FAIL_SHARE`` of our patches, or of the imported ones, coincide; return a
    warning line when some do not. Why half: the store keeps the patches every teacher has
    (``stores._align``, exact level-0 corners), so a grid with the same step and another
    origin shares no corner, one at twice our step shares at most a quarter of ours, while
    the same grid under another tissue mask keeps most of both."""
    import numpy as np

    from .formats import read_patch_file

    ours, oattrs = read_patch_file(grid_file)
    ours = np.asarray(ours, np.int64).reshape(-1, 2)
    theirs = np.asarray(coords, np.int64).reshape(-1, 2)
    if not len(ours) or not len(theirs):
        if len(ours) == len(theirs):
            return None
        return (f"{path}: {len(theirs)} imported patches, {len(ours)} on our grid "
                f"({grid_file}): the slide's bag is empty")  # fmt: skip
    common = len({tuple(r) for r in ours.tolist()} & {tuple(r) for r in theirs.tolist()})
    mine, its = common / len(ours), common / len(theirs)
    line = (
        f"{path}: has {common} of our {len(ours)} patches ({mine:.0%}) and {common} of its "
        f"{len(theirs)} patches ({its:.0%}) are on our grid; imported geometry: "
        f"{geometry(attrs)}; ours ({grid_file}): {geometry(oattrs)}. Bags keep the patches "
        "every teacher has (exact level-0 corners)"
    )
    if min(mine, its) < GRID_FAIL_SHARE:
        raise FeatureImportError(
            line + f" — under {GRID_FAIL_SHARE:.0%}: not the same patch grid. Tile with the "
            "same magnification (tiling.target_mpp), patch size and overlap as the imported "
            "features, or import every teacher so that no tiling is done"
        )
    return line if common < max(len(ours), len(theirs)) else None


def import_features(
    teacher: str,
    slide: str,
    out: str,
    source: str | None,
    coords_file: str | None = None,
    fmt: str = "trident",
    width: int | None = None,
    reference: str | None = None,
    grid: str | None = None,
    log=print,
) -> str:
    """Check one slide's source and make ``out`` (``layout.FEATURES``) from it: a link to an
    adoptable h5, else our own file. ``width``: the teacher's width from the registry (None:
    that of ``reference``, the sheet's first slide with a file); ``grid``: our patch file of
    the slide when the run tiles. ``source`` None: the slide has no file and the run skips it
    (an empty feature file). Returns how ``out`` was made."""
    import numpy as np

    from . import __version__

    ref_what = "the registry's width of teacher " + teacher if width else f"{reference}"
    if width is None and reference and reference != source:
        width = reference_width(reference)
    meta = {"teacher": teacher, "imported_format": fmt, "shazam_version": __version__,
            "imported_from": os.path.abspath(source) if source else "none (no file)"}  # fmt: skip
    if source is None:
        log(f"warning: slide {slide} has no {teacher} feature file: an empty one (no patches)")
        _write_own(out, np.zeros((0, width or 0), np.float32), np.zeros((0, 2)), {}, meta)
        return "empty"
    feats, coords, cattrs, fattrs, adoptable = read_source(source, coords_file)
    d = int(feats[1] if adoptable else feats.shape[1])
    if len(coords) and width is not None and d != width:
        raise FeatureImportError(
            f"{source}: features are {d} wide, but {ref_what} is {width} wide; every file of "
            f"teacher {teacher} must come from the same encoder"
        )
    if grid:
        line = grid_check(source, coords, cattrs, grid)
        if line:
            log(f"warning: {line}")
    log(f"slide {slide}: {len(coords)} patches x {d} ({teacher}, {fmt}: {geometry(cattrs)})")
    if adoptable:
        _link(os.path.abspath(source), out)
        return "linked"
    if not len(coords):
        feats = np.zeros((0, width or d), np.float32)
    meta["encoder"] = str(fattrs.get("encoder", ""))
    # float16, as our own teachers' files (extraction.dtype's default): half a float32
    # source's bytes, relative error under 1e-3
    _write_own(out, np.asarray(feats, dtype=np.float16), coords, cattrs, meta)
    return "written"


def _write_own(out, feats, coords, cattrs, meta) -> None:
    from .formats import h5_attr, write_feature_file

    attrs = {k: h5_attr(v) for k, v in cattrs.items()}
    write_feature_file(out, coords, attrs, {"high": feats}, meta, [], None)


def _link(target: str, out: str) -> None:
    """``out`` → ``target`` (a symbolic link, replaced atomically)."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, out)
