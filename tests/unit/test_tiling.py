import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
from conftest import tissue_image

from shazam.formats import read_patch_file
from shazam.slides import BadSlideError, Slide
from shazam.tiling import (
    TilingParams,
    box_fractions,
    choose_seg_level,
    grid_coords,
    integral_image,
    otsu_threshold,
    patch_geometry,
    segment_tissue,
    summarize_qc,
    tile_slide,
    tissue_fractions,
)

CLAM_ATTRS = {
    "patch_size",
    "patch_level",
    "downsample",
    "downsampled_level_dim",
    "level_dim",
    "name",
    "save_path",
}
MAG_ATTRS = {
    "patch_size_level0",
    "target_mpp",
    "slide_mpp",
    "target_magnification",
    "level0_magnification",
    "overlap",
    "level0_width",
    "level0_height",
    "min_tissue_fraction",
    "target_patch_size",
    "step_size_level0",
    "mpp_source",
}


# ------------------------------------------------------------------ pure geometry


def test_patch_geometry_20x_and_40x():
    assert patch_geometry(0.5, 0.5, 256) == (256, 256)
    assert patch_geometry(0.25, 0.5, 256) == (512, 512)
    assert patch_geometry(0.25, 0.5, 256, overlap=64) == (512, 384)
    # a 0.2631 µm/px scanner: rounded to whole level-0 pixels
    assert patch_geometry(0.2631, 0.5, 224) == (426, 426)


def test_grid_coords_full_patches_only():
    c = grid_coords(1000, 600, 256, 256)
    assert c.dtype == np.int64 and c.shape == (3 * 2, 2)
    assert c[:3].tolist() == [[0, 0], [256, 0], [512, 0]]
    assert (c[:, 0] + 256 <= 1000).all() and (c[:, 1] + 256 <= 600).all()
    assert grid_coords(100, 100, 256, 256).shape == (0, 2)
    # overlap: step smaller than size
    assert grid_coords(512, 256, 256, 128)[:, 0].tolist() == [0, 128, 256]


def test_grid_same_physical_area_at_40x_and_20x():
    s20, st20 = patch_geometry(0.5, 0.5, 256)
    s40, st40 = patch_geometry(0.25, 0.5, 256)
    assert s40 == 2 * s20
    g20 = grid_coords(2048, 1536, s20, st20)
    g40 = grid_coords(4096, 3072, s40, st40)
    np.testing.assert_array_equal(g40, 2 * g20)


def test_integral_image_and_box_fractions_known_answer():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:6, 3:7] = True  # 16 px of tissue
    ii = integral_image(mask)
    assert ii[-1, -1] == 16
    f = box_fractions(
        ii,
        np.array([0, 3, 2, 5]),
        np.array([0, 2, 2, 4]),
        np.array([10, 7, 4, 9]),
        np.array([8, 6, 4, 8]),
    )
    np.testing.assert_allclose(f, [16 / 80, 1.0, 2 / 4, 4 / 16])


def test_tissue_fractions_map_level0_boxes_onto_mask():
    # mask at 1/16 of level 0: left half tissue
    mask = np.zeros((64, 128), dtype=bool)
    mask[:, :64] = True
    coords = grid_coords(2048, 1024, 256, 256)
    fr = tissue_fractions(mask, coords, 256, (2048, 1024))
    assert fr[coords[:, 0] < 1024].min() == 1.0
    assert fr[coords[:, 0] >= 1024].max() == 0.0
    # a patch straddling the boundary is half tissue
    fr2 = tissue_fractions(mask, np.array([[1024 - 128, 0]]), 256, (2048, 1024))
    assert fr2[0] == pytest.approx(0.5)


