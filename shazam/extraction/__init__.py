"""Per-teacher feature extraction, for slides and for ROI images alike.

- :mod:`.params`: :class:`ExtractParams`, the ``extraction`` settings (no torch);
- :mod:`.batches`: what both share on the way to a teacher: the patch and image batch
  datasets, the loader, input preparation, the loaded teacher and its batch loop;
- :mod:`.slide`: :func:`extract_slide`, one slide → ``results/features/{teacher}/{slide}.h5``;
- :mod:`.tile`: :func:`extract_tiles`, a tile task → ``results/tile_features/{task}/{teacher}.h5``.

Only :mod:`.params` is imported with the package; the rest (torch) on first use of a name, so
the command line stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .params import ExtractParams

if TYPE_CHECKING:
    from .batches import PatchBatches, group_runs, make_loader, prepare, read_geometry
    from .slide import extract_slide
    from .tile import extract_tiles

_LAZY = {
    "PatchBatches": "batches",
    "group_runs": "batches",
    "make_loader": "batches",
    "prepare": "batches",
    "read_geometry": "batches",
    "extract_slide": "slide",
    "extract_tiles": "tile",
}

__all__ = [
    "ExtractParams",
    "PatchBatches",
    "extract_slide",
    "extract_tiles",
    "group_runs",
    "make_loader",
    "prepare",
    "read_geometry",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
