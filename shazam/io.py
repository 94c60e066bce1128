"""Atomic file output: every artefact appears complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary file lives in the same folder so the final ``os.replace`` is an atomic
    rename on one filesystem. On any exception the temporary file is removed and the target
    is left untouched, so an interrupted job never leaves a file that looks complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; results on a shared cluster must follow the user's umask
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if e.filename in (None, os.fspath(tmp_path)):  # name the output, not the temporary
            raise OSError(e.errno, e.strerror or str(e), os.fspath(target)) from e
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    # numpy scalars and paths show up in QC records
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def parse_section(cls, text: str | dict | None, section: str):
    """A config section (JSON text or a mapping, as the workflow passes it to the CLI) as the
    dataclass ``cls``, whose field defaults are the defaults. Unknown keys are an error naming
    the section; numbers and lists take the field's type (JSON has no float ``10000.0`` and no
    tuple), so a value reads the same whether it came from the config or a default."""
    import dataclasses

    values = json.loads(text) if isinstance(text, str) else dict(text or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"config section `{section}`: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(fields)}"
        )
    for k, v in values.items():
        kind = str(fields[k].type)
        if "float" in kind and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
        elif kind.startswith("tuple") and isinstance(v, list):
            values[k] = tuple(v)
    return cls(**values)