def test_otsu_separates_two_modes():
    rng = np.random.default_rng(0)
    lo = np.clip(rng.normal(20, 5, 5000), 0, 255).astype(np.uint8)
    hi = np.clip(rng.normal(150, 10, 5000), 0, 255).astype(np.uint8)
    t = otsu_threshold(np.concatenate([lo, hi]))
    assert lo.max() <= t < hi.min()
    # unbalanced, overlapping modes: the threshold falls between the means
    v = np.concatenate([rng.normal(60, 15, 9000), rng.normal(140, 15, 1000)])
    assert 80 < otsu_threshold(np.clip(v, 0, 255).astype(np.uint8)) < 120


def test_choose_seg_level():
    assert choose_seg_level([0.25, 1.0, 4.0, 16.0], 16.0) == (3, 1)
    assert choose_seg_level([0.25, 1.0, 4.0], 16.0) == (2, 4)
    assert choose_seg_level([0.5], 16.0) == (0, 32)  # no pyramid: strip-wise reduction


def test_segment_tissue_filters_small_specks_and_fills_holes():
    px = 16.0  # µm per mask pixel
    img = np.full((100, 100, 3), 240, np.uint8)
    img[20:80, 20:80] = (190, 110, 190)  # 960 µm square of tissue
    img[48:52, 48:52] = 240  # a 64 µm hole -> 4096 µm² < max_hole -> filled
    img[5:7, 90:92] = (190, 110, 190)  # a 32 µm speck -> 1024 µm² < min_component -> dropped
    p = TilingParams(blur_um=0.0, close_um=0.0)
    mask, _ = segment_tissue(img, px, p)
    assert mask[50, 50] and mask[30, 30]
    assert not mask[6, 91]
    assert not mask[0, 0]


def test_segment_blank_slide_is_empty():
    rng = np.random.default_rng(0)
    img = np.clip(243 + rng.normal(0, 3, (96, 128, 3)), 0, 255).astype(np.uint8)
    mask, thr = segment_tissue(img, 16.0, TilingParams())
    assert not mask.any() and thr >= TilingParams().min_saturation


# ------------------------------------------------------------------ the patch file contract


def _tile(make_slide, tmp_path, params=None, **kw):
    p = make_slide(**kw)
    out = tmp_path / "out"
    params = params or TilingParams()
    qc = tile_slide("S1", p, out / "S1.h5", out / "S1.json", out / "S1.png", params, case_id="C1")
    return p, out, qc


def test_patch_file_contract(make_slide, tmp_path):
    p, out, qc = _tile(make_slide, tmp_path, mpp=0.25, power=40)
    with h5py.File(out / "S1.h5") as f:
        d = f["coords"]
        assert d.dtype == np.int64 and d.ndim == 2 and d.shape[1] == 2 and d.shape[0] > 0
        assert CLAM_ATTRS | MAG_ATTRS <= set(d.attrs)
        assert d.attrs["patch_size_level0"] == 512
        assert d.attrs["patch_level"] == 0 and d.attrs["patch_size"] == 512
        assert tuple(d.attrs["downsample"]) == (1.0, 1.0)
        assert tuple(d.attrs["level_dim"]) == (2048, 1536)
        assert d.attrs["target_mpp"] == 0.5 and d.attrs["slide_mpp"] == 0.25
        assert d.attrs["target_magnification"] == 20.0 and d.attrs["level0_magnification"] == 40.0
        assert d.attrs["name"] == "S1" and d.attrs["save_path"] == str(out)
        assert d.attrs["level0_width"] == 2048 and d.attrs["level0_height"] == 1536
        fr = f["tissue_fraction"][:]
        assert fr.shape == (d.shape[0],) and (fr >= 0.25).all()
    rec = json.loads((out / "S1.json").read_text())
    assert rec["status"] == "ok" and rec["n_patches"] == qc["n_patches"]
    assert rec["mpp_source"] == "metadata" and rec["case_id"] == "C1"
    assert (out / "S1.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*tmp"))  # no temporary left behind


