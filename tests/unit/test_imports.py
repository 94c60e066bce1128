"""Imported teachers (shazam.imports): TRIDENT / CLAM / shazam feature files adopted as a
teacher's feature files, and the checks that name the file and the mismatch."""

import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from shazam.formats import read_feature_file, write_feature_file, write_patch_file
from shazam.imports import FeatureImportError, ImportSpec, import_features, resolve
from shazam.mapped import FeatureFileRows

GRID = np.array([[x, y] for y in range(0, 2048, 512) for x in range(0, 2048, 512)], np.int64)
TRIDENT_ATTRS = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                 "target_magnification": 20, "overlap": 0, "name": "s", "savetodir": "x",
                 "level0_width": 2048, "level0_height": 2048}  # fmt: skip


def write_trident(path, coords, d=24, seed=0):
    """A TRIDENT feature file: chunked (1 row per chunk) like trident.IO.save_h5, geometry on
    ``coords``, encoder on ``features``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = np.random.default_rng(seed).normal(size=(len(coords), d)).astype(np.float32)
    with h5py.File(path, "w") as f:
        for key, val, attrs in (
            ("features", feats, {"name": path.stem, "savetodir": "x", "encoder": "uni_v1"}),
            ("coords", np.asarray(coords, np.int64), TRIDENT_ATTRS),
        ):
            ds = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                  chunks=(1,) + val.shape[1:], dtype=val.dtype)  # fmt: skip
            ds[:] = val
            ds.attrs.update(attrs)
    return feats


def write_clam(root, slide, coords, d=16, seed=0, pt_only=False, patches=None):
    """CLAM's extract_features_fp layout: h5_files (features + int32 coords, chunks of 32, no
    attrs) and pt_files (the tensor); ``patches``: CLAM's patch file with the coords."""
    feats = np.random.default_rng(seed).normal(size=(len(coords), d)).astype(np.float32)
    (root / "pt_files").mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(feats), root / "pt_files" / f"{slide}.pt")
    if not pt_only:
        (root / "h5_files").mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "h5_files" / f"{slide}.h5", "w") as f:
            f.create_dataset("features", data=feats, chunks=(32, d), maxshape=(None, d))
            f.create_dataset("coords", data=np.asarray(coords, np.int32), chunks=(32, 2),
                             maxshape=(None, 2))  # fmt: skip
    if patches is not None:
        patches.mkdir(parents=True, exist_ok=True)
        with h5py.File(patches / f"{slide}.h5", "w") as f:
            c = f.create_dataset("coords", data=np.asarray(coords, np.int64))
            c.attrs.update({"patch_size": 256, "patch_level": 0, "downsample": [1.0, 1.0],
                            "downsampled_level_dim": [2048, 2048], "level_dim": [2048, 2048],
                            "name": slide, "save_path": str(patches)})  # fmt: skip
    return feats


def our_grid(path, coords=GRID):
    write_patch_file(path, coords, np.ones(len(coords)),
                     {"patch_size": 256, "patch_size_level0": 512, "target_mpp": 0.5})  # fmt: skip
    return str(path)


def test_trident_file_is_rewritten_contiguous_and_read_like_a_feature_file(tmp_path):
    """TRIDENT's one-row chunks would make every training batch read through h5py (90–170x
    slower): the file is rewritten once as ours, contiguous float16, and memory-mapped."""
    src = tmp_path / "job/20x_256px_0px_overlap/features_uni_v1/S1.h5"
    feats = write_trident(src, GRID)
    out = tmp_path / "results/features/uni/S1.h5"
    grid = our_grid(tmp_path / "S1_patches.h5")
    how = import_features("uni", "S1", str(out), str(src), grid=grid, log=lambda m: None)
    assert how == "written" and not os.path.islink(out)
    rows = FeatureFileRows(out, {"high": "features"}, coords="coords")
    assert rows.levels["high"].offset is not None  # contiguous: memory-mapped
    np.testing.assert_allclose(rows.take("high", np.array([1, 3])), feats[[1, 3]], rtol=1e-3,
                               atol=1e-3)  # fmt: skip
    np.testing.assert_array_equal(rows.coords, GRID)
    from shazam.evaluate.provenance import teacher_facts

    row = teacher_facts([out]).iloc[0]
    assert row["teacher"] == "uni" and "TRIDENT, encoder uni_v1" in row["extracted_with"]
    assert row["patch_geometry"] == "20x, 256 px patches, 512 px at level 0"


