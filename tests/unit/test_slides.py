import math

import numpy as np
import pytest

from shazam.slides import (
    MPP,
    BadSlideError,
    SheetError,
    Slide,
    best_level,
    describe_mpp_source,
    load_sheet,
    magnification,
    mpp_override_hint,
    resolve_mpp,
)


def write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------ MPP resolution order


def test_mpp_override_wins_over_everything():
    props = {
        "openslide.mpp-x": "0.25",
        "openslide.mpp-y": "0.25",
        "openslide.objective-power": "40",
    }
    m = resolve_mpp(props, override=0.3, default=1.0)
    assert (m.value, m.source) == (0.3, "override")


def test_mpp_metadata_before_objective_power():
    props = {
        "openslide.mpp-x": "0.26",
        "openslide.mpp-y": "0.24",
        "openslide.objective-power": "20",
    }
    m = resolve_mpp(props, override=None, default=1.0)
    assert m.source == "metadata"
    assert m.value == pytest.approx(0.25)


def test_mpp_from_objective_power():
    m = resolve_mpp({"openslide.objective-power": "40"})
    assert (m.value, m.source) == (0.25, "objective_power")
    m = resolve_mpp({"openslide.objective-power": "20"}, default=0.1)
    assert (m.value, m.source) == (0.5, "objective_power")


def test_mpp_default_then_error():
    m = resolve_mpp({"openslide.mpp-x": "0", "openslide.objective-power": "nan"}, default=0.5)
    assert (m.value, m.source) == (0.5, "default")
    with pytest.raises(ValueError, match="tiling.default_mpp"):
        resolve_mpp({})


def test_nan_override_means_no_override():
    m = resolve_mpp({"openslide.mpp-x": "0.5"}, override=math.nan)
    assert m.source == "metadata"


def test_best_level_never_coarser_than_target():
    assert best_level([0.25, 1.0, 4.0], 0.5) == 0
    assert best_level([0.25, 0.5, 2.0], 0.5) == 1
    assert best_level([0.5, 2.0, 8.0], 0.5) == 0
    assert best_level([1.0, 4.0], 0.5) == 0  # a 10x scan: level 0 (upsampled, flagged in QC)
    assert magnification(0.5) == 20.0 and magnification(0.25) == 40.0


# ------------------------------------------------------------------ sheet validation


@pytest.fixture
def slide_files(tmp_path):
    for n in ("a.svs", "b.svs"):
        (tmp_path / n).write_bytes(n.encode())  # distinct files (equal contents are an error)
    return tmp_path


def test_sheet_resolves_relative_paths_and_mpp(slide_files):
    sheet = write(
        slide_files / "slides.tsv",
        "slide_id\tpath\tcase_id\tmpp\nS1\ta.svs\tC1\t0.25\nS2\tb.svs\tC1\t\n",
    )
    df = load_sheet(sheet)
    assert list(df["slide_id"]) == ["S1", "S2"]
    assert df.loc[0, "path"] == str(slide_files / "a.svs")
    assert df.loc[0, "mpp"] == 0.25 and math.isnan(df.loc[1, "mpp"])


def test_sheet_csv_is_accepted(slide_files):
    sheet = write(slide_files / "slides.csv", "slide_id,path,case_id\nS1,a.svs,C1\n")
    assert len(load_sheet(sheet)) == 1


@pytest.mark.parametrize(
    "body, expected",
    [
        ("S1\ta.svs\tC1\nS1\tb.svs\tC2\n", r"line 3, column slide_id: duplicate slide id 'S1'"),
        ("S 1\ta.svs\tC1\n", r"line 2, column slide_id: 'S 1' has characters outside"),
        ("S1\tmissing.svs\tC1\n", r"line 2, column path: file not found for slide 'S1'"),
        ("S1\ta.svs\t\n", r"line 2, column case_id: empty case id"),
    ],
)
def test_sheet_errors_name_the_row(slide_files, body, expected):
    sheet = write(slide_files / "slides.tsv", "slide_id\tpath\tcase_id\n" + body)
    with pytest.raises(SheetError, match=expected) as e:
        load_sheet(sheet)
    assert str(sheet) in str(e.value)


def test_sheet_missing_column(slide_files):
    sheet = write(slide_files / "slides.tsv", "slide_id\tfile\tcase_id\nS1\ta.svs\tC1\n")
    with pytest.raises(SheetError, match=r"missing column\(s\) path"):
        load_sheet(sheet)


def test_sheet_bad_mpp(slide_files):
    sheet = write(slide_files / "s.tsv", "slide_id\tpath\tcase_id\tmpp\nS1\ta.svs\tC1\tfast\n")
    with pytest.raises(SheetError, match="line 2, column mpp: 'fast' is not a positive number"):
        load_sheet(sheet)


