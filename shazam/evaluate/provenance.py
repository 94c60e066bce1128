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

    from ..teachers import REGISTRY

    rows = []
    for path in feature_files:
        with h5py.File(path, "r") as f:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        name = str(a.get("teacher", Path(path).parent.name))
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
                "extracted_with": f"shazam {a.get('shazam_version', '?')}",
            }
        )
    return pd.DataFrame(rows)