def test_wrong_width_names_the_file_and_both_widths(tmp_path):
    write_trident(tmp_path / "f/S1.h5", GRID, d=24)
    write_trident(tmp_path / "f/S2.h5", GRID, d=32)
    with pytest.raises(FeatureImportError) as e:
        import_features("uni", "S2", str(tmp_path / "o/S2.h5"), str(tmp_path / "f/S2.h5"),
                        reference=str(tmp_path / "f/S1.h5"), log=lambda m: None)  # fmt: skip
    msg = str(e.value)
    assert str(tmp_path / "f/S2.h5") in msg and "32 wide" in msg and "24 wide" in msg
    with pytest.raises(FeatureImportError, match="registry's width of teacher uni_v2 is 1536"):
        import_features("uni_v2", "S1", str(tmp_path / "o/S1.h5"), str(tmp_path / "f/S1.h5"),
                        width=1536, log=lambda m: None)  # fmt: skip


def test_missing_slides_are_listed_in_one_error_or_skipped_with_empty_files(tmp_path):
    write_trident(tmp_path / "f/S1.h5", GRID)
    spec = ImportSpec.from_config({"name": "uni", "features": str(tmp_path / "f"),
                                   "format": "trident"})  # fmt: skip
    with pytest.raises(ValueError) as e:
        resolve([spec], ["S1", "S2", "S3"])
    msg = str(e.value)
    assert "2 of 3 slide(s)" in msg and "S2, S3" in msg and str(tmp_path / "f/S2.h5") in msg
    assert "extraction.on_bad_slide: skip" in msg
    sources, warnings = resolve([spec], ["S1", "S2"], on_missing="skip")
    assert sources["uni"]["S2"] is None and "S2" in warnings[0]
    out = tmp_path / "o/S2.h5"
    assert import_features("uni", "S2", str(out), None, reference=str(tmp_path / "f/S1.h5"),
                           log=lambda m: None) == "empty"  # fmt: skip
    feats, coords, _ = read_feature_file(out)
    assert feats.shape == (0, 24) and coords.shape == (0, 2)


def test_grid_that_does_not_match_fails_and_partial_overlap_warns(tmp_path):
    grid = our_grid(tmp_path / "p.h5")
    write_trident(tmp_path / "f/S1.h5", GRID + 256)  # same step, shifted origin
    with pytest.raises(FeatureImportError) as e:
        import_features("uni", "S1", str(tmp_path / "o/S1.h5"), str(tmp_path / "f/S1.h5"),
                        grid=grid, log=lambda m: None)  # fmt: skip
    msg = str(e.value)
    assert str(tmp_path / "f/S1.h5") in msg and "0 of our 16 patches (0%)" in msg
    assert "imported geometry: 20x, 256 px patches" in msg and "ours" in msg and "0.5 µm/px" in msg
    write_trident(tmp_path / "f/S2.h5", GRID[:12])  # another tissue mask on the same grid
    lines = []
    import_features("uni", "S2", str(tmp_path / "o/S2.h5"), str(tmp_path / "f/S2.h5"),
                    grid=grid, log=lines.append)  # fmt: skip
    assert any(x.startswith("warning: ") and "12 of our 16 patches (75%)" in x for x in lines)


