"""`shazam export`: our feature files in TRIDENT's and CLAM's layouts, read the way those
tools read them."""

import os

import h5py
import numpy as np
import pytest
import torch

from shazam.cli import build_parser
from shazam.export import export_features
from shazam.formats import FeatureFileError, write_feature_file


def _features(root, teacher="t", slides=("s1", "s2")):
    rng = np.random.default_rng(0)
    out = {}
    for i, sid in enumerate(slides):
        n = 5 + i
        coords = np.stack([np.arange(n) * 256, np.zeros(n, int)], 1)
        feats = {lv: rng.normal(size=(n, 8)).astype(np.float16) for lv in ("low", "mid", "high")}
        path = root / "features" / teacher / f"{sid}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_feature_file(path, coords, {"patch_size": 256, "target_magnification": 20},
                           feats, {"teacher": teacher}, [], coords)  # fmt: skip
        out[sid] = (feats, coords)
    return out


def test_trident_layout_is_read_as_trident_reads_it(tmp_path):
    made = _features(tmp_path)
    args = build_parser().parse_args(
        [
            "export",
            "--teacher",
            "t",
            "--layout",
            "trident",
            "--out",
            str(tmp_path / "job"),
            "--slide-id",
            "s1",
            "s2",
            "--features-root",
            str(tmp_path),
        ]  # fmt: skip
    )
    args.func(args)
    for sid, (feats, coords) in made.items():
        with h5py.File(tmp_path / "job" / "features_t" / f"{sid}.h5", "r") as f:
            assert f["features"].dtype == np.float32
            np.testing.assert_array_equal(f["features"][:], feats["high"].astype(np.float32))
            np.testing.assert_array_equal(f["coords"][:], coords)
            assert f["coords"].attrs["patch_size"] == 256
            assert set(f) == {"features", "coords"}  # the low and mid levels stay out


def test_clam_layout_h5_and_pt_files(tmp_path):
    made = _features(tmp_path)
    files = export_features("t", ["s1", "s2"], "clam", tmp_path / "clam", tmp_path, level="mid")
    assert len(files) == 4
    for sid, (feats, coords) in made.items():
        pt = torch.load(tmp_path / "clam" / "pt_files" / f"{sid}.pt", weights_only=True)
        assert pt.dtype == torch.float32 and pt.shape == feats["mid"].shape
        np.testing.assert_array_equal(pt.numpy(), feats["mid"].astype(np.float32))
        with h5py.File(tmp_path / "clam" / "h5_files" / f"{sid}.h5", "r") as f:
            np.testing.assert_array_equal(f["features"][:], pt.numpy())
            np.testing.assert_array_equal(f["coords"][:], coords)
            assert f.attrs["exported_level"] == "mid"


def test_a_file_already_in_the_dtype_is_linked_not_copied(tmp_path):
    _features(tmp_path, slides=("s1",))
    (dst,) = export_features("t", ["s1"], "trident", tmp_path / "job", tmp_path, dtype="float16")
    src = tmp_path / "features" / "t" / "s1.h5"
    assert os.path.samefile(dst, src)


def test_a_missing_feature_file_is_named(tmp_path):
    _features(tmp_path, slides=("s1",))
    with pytest.raises(FeatureFileError, match=r"features/t/s9\.h5"):
        export_features("t", ["s1", "s9"], "clam", tmp_path / "clam", tmp_path)