def test_sheet_reports_all_problems_at_once(slide_files):
    sheet = write(
        slide_files / "s.tsv", "slide_id\tpath\tcase_id\nS/1\ta.svs\tC1\nS2\tnope.svs\tC2\n"
    )
    with pytest.raises(SheetError, match="2 problem") as e:
        load_sheet(sheet)
    assert "line 2" in str(e.value) and "line 3" in str(e.value)


# ------------------------------------------------------------------ one slide file listed twice


def _sheet(root, rows, check_files=True):
    sheet = write(root / "s.tsv", "slide_id\tpath\tcase_id\n" + "".join(r + "\n" for r in rows))
    return load_sheet(sheet, check_files=check_files)


def _refused(root, rows, check_files=True) -> str:
    with pytest.raises(SheetError) as e:
        _sheet(root, rows, check_files)
    return str(e.value)


def test_the_same_file_under_two_case_ids_is_an_error_naming_both_lines(slide_files):
    (slide_files / "sub").mkdir()
    (slide_files / "link.svs").symlink_to(slide_files / "a.svs")
    sheet = slide_files / "s.tsv"
    for path in ("a.svs", "link.svs", "./sub/../a.svs", str(slide_files / "a.svs")):
        for check_files in (True, False):
            msg = _refused(slide_files, ["S1\ta.svs\tC1", "S9\tb.svs\tC9", f"S2\t{path}\tC2"],
                           check_files)  # fmt: skip
            assert msg.startswith("1 problem(s)")
            assert (
                f"slide sheet {sheet}, line 4, column path: slide 'S2' of case 'C2' is the same "
                "file as slide 'S1' of case 'C1' on line 2 ("
            ) in msg
            assert "would sit on both sides of a fold; keep only the line of the case" in msg
            if path == "link.svs":
                assert f"{slide_files / 'link.svs'} and {slide_files / 'a.svs'} are both" in msg


def test_the_same_file_twice_in_one_case_is_an_error_of_its_own(slide_files):
    msg = _refused(slide_files, ["S1\ta.svs\tC1", "S2\ta.svs\tC1"])
    assert (
        "line 3, column path: slide 'S2' is the same file as slide 'S1' on line 2 "
        f"({slide_files / 'a.svs'}), both of case 'C1': its patches would enter the case's bag "
        "twice; remove one of the two lines"
    ) in msg


def test_a_copy_under_another_name_is_found_by_its_content(slide_files):
    big = np.random.default_rng(0).bytes(5 * 2**20)  # > 3 MiB: first, middle and last MiB
    (slide_files / "big.svs").write_bytes(big)
    (slide_files / "copy.svs").write_bytes(big)
    msg = _refused(slide_files, ["S1\tbig.svs\tC1", "S2\ta.svs\tC2", "S3\tcopy.svs\tC3"])
    assert (
        f"line 4, column path: slide 'S3' ({slide_files / 'copy.svs'}) has the same content as "
        f"slide 'S1' on line 2 ({slide_files / 'big.svs'}) (same size and same first, middle "
        "and last MiB), but their case ids differ ('C3' here, 'C1' on line 2): a copy of one "
        "slide under two case ids would sit on both sides of a fold"
    ) in msg
    msg = _refused(slide_files, ["S1\tbig.svs\tC1", "S3\tcopy.svs\tC1"])
    assert "both of case 'C1': a copy within one case would put the slide's patches" in msg
    # before the files exist (the demo's sheet), contents are not compared
    assert len(_sheet(slide_files, ["S1\tbig.svs\tC1", "S3\tcopy.svs\tC3"], False)) == 2


def test_distinct_files_of_equal_size_are_accepted(slide_files):
    rng = np.random.default_rng(1)
    names = ["a.svs", "b.svs", "x.svs", "y.svs", "u.svs", "v.svs"]  # a, b: 1 byte each
    for name in ("x.svs", "y.svs"):
        (slide_files / name).write_bytes(rng.bytes(4 * 2**20))
    # u and v differ in one byte of the middle MiB (of 4 MiB: from 1.5 MiB on)
    data = bytearray(rng.bytes(4 * 2**20))
    (slide_files / "u.svs").write_bytes(bytes(data))
    data[int(1.5 * 2**20) + 5] ^= 0xFF
    (slide_files / "v.svs").write_bytes(bytes(data))
    sheet = _sheet(slide_files, [f"S{i}\t{n}\tC{i}" for i, n in enumerate(names)])
    assert list(sheet["slide_id"]) == [f"S{i}" for i in range(6)]


# ------------------------------------------------------------------ slide reader


def test_slide_reader_reads_aperio_metadata(make_slide):
    p = make_slide(mpp=0.25, power=40)
    with Slide("S", p) as s:
        assert s.vendor == "aperio"
        assert s.mpp.value == 0.25 and s.mpp.source == "metadata"
        assert s.level_count == 3
        assert s.level_mpps == pytest.approx([0.25, 1.0, 4.0])
        rgb = s.read_region((0, 0), 1, (64, 32))
        assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8


