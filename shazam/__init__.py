"""Shazam: multi-teacher knowledge distillation for computational pathology."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shazam")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