def test_patches_cover_the_tissue_box(make_slide, tmp_path):
    # tissue box (512..1536) x (384..1152) at 20x; patches of 256 px
    _, out, _ = _tile(make_slide, tmp_path)
    coords, attrs = read_patch_file(out / "S1.h5")
    got = {tuple(c) for c in coords.tolist()}
    inside = {(x, y) for x in range(512, 1536, 256) for y in range(384 + 128, 1152 - 128, 256)}
    assert inside <= got  # every cell well inside the box is kept
    assert all(256 <= x <= 1536 and 128 <= y <= 1152 for x, y in got)  # nothing on bare glass


def test_clam_style_reader_reads_the_tissue(make_slide, tmp_path):
    """Open coords, read_region at patch_level/patch_size: every patch shows tissue."""
    import openslide

    p, out, _ = _tile(make_slide, tmp_path, mpp=0.25, power=40)
    img = tissue_image(1536, 2048, tissue_box=(512, 384, 1536, 1152))
    with h5py.File(out / "S1.h5") as f:
        coords = f["coords"][:]
        level = int(f["coords"].attrs["patch_level"])
        size = int(f["coords"].attrs["patch_size"])
    s = openslide.OpenSlide(str(p))
    for x, y in coords[:6]:
        region = np.asarray(s.read_region((int(x), int(y)), level, (size, size)).convert("RGB"))
        assert region.shape == (size, size, 3)
        ref = img[y : y + size, x : x + size]
        assert np.abs(region.astype(int) - ref.astype(int)).mean() < 12  # JPEG round trip
        assert region.std() > 5  # textured tissue, not glass


def test_40x_and_20x_cover_same_physical_area(make_slide, tmp_path):
    big = tissue_image(3072, 4096, tissue_box=(1024, 768, 3072, 2304))
    small = tissue_image(1536, 2048, tissue_box=(512, 384, 1536, 1152))
    p40 = make_slide("s40.svs", img=big, mpp=0.25, power=40)
    p20 = make_slide("s20.svs", img=small, mpp=0.5, power=20)
    q = [
        tile_slide(n, p, tmp_path / f"{n}.h5", tmp_path / f"{n}.json", tmp_path / f"{n}.png")
        for n, p in (("a40", p40), ("a20", p20))
    ]
    c40, a40 = read_patch_file(tmp_path / "a40.h5")
    c20, a20 = read_patch_file(tmp_path / "a20.h5")
    assert a40["patch_size_level0"] == 2 * a20["patch_size_level0"]
    np.testing.assert_array_equal(c40, 2 * c20)
    assert q[0]["n_patches"] == q[1]["n_patches"] > 0


def test_overlap_changes_step_not_size(make_slide, tmp_path):
    _, out, _ = _tile(make_slide, tmp_path, params=TilingParams(overlap=128))
    coords, attrs = read_patch_file(out / "S1.h5")
    assert attrs["patch_size_level0"] == 256 and attrs["step_size_level0"] == 128
    assert np.diff(np.unique(coords[:, 0])).min() == 128


def test_mpp_override_and_default(make_slide, tmp_path):
    p = make_slide(mpp=None, power=None)
    out = tmp_path / "o"
    with pytest.raises(BadSlideError, match="no resolution metadata"):
        tile_slide("S", p, out / "a.h5", out / "a.json", out / "a.png")
    assert not (out / "a.h5").exists()
    q = tile_slide("S", p, out / "a.h5", out / "a.json", out / "a.png", mpp_override=0.25)
    assert q["mpp_source"] == "override" and q["patch_size_level0"] == 512
    q = tile_slide(
        "S", p, out / "b.h5", out / "b.json", out / "b.png", TilingParams(default_mpp=0.5)
    )
    assert q["mpp_source"] == "default" and q["patch_size_level0"] == 256


