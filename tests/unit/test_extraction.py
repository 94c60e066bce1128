import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
import torch

from shazam.demo import render_tissue
from shazam.device import acquire_device_lock
from shazam.extraction import (
    ExtractParams,
    extract_slide,
    group_runs,
    prepare,
)
from shazam.formats import read_feature_file, read_patch_file
from shazam.slides import BadSlideError
from shazam.teachers import get_spec
from shazam.teachers.build import LevelExtractor, build_model
from shazam.tiling import TilingParams, tile_slide

P = ExtractParams(batch_size=16, num_workers=0)


def _tile(path, tmp_path, name, **kw):
    tile_slide(name, path, tmp_path / f"{name}.h5", tmp_path / f"{name}.json",
               tmp_path / f"{name}.png", TilingParams(**kw))  # fmt: skip
    return tmp_path / f"{name}.h5"


def position_image(h=1536, w=2048, cell=256):
    """Every 256-px grid cell a different flat colour that encodes its position."""
    img = np.zeros((h, w, 3), np.uint8)
    for r in range(h // cell):
        for c in range(w // cell):
            img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = (
                60 + 20 * c, 40 + 25 * r, 200 - 10 * c - 5 * r,
            )  # fmt: skip
    return img


def test_group_runs_follow_rows():
    c = np.array([[0, 0], [256, 0], [512, 0], [1024, 0], [0, 256], [256, 256]])
    assert group_runs(c, 256, 16) == [(0, 3), (3, 4), (4, 6)]
    assert group_runs(c, 256, 2) == [(0, 2), (2, 3), (3, 4), (4, 6)]


@pytest.mark.parametrize("workers", [0, 2])
def test_rows_of_features_match_rows_of_coords(make_slide, tmp_path, workers):
    """A slide whose patches differ by position: each feature row equals the teacher's output
    on the image cut at that row's coordinates (so no row is shuffled or shifted)."""
    img = position_image()
    path = make_slide("pos.svs", img=img, mpp=0.5, power=20)
    patches = _tile(path, tmp_path, "pos", min_tissue_fraction=0.0)
    coords, _ = read_patch_file(patches)
    assert len(coords) == 48
    params = ExtractParams(batch_size=7, num_workers=workers)  # batches cut rows mid-way
    # toy_vit: its colour view keeps the flat colours that encode position (toy_cnn's texture
    # view maps every flat cell to the same grey)
    extract_slide("toy_vit", "pos", path, patches, tmp_path / "f.h5", params, progress=False)
    feats, fcoords, attrs = read_feature_file(tmp_path / "f.h5")
    np.testing.assert_array_equal(fcoords, coords)
    spec = get_spec("toy_vit")
    model, _ = build_model(spec)
    ext = LevelExtractor(spec, model)
    crops = torch.from_numpy(np.stack([img[y : y + 256, x : x + 256] for x, y in coords]))
    with torch.inference_mode():
        x = prepare(crops, 224, None, spec.mean, spec.std, torch.device("cpu"), spec.view)
        ref = ext(x)["high"]
    ref = ref.numpy()
    cos = (feats * ref).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
    # and the rows are distinguishable: each matches itself better than any other row
    sim = feats.astype(np.float32) @ ref.T
    sim /= np.linalg.norm(feats.astype(np.float32), axis=1)[:, None] * np.linalg.norm(ref, axis=1)
    assert (sim.argmax(1) == np.arange(len(coords))).mean() > 0.9


def test_feature_file_contract(make_slide, tmp_path):
    path = make_slide(mpp=0.25, power=40)
    patches = _tile(path, tmp_path, "S")
    res = extract_slide("toy_vit", "S", path, patches, tmp_path / "f.h5", P, progress=False)
    coords, pattrs = read_patch_file(patches)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["features"].shape == (len(coords), 192) and f["features"].dtype == np.float16
        assert f["features_low"].shape == (len(coords), 96)
        assert f["features_mid"].shape == (len(coords), 96)
        a = dict(f["coords"].attrs)
        for k in pattrs:  # every coordinate attr is copied
            assert k in a
        assert a["teacher"] == "toy_vit" and a["weights"] == "builtin:toy_vit:seed1"
        # precision auto: bf16 autocast on CUDA, fp32 on CPU
        expected = "bfloat16" if torch.cuda.is_available() else "float32"
        assert a["precision"] == expected and a["dtype"] == "float16"
        assert a["shazam_version"] and a["n_skipped_patches"] == 0
        assert np.isfinite(f["features"][:]).all()
    assert res["n_patches"] == len(coords)


def test_levels_subset_and_float32(make_slide, tmp_path):
    path = make_slide()
    patches = _tile(path, tmp_path, "S")
    params = ExtractParams(num_workers=0, levels=("high",), dtype="float32")
    extract_slide("toy_cnn", "S", path, patches, tmp_path / "f.h5", params, progress=False)
    with h5py.File(tmp_path / "f.h5") as f:
        assert set(f) == {"coords", "features"} and f["features"].dtype == np.float32


def test_empty_patch_file_gives_empty_valid_feature_file(make_slide, tmp_path):
    path = make_slide(img=np.full((1536, 2048, 3), 242, np.uint8))
    patches = _tile(path, tmp_path, "E")
    extract_slide("toy_vit", "E", path, patches, tmp_path / "f.h5", P, progress=False)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["coords"].shape == (0, 2)
        assert f["features"].shape == (0, 192) and f["features_low"].shape == (0, 96)


@pytest.mark.parametrize("teacher", ["toy_vit", "toy_cnn"])
def test_40x_and_20x_scans_give_the_same_features(tmp_path, teacher):
    """Proof that the field of view is magnification-exact."""
    from shazam.demo import write_svs

    paths = {}
    for mpp in (0.25, 0.5):
        img = render_tissue(np.random.default_rng(11), "purple", "dense", mpp)
        paths[mpp] = tmp_path / f"s{mpp}.svs"
        write_svs(paths[mpp], img, mpp=mpp, objective_power=round(10 / mpp))
    out = {}
    for mpp, p in paths.items():
        patches = _tile(p, tmp_path, f"s{mpp}")
        extract_slide(teacher, f"s{mpp}", p, patches, tmp_path / f"f{mpp}.h5", P, progress=False)
        out[mpp] = read_feature_file(tmp_path / f"f{mpp}.h5")
    f40, c40, a40 = out[0.25]
    f20, c20, a20 = out[0.5]
    np.testing.assert_array_equal(c40, 2 * c20)
    assert a40["patch_size_level0"] == 512 and a20["patch_size_level0"] == 256
    f40, f20 = f40.astype(np.float32), f20.astype(np.float32)
    cos = (f40 * f20).sum(1) / np.linalg.norm(f40, axis=1) / np.linalg.norm(f20, axis=1)
    assert cos.mean() > 0.95 and np.median(cos) > 0.95


def _corrupt_level0_tiles(src, dst, tiles):
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as t:
        pg = t.pages[0]
        for i in tiles:
            o, c = pg.dataoffsets[i], pg.databytecounts[i]
            data[o : o + c] = b"\x00" * c
    dst.write_bytes(bytes(data))
    return dst


def test_bad_patch_fails_naming_slide_and_coordinate(make_slide, tmp_path):
    good = make_slide()
    patches = _tile(good, tmp_path, "S")
    # level 0 has 8 tiles per row of 256 px; tile 8*2+3 = the cell at x=768, y=512
    bad = _corrupt_level0_tiles(good, tmp_path / "bad.svs", [8 * 2 + 3])
    with pytest.raises(
        BadSlideError, match=r"slide S .*cannot read patch \d+ at level-0 \(768, 512\)"
    ):
        extract_slide("toy_cnn", "S", bad, patches, tmp_path / "f.h5", P, progress=False)
    assert not (tmp_path / "f.h5").exists()
    params = ExtractParams(num_workers=0, on_bad_patch="skip")
    res = extract_slide("toy_cnn", "S", bad, patches, tmp_path / "f.h5", params, progress=False)
    coords, _ = read_patch_file(patches)
    feats, fcoords, attrs = read_feature_file(tmp_path / "f.h5")
    assert res["n_skipped_patches"] == 1 and attrs["n_skipped_patches"] == 1
    assert len(fcoords) == len(coords) - 1 and [768, 512] not in fcoords.tolist()
    assert len(feats) == len(fcoords)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["skipped_coords"][:].tolist() == [[768, 512]]


def test_unexpected_patch_read_error_goes_through_on_bad_patch(make_slide, tmp_path, monkeypatch):
    """Any exception reading a patch (not only OpenSlide's) is the patch policy's: fail names
    the slide, the patch and the exception; skip records the patch as skipped."""
    from shazam.extraction.batches import PatchBatches

    good = make_slide()
    patches = _tile(good, tmp_path, "S")
    read = PatchBatches._read

    def flaky(self, x, y, w, h):  # any read covering level-0 (768, 512) (level 0, 1:1 here)
        if x <= 768 < x + w and y <= 512 < y + h:
            raise RuntimeError("decoder state lost\nsecond line")
        return read(self, x, y, w, h)

    monkeypatch.setattr(PatchBatches, "_read", flaky)
    with pytest.raises(BadSlideError) as e:
        extract_slide("toy_cnn", "S", good, patches, tmp_path / "f.h5", P, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"slide S ({good}): cannot read patch ")
    assert "at level-0 (768, 512): RuntimeError: decoder state lost — set" in msg
    assert "extraction.on_bad_patch: skip" in msg and "\n" not in msg
    assert not (tmp_path / "f.h5").exists()
    params = ExtractParams(num_workers=0, on_bad_patch="skip")
    res = extract_slide("toy_cnn", "S", good, patches, tmp_path / "f.h5", params, progress=False)
    assert res["n_skipped_patches"] == 1
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["skipped_coords"][:].tolist() == [[768, 512]]
        assert len(f["coords"]) == len(read_patch_file(patches)[0]) - 1


def test_device_locks_spread_jobs_over_gpus(tmp_path):
    i0, h0 = acquire_device_lock(2, tmp_path)
    # a second process must get the other device while the first holds its lock
    code = (
        "from shazam.device import acquire_device_lock as a; import sys;"
        f"i, h = a(2, {str(tmp_path)!r}, wait_s=0); print(i)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert {i0, int(p.stdout)} == {0, 1}
    # with both held by this process (flock is per open file), a third waiter times out
    i1, h1 = acquire_device_lock(2, tmp_path)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0 and "no free GPU" in p.stderr
    h0.close()
    h1.close()


def test_cli_unknown_teacher(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "extract", "--teacher", "virchow3", "--slide", "x",
         "--slide-id", "x", "--patches", "x", "--out", str(tmp_path / "o.h5")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2 and "unknown teacher 'virchow3'" in p.stderr


def test_cli_reads_the_extraction_section_into_extract_params_without_torch():
    code = (
        "import sys; from shazam.cli import build_parser; "
        "from shazam.extraction import ExtractParams; from shazam.io import parse_section; "
        "a = build_parser().parse_args(['extract', '--teacher', 't', '--out', 'o', "
        "'--slide', 's', '--slide-id', 's', '--patches', 'p', "
        '\'--extraction\', \'{"levels": ["high"], "batch_size": 8}\']); '
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "p = parse_section(ExtractParams, a.extraction, 'extraction'); "
        "assert p == ExtractParams(batch_size=8, levels=('high',)), p"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_config_section_with_an_unknown_key_names_it():
    from shazam.extraction import ExtractParams
    from shazam.io import parse_section

    with pytest.raises(ValueError, match="section `extraction`: unknown key.*batchsize"):
        parse_section(ExtractParams, '{"batchsize": 8}', "extraction")


def test_fast_and_openslide_paths_give_the_same_patches(make_slide, tmp_path):
    from shazam.extraction import PatchBatches

    for mpp, power in ((0.5, 20), (0.25, 40)):
        path = make_slide(f"s{power}.svs", mpp=mpp, power=power)
        patches = _tile(path, tmp_path, f"s{power}")
        coords, attrs = read_patch_file(patches)
        from shazam.extraction import read_geometry

        geom = read_geometry(attrs)
        fast = PatchBatches(str(path), coords, geom, 16, fast_jpeg=True)
        slow = PatchBatches(str(path), coords, geom, 16, fast_jpeg=False)
        a, _, _ = fast[0]
        b, _, _ = slow[0]
        assert fast._fast and not slow._fast
        assert a.shape == b.shape == (min(16, len(coords)), 256, 256, 3)
        diff = (a.float() - b.float()).abs().mean().item()
        assert diff < (0.01 if power == 20 else 2.0)  # 40x: IDCT-scaled vs box-reduced
