"""Teacher foundation models: a declarative registry (no torch import) and one generic builder.

``from shazam.teachers import REGISTRY, get_spec`` is cheap (used at workflow parse time);
building a model lives in :mod:`shazam.teachers.build`.
"""

from .registry import LEVELS, REGISTRY, TeacherSpec, UnknownTeacherError, get_spec

__all__ = ["LEVELS", "REGISTRY", "TeacherSpec", "UnknownTeacherError", "get_spec"]