def test_slide_objective_power_only(make_slide):
    p = make_slide(mpp=None, power=20)
    with Slide("S", p) as s:
        assert (s.mpp.value, s.mpp.source) == (0.5, "objective_power")


def test_read_level_downsampled_matches_block_mean(make_slide):
    p = make_slide()
    with Slide("S", p) as s:
        full = s.read_region((0, 0), 1, s.level_dimensions[1]).astype(np.float32)
        red = s.read_level_downsampled(1, 4, max_strip_pixels=64 * 512)  # several strips
        h, w = red.shape[:2]
        ref = full[: h * 4, : w * 4].reshape(h, 4, w, 4, 3).mean(axis=(1, 3))
        assert np.abs(red.astype(np.float32) - ref).max() <= 1


def test_missing_and_unreadable_slides(tmp_path):
    with pytest.raises(BadSlideError, match=r"slide S \(.*nope.svs\): file not found"):
        Slide("S", tmp_path / "nope.svs")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide" * 100)
    with pytest.raises(BadSlideError, match="cannot open"):
        Slide("S", junk)


def test_rgba_to_rgb_composites_on_white():
    from shazam.slides import rgba_to_rgb

    a = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [50, 0, 50, 128]]], dtype=np.uint8)
    rgb = rgba_to_rgb(a)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [177, 127, 177]  # premultiplied colour + (1 - alpha) white


def test_atomic_outputs_follow_umask(tmp_path):
    import os

    from shazam.io import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_fast_jpeg_reader_matches_openslide(make_slide):
    import openslide

    from shazam.slides import JpegTiledLevel, rgba_to_rgb

    p = make_slide(mpp=0.25, power=40)
    osr = openslide.OpenSlide(str(p))
    for level in (0, 1):
        r = JpegTiledLevel.open(str(p), osr.level_dimensions[level], osr, level)
        assert r is not None
        ds = osr.level_downsamples[level]
        w, h = osr.level_dimensions[level]
        for x, y, rw, rh in ((130, 77, 300, 200), (w - 100, h - 50, 256, 256), (0, 0, 64, 64)):
            ref = rgba_to_rgb(
                np.asarray(osr.read_region((int(x * ds), int(y * ds)), level, (rw, rh)))
            )
            np.testing.assert_array_equal(r.read(x, y, rw, rh), ref)  # white outside too
        r.close()


def test_fast_jpeg_scaled_decode_is_close_to_box_reduction(make_slide):
    import openslide

    from shazam.slides import JpegTiledLevel

    p = make_slide(mpp=0.25, power=40)
    osr = openslide.OpenSlide(str(p))
    r = JpegTiledLevel.open(str(p), osr.level_dimensions[0], osr, 0)
    assert r.can_scale(512, 256, 512, 512, 2) and not r.can_scale(513, 256, 512, 512, 2)
    half = r.read(512, 256, 512, 512, scale=2).astype(np.float32)
    full = r.read(512, 256, 512, 512).astype(np.float32)
    box = full.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert half.shape == (256, 256, 3)
    assert np.abs(half - box).mean() < 2.0


def test_fast_jpeg_reader_declines_other_compressions(tmp_path):
    import openslide
    import tifffile

    from shazam.slides import JpegTiledLevel

    img = np.full((512, 512, 3), 200, np.uint8)
    p = tmp_path / "deflate.tif"
    tifffile.imwrite(p, img, tile=(256, 256), compression="zlib", photometric="rgb")
    osr = openslide.OpenSlide(str(p))
    assert JpegTiledLevel.open(str(p), osr.level_dimensions[0], osr, 0) is None


def test_mpp_sources_in_words_and_the_override_hint():
    power = {"openslide.objective-power": "40"}
    assert describe_mpp_source(MPP(0.25, "objective_power"), power).startswith(
        "the slide's objective power (40×"
    )
    assert describe_mpp_source(MPP(0.5, "override")) == "the slide sheet's `mpp` column"
    assert "metadata" in describe_mpp_source(MPP(0.5, "metadata"))
    assert describe_mpp_source(MPP(0.5, "default")) == "tiling.default_mpp"
    assert "`mpp` column" in mpp_override_hint(MPP(352.8, "metadata"))
    assert mpp_override_hint(MPP(0.001, "override")).startswith("correct")


def test_downsampled_read_of_a_slide_smaller_than_the_factor_is_empty(make_slide):
    """It divided by zero on a 16 x 16 px slide; tiling calls such a slide too_small."""
    with Slide("T", make_slide(img=np.full((16, 16, 3), 200, np.uint8), n_levels=1)) as s:
        assert s.read_level_downsampled(0, 32).shape == (0, 0, 3)
        assert s.read_level_downsampled(0, 4).shape == (4, 4, 3)
