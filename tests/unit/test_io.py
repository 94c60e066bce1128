"""Atomic outputs: a failed write leaves nothing that looks complete, and says which output."""

import errno
import os

import pytest

from shazam import cli
from shazam.io import atomic_path


def test_a_failed_write_names_the_output_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "f.h5"
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(tmp))
    assert e.value.errno == errno.ENOSPC and e.value.filename == os.fspath(target)
    assert list(target.parent.iterdir()) == []


def test_cli_reports_a_file_system_error_in_one_line(tmp_path, monkeypatch, capsys):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results/qc/tiling.tsv")

    monkeypatch.setattr("shazam.tiling.summarize_qc", full)
    rc = cli.main(["tiling-qc", "--out", str(tmp_path / "q.tsv"), "x.json"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and err == [
        "error: cannot read or write a file (results/qc/tiling.tsv): No space left on device"
    ]
