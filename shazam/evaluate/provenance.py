"""What made the report: the installed software and, per teacher, the model behind its
features (from the feature files' attributes)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

SOFTWARE = (
    "shazam",
    "torch",
    "timm",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "scikit-survival",
    "lifelines",
    "h5py",
    "openslide-python",
    "matplotlib",
    "snakemake",
)


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def teacher_facts(feature_files: list[str | os.PathLike]) -> pd.DataFrame:
    """Per teacher, what its feature files say about the model that made them."""
    import h5py

    from ..imports import geometry
    from ..teachers import REGISTRY

    rows = []
    for path in feature_files:
        with h5py.File(path, "r") as f:  # an imported file may be a link to the source
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            c = f["coords"].attrs if "coords" in f else {}
            c = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in c.items()}
            enc = f["features"].attrs.get("encoder") if "features" in f else None
        linked = os.path.islink(path)  # an imported file: its teacher is the folder's name
        name = Path(path).parent.name if linked else str(a.get("teacher", Path(path).parent.name))
        imported = os.path.realpath(path) if linked else a.get("imported_from")
        if linked and a.get("shazam_version"):
            a = {"imported_format": f"shazam {a['shazam_version']}"}
        spec = REGISTRY.get(name)
        rows.append(
            {
                "teacher": name,
                "architecture": a.get("teacher_arch", spec.arch if spec else ""),
                "weights": a.get("weights", ""),
                "source": spec.weight_source if spec else "",
                "embedding": a.get("embedding", ""),
                "input_px": a.get("input_size", ""),
                "precision": a.get("precision", ""),
                "extracted_with": (
                    f"imported ({_imported_how(a, c, enc)}) from {imported}"
                    if imported
                    else f"shazam {a.get('shazam_version', '?')}"
                ),
                "patch_geometry": geometry(c),
            }
        )
    return pd.DataFrame(rows)


TOOLS = {"trident": "TRIDENT", "clam": "CLAM"}


def _imported_how(attrs: dict, coords_attrs: dict, encoder) -> str:
    """The tool (and encoder) of an imported file: recorded when it was rewritten as ours,
    else read off the linked source's attrs."""
    fmt = attrs.get("imported_format")
    if not fmt:
        return _tool(coords_attrs, encoder)
    enc = attrs.get("encoder")
    return TOOLS.get(fmt, fmt) + (f", encoder {enc}" if enc else "")


def _tool(coords_attrs: dict, encoder) -> str:
    """Which tool wrote a linked source file, from its attrs (TRIDENT names its encoder)."""
    if encoder is not None:
        return f"TRIDENT, encoder {encoder.decode() if isinstance(encoder, bytes) else encoder}"
    if "target_magnification" in coords_attrs:
        return "TRIDENT"
    return "CLAM" if not coords_attrs or "patch_level" in coords_attrs else "h5"