def test_no_tissue_gives_valid_empty_file(make_slide, tmp_path):
    p = make_slide(img=tissue_image(1536, 2048))
    out = tmp_path / "o"
    q = tile_slide("E", p, out / "E.h5", out / "E.json", out / "E.png")
    assert q["status"] == "no_tissue" and q["n_patches"] == 0
    coords, attrs = read_patch_file(out / "E.h5")
    assert coords.shape == (0, 2) and coords.dtype == np.int64
    assert CLAM_ATTRS | MAG_ATTRS <= set(attrs)


# ------------------------------------------------------------------ bad slides


def _corrupt_tiles(src, dst, page):
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as t:
        pg = t.pages[page]
        for o, c in zip(pg.dataoffsets, pg.databytecounts, strict=True):
            data[o : o + c] = b"\x00" * c
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture
def bad_slides(make_slide, tmp_path):
    good = make_slide("good.svs")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"GIF89a" + b"\x00" * 5000)
    truncated = tmp_path / "trunc.svs"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {
        "missing": (tmp_path / "missing.svs", "file not found"),
        "unreadable": (junk, "cannot open"),
        "truncated": (truncated, "cannot open"),
        "corrupt_tiles": (_corrupt_tiles(good, tmp_path / "corrupt.svs", 2), "cannot read region"),
        "no_mpp": (make_slide("nompp.svs", mpp=None, power=None), "no resolution metadata"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated", "corrupt_tiles", "no_mpp"])
def test_bad_slide_fails_with_one_clear_line(bad_slides, tmp_path, case):
    path, reason = bad_slides[case]
    out = tmp_path / "o"
    with pytest.raises(BadSlideError, match=reason) as e:
        tile_slide("BAD1", path, out / "b.h5", out / "b.json", out / "b.png")
    assert "slide BAD1" in str(e.value) and str(path) in str(e.value)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated", "corrupt_tiles", "no_mpp"])
def test_bad_slide_skip_writes_valid_empty_file(bad_slides, tmp_path, case):
    path, reason = bad_slides[case]
    out = tmp_path / "o"
    q = tile_slide(
        "BAD1", path, out / "b.h5", out / "b.json", out / "b.png", TilingParams(on_bad_slide="skip")
    )
    assert q["status"] == "skipped" and reason in q["reason"]
    coords, attrs = read_patch_file(out / "b.h5")
    assert coords.shape == (0, 2) and attrs["status"] == "skipped"
    assert CLAM_ATTRS <= set(attrs)
    table = summarize_qc([out / "b.json"], out / "qc.tsv")
    assert table.loc[0, "status"] == "skipped" and reason in table.loc[0, "reason"]


def test_cli_bad_slide_prints_one_line_and_exits_2(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "tile", "--slide", str(tmp_path / "gone.svs"),
         "--slide-id", "S9", "--out-h5", str(tmp_path / "a.h5"), "--out-qc",
         str(tmp_path / "a.json"), "--out-thumbnail", str(tmp_path / "a.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    assert "slide S9" in err[0] and "gone.svs" in err[0] and "file not found" in err[0]
    assert "tiling.on_bad_slide: skip" in err[0]
    assert "Traceback" not in p.stderr


def test_slide_handle_closes(make_slide):
    with Slide("S", make_slide()) as s:
        pass
    assert s._os is None


def test_slide_without_pyramid_is_reduced_strip_by_strip(make_slide, tmp_path):
    """A single-level slide: the mask comes from strip-wise reduction of level 0."""
    p = make_slide(n_levels=1)
    with Slide("S", p) as s:
        assert s.level_count == 1
    q = tile_slide("S", p, tmp_path / "a.h5", tmp_path / "a.json", tmp_path / "a.png")
    assert q["status"] == "ok" and q["seg_level"] == 0 and q["seg_reduction"] == 32
    ref = tile_slide(
        "R", make_slide("r.svs"), tmp_path / "r.h5", tmp_path / "r.json", tmp_path / "r.png"
    )
    np.testing.assert_array_equal(
        read_patch_file(tmp_path / "a.h5")[0], read_patch_file(tmp_path / "r.h5")[0]
    )
    assert ref["n_patches"] == q["n_patches"]


# ------------------------------------------------------------------ every failure, one policy


def _outs(out):
    return out / "b.h5", out / "b.json", out / "b.png"


def test_tiny_slide_is_too_small_a_listed_status_under_skip_and_an_error_under_fail(
    make_slide, tmp_path
):
    """16 × 16 px (it crashed read_level_downsampled with ZeroDivisionError)."""
    p = make_slide("tiny.svs", img=np.full((16, 16, 3), 200, np.uint8), n_levels=1)
    out = tmp_path / "o"
    with pytest.raises(BadSlideError, match="slide T .*too small to tile: slide is 16 × 16 px"):
        tile_slide("T", p, *_outs(out), TilingParams(on_bad_slide="fail"))
    assert not (out / "b.h5").exists() and not (out / "b.json").exists()
    q = tile_slide("T", p, *_outs(out), TilingParams(on_bad_slide="skip"))
    assert q["status"] == "too_small" and q["n_patches"] == 0
    assert "16 × 16 px at level 0" in q["reason"] and "256 × 256 level-0 px" in q["reason"]
    coords, attrs = read_patch_file(out / "b.h5")
    assert coords.shape == (0, 2) and attrs["status"] == "too_small"
    assert CLAM_ATTRS | MAG_ATTRS <= set(attrs) and attrs["patch_size_level0"] == 256
    assert (out / "b.png").exists()
    table = summarize_qc([out / "b.json"], out / "qc.tsv")
    assert (
        table.loc[0, "status"] == "too_small" and "smaller than one patch" in table.loc[0, "reason"]
    )


def test_slide_smaller_than_the_mask_grid_is_too_small():
    from shazam.tiling import _too_small

    p = TilingParams(patch_size=16)
    # one patch fits (16 px) but the level read for the mask has 20 // 32 = 0 mask pixels
    why = _too_small(20, 20, 0.5, 16, p, (0, 32, (20, 20), 16.0))
    assert "smaller than one pixel of the tissue mask" in why and "20 × 20 px" in why
    assert _too_small(2048, 1536, 0.5, 256, TilingParams(), (2, 1, (128, 96), 8.0)) == ""


def _boom(*a, **k):
    return 1 // 0


@pytest.mark.parametrize("where", ["read_level_downsampled", "open"])
def test_unexpected_error_fails_as_a_bad_slide(make_slide, tmp_path, monkeypatch, where):
    p = make_slide()
    if where == "open":
        import openslide

        monkeypatch.setattr(openslide, "OpenSlide", _boom)
        stage = "while opening"
    else:
        monkeypatch.setattr(Slide, "read_level_downsampled", _boom)
        stage = "while segmenting and tiling"
    out = tmp_path / "o"
    with pytest.raises(BadSlideError) as e:
        tile_slide("U1", p, *_outs(out))
    msg = str(e.value)
    assert msg.startswith(f"slide U1 ({p}): unexpected error {stage}: ZeroDivisionError")
    assert "_boom (test_tiling.py:" in msg and "\n" not in msg
    assert isinstance(e.value.__cause__, ZeroDivisionError)  # the traceback, for the log
    assert not out.exists() or not any(out.iterdir())


def test_unexpected_error_skip_is_recorded_with_its_traceback(make_slide, tmp_path, monkeypatch):
    monkeypatch.setattr(Slide, "read_level_downsampled", _boom)
    out = tmp_path / "o"
    q = tile_slide("U2", make_slide(), *_outs(out), TilingParams(on_bad_slide="skip"))
    assert q["status"] == "skipped" and "ZeroDivisionError" in q["reason"]
    rec = json.loads((out / "b.json").read_text())
    assert rec["traceback"].startswith("Traceback") and "1 // 0" in rec["traceback"]
    coords, attrs = read_patch_file(out / "b.h5")
    assert coords.shape == (0, 2) and attrs["status"] == "skipped"
    table = summarize_qc([out / "b.json"], out / "qc.tsv")
    assert table.loc[0, "status"] == "skipped" and "ZeroDivisionError" in table.loc[0, "reason"]


def test_memory_error_is_not_the_slides_fault(make_slide, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(Slide, "read_level_downsampled", oom)
    with pytest.raises(MemoryError):
        tile_slide("M", make_slide(), *_outs(tmp_path), TilingParams(on_bad_slide="skip"))


# the tile command as the workflow runs it, with one reader method made to crash
_CLI_BOOM = """
import sys
from shazam import cli, slides
slides.Slide.read_level_downsampled = lambda *a, **k: 1 // 0
sys.exit(cli.main(sys.argv[1:]))
"""


def _tile_cmd(slide, out, *extra):
    return [
        sys.executable, "-c", _CLI_BOOM, *extra, "tile", "--slide", str(slide), "--slide-id",
        "S7", "--out-h5", str(out / "a.h5"), "--out-qc", str(out / "a.json"),
        "--out-thumbnail", str(out / "a.png"),
    ]  # fmt: skip


def test_cli_unexpected_error_one_line_on_terminal_traceback_in_log(make_slide, tmp_path):
    slide = make_slide()
    # to a terminal or pipe: the one line only
    p = subprocess.run(_tile_cmd(slide, tmp_path), capture_output=True, text=True)
    assert p.returncode == 2
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in p.stderr
    assert "slide S7" in err[0] and str(slide) in err[0] and "ZeroDivisionError" in err[0]
    assert "-v" in err[0] and "tiling.on_bad_slide: skip" in err[0]
    # as the rule runs it (`> {log} 2>&1`): the traceback in the log, then the same one line
    log = tmp_path / "tile.log"
    with open(log, "w") as fh:
        rc = subprocess.run(_tile_cmd(slide, tmp_path), stdout=fh, stderr=subprocess.STDOUT)
    assert rc.returncode == 2
    lines = log.read_text().splitlines()
    assert (
        "Traceback (most recent call last):" in lines and "in _tile_open_slide" in log.read_text()
    )
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]]
    assert lines[-1].startswith(err[0].split(" (`shazam -v")[0])
    assert not list(tmp_path.glob("a.*"))
    # -v: the traceback on stderr too
    p = subprocess.run(_tile_cmd(slide, tmp_path, "-v"), capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" in p.stderr


def test_cli_unexpected_error_under_skip_exits_0(make_slide, tmp_path):
    cmd = [*_tile_cmd(make_slide(), tmp_path), "--tiling", '{"on_bad_slide": "skip"}']
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "slide S7 skipped: unexpected error" in p.stderr and "Traceback" not in p.stderr
    assert json.loads((tmp_path / "a.json").read_text())["status"] == "skipped"


# ------------------------------------------------------------------ implausible scale


def _generic_tiff(path, img, dpi=72):
    """A tiled generic TIFF whose resolution tag says ``dpi`` (OpenSlide: vendor generic-tiff,
    MPP = 25,400 / dpi)."""
    tifffile.imwrite(
        path, img, tile=(256, 256), photometric="rgb", compression="jpeg",
        resolution=(dpi, dpi), resolutionunit="INCH",
    )  # fmt: skip
    return path


@pytest.fixture
def tiff_72dpi(tmp_path):
    img = tissue_image(1536, 2048, tissue_box=(512, 384, 1536, 1152))
    return _generic_tiff(tmp_path / "export.tif", img)


def test_72_dpi_tiff_is_refused_with_the_override_hint(tiff_72dpi, tmp_path):
    with Slide("X", tiff_72dpi) as s:
        assert s.mpp.source == "metadata" and round(s.mpp.value, 1) == 352.8
    with pytest.raises(BadSlideError) as e:
        tile_slide("X", tiff_72dpi, *_outs(tmp_path / "o"))
    msg = str(e.value)
    assert "implausible scale: 352.8 µm/px" in msg and "metadata" in msg
    assert "slide sheet's `mpp` column" in msg and "overrides" in msg
    assert "tiling.max_mpp" in msg and "\n" not in msg
    q = tile_slide("X", tiff_72dpi, *_outs(tmp_path / "s"), TilingParams(on_bad_slide="skip"))
    assert q["status"] == "skipped" and "352.8" in q["reason"]


def test_72_dpi_tiff_with_the_sheets_mpp_tiles_correctly(tiff_72dpi, make_slide, tmp_path):
    q = tile_slide("X", tiff_72dpi, *_outs(tmp_path / "x"), mpp_override=0.5)
    assert q["status"] == "ok" and q["mpp_source"] == "override" and q["n_patches"] > 0
    ref = tile_slide("R", make_slide("r.svs"), *_outs(tmp_path / "r"))
    np.testing.assert_array_equal(
        read_patch_file(tmp_path / "x" / "b.h5")[0], read_patch_file(tmp_path / "r" / "b.h5")[0]
    )
    # the same through the command line (the workflow passes the sheet's mpp as --mpp)
    out = tmp_path / "c"
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "tile", "--slide", str(tiff_72dpi), "--slide-id", "X",
         "--mpp", "0.5", "--out-h5", str(out / "a.h5"), "--out-qc", str(out / "a.json"),
         "--out-thumbnail", str(out / "a.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "a.json").read_text())["n_patches"] == ref["n_patches"]


def test_cli_72_dpi_tiff_one_line(tiff_72dpi, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "shazam", "tile", "--slide", str(tiff_72dpi), "--slide-id", "X",
         "--out-h5", str(tmp_path / "a.h5"), "--out-qc", str(tmp_path / "a.json"),
         "--out-thumbnail", str(tmp_path / "a.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "352.8" in err[0] and "`mpp` column" in err[0]
    assert "Traceback" not in p.stderr


def test_implausible_sheet_mpp_says_correct_the_column(make_slide, tmp_path):
    with pytest.raises(BadSlideError, match=r"0\.001 µm/px .*from the slide sheet's `mpp` column"):
        tile_slide("S", make_slide(), *_outs(tmp_path), mpp_override=0.001)
    with pytest.raises(BadSlideError, match="correct this slide's value"):
        tile_slide("S", make_slide(), *_outs(tmp_path), mpp_override=50.0)


def test_implausible_objective_power_names_it(make_slide, tmp_path):
    p = make_slide("p.svs", mpp=None, power=0.5)  # 10 µm / 0.5 = 20 µm/px
    with pytest.raises(BadSlideError, match=r"20 µm/px .*objective power \(0\.5×"):
        tile_slide("S", p, *_outs(tmp_path))


def test_patch_with_too_few_level0_pixels_is_refused(make_slide, tmp_path):
    p = make_slide("coarse.svs", mpp=5.0, power=None)  # plausible, but 256 px at 0.5 = 26 px
    with pytest.raises(BadSlideError) as e:
        tile_slide("S", p, *_outs(tmp_path / "o"))
    msg = str(e.value)
    assert "26 level-0 px at 5 µm/px" in msg and "tiling.min_patch_px_level0 = 32" in msg
    assert "`mpp` column" in msg
    q = tile_slide("S", p, *_outs(tmp_path / "o"), TilingParams(min_patch_px_level0=16))
    assert q["status"] in ("ok", "no_tissue") and q["patch_size_level0"] == 26


@pytest.mark.parametrize(
    "kw", [{"min_mpp": 0}, {"min_mpp": 2.0, "max_mpp": 1.0}, {"min_patch_px_level0": 0}]
)
def test_scale_limits_are_checked(kw):
    with pytest.raises(ValueError, match="tiling.m"):
        TilingParams(**kw)