def test_clam_pt_needs_a_patch_file_and_trains_with_one(tmp_path):
    clam, patches = tmp_path / "clam", tmp_path / "clam_patches"
    feats = write_clam(clam, "S1", GRID, pt_only=True, patches=patches)
    spec = ImportSpec.from_config({"name": "resnet", "features": str(clam), "format": "clam"})
    with pytest.raises(ValueError, match=r"CLAM \.pt file\(s\) without coords.*set `patches:`"):
        resolve([spec], ["S1"])
    with pytest.raises(FeatureImportError, match="S1.pt: a CLAM .pt file has features but no"):
        import_features("resnet", "S1", str(tmp_path / "o.h5"), str(clam / "pt_files/S1.pt"),
                        fmt="clam", log=lambda m: None)  # fmt: skip
    spec = ImportSpec.from_config({"name": "resnet", "features": str(clam), "format": "clam",
                                   "patches": str(patches)})  # fmt: skip
    ((src, coords),) = [resolve([spec], ["S1"])[0]["resnet"]["S1"]]
    out = tmp_path / "o/S1.h5"
    assert import_features("resnet", "S1", str(out), src, coords, fmt="clam",
                           log=lambda m: None) == "written"  # fmt: skip
    got, c, attrs = read_feature_file(out)
    np.testing.assert_allclose(got, feats, rtol=1e-3, atol=1e-3)  # stored float16
    np.testing.assert_array_equal(c, GRID)
    assert attrs["patch_level"] == 0 and attrs["imported_format"] == "clam"
    assert FeatureFileRows(out, {"high": "features"}).levels["high"].offset is not None


def test_clam_h5_is_linked_and_a_bad_name_or_format_stops_the_config(tmp_path):
    write_clam(tmp_path / "clam", "S1", GRID)
    spec = ImportSpec.from_config({"name": "r50", "features": str(tmp_path / "clam"),
                                   "format": "clam"})  # fmt: skip
    src, coords = resolve([spec], ["S1"])[0]["r50"]["S1"]
    assert src.endswith("h5_files/S1.h5") and coords is None
    assert (
        import_features("r50", "S1", str(tmp_path / "o.h5"), src, fmt="clam", log=lambda m: None)
        == "written"
    )  # chunks of 32 rows: rewritten
    # a contiguous file (our own layout, e.g. another run's folder) is linked, not copied
    mine = tmp_path / "run/S1.h5"
    mine.parent.mkdir()
    write_feature_file(mine, GRID, {}, {"high": np.ones((len(GRID), 8), np.float16)}, {}, [],
                       GRID)  # fmt: skip
    out = tmp_path / "linked.h5"
    assert import_features("mine", "S1", str(out), str(mine), fmt="shazam",
                           log=lambda m: None) == "linked"  # fmt: skip
    assert os.path.realpath(out) == str(mine)
    for bad in ({"name": "a/b"}, {"name": "a:b"}, {"name": "ok", "format": "timm"}):
        with pytest.raises(ValueError, match="config: teachers"):
            ImportSpec.from_config({"name": "x", "features": str(tmp_path), "format": "clam",
                                    **bad})  # fmt: skip


def test_student_levels_are_the_configured_levels_every_teacher_has(tmp_path, capsys):
    from shazam.training.fold import student_levels

    sheet = pd.DataFrame({"slide_id": ["S1"], "case_id": ["C1"]})
    own = tmp_path / "features/toy_vit/S1.h5"
    own.parent.mkdir(parents=True)
    with h5py.File(own, "w") as f:
        for name in ("features", "features_low", "features_mid"):
            f[name] = np.zeros((2, 4), np.float16)
        f["coords"] = np.zeros((2, 2), np.int64)
    write_trident(tmp_path / "features/uni/S1.h5", GRID)
    levels = ["low", "mid", "high"]
    assert student_levels(levels, ["toy_vit"], sheet, ["C1"], tmp_path) == levels
    assert student_levels(levels, ["toy_vit", "uni"], sheet, ["C1"], tmp_path) == ["high"]
    assert "student levels: ['high'] of the configured" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no level that every teacher has"):
        student_levels(["low"], ["toy_vit", "uni"], sheet, ["C1"], tmp_path)
