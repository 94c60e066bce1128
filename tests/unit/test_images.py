"""ROI image listing and reading (shazam.images): the tile path's slides.py."""

import numpy as np
import pytest
from conftest import textured, tile_spec
from PIL import Image

from shazam.images import fit_image, load_images
from shazam.tasks import LabelError, TaskSpec


def test_fit_image_resize_and_crop():
    img = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    assert fit_image(img, 16, "resize", 1.0).shape == (16, 16, 3)
    # crop at scale 1: 10 rows, centred in 16 with white above and below; 30 columns cropped
    a = fit_image(img, 16, "crop", 1.0)
    assert a.shape == (16, 16, 3)
    assert (a[3:13] == 0).all() and (a[:3] == 255).all() and (a[13:] == 255).all()
    # at scale 2 the image (20 x 60) covers the whole window
    assert (fit_image(img, 16, "crop", 2.0) == 0).all()


def test_csv_listing_reports_every_problem_with_line_and_column(tmp_path):
    textured(8, 8, (200, 100, 200), 0).save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text(
        "path,label,case_id\na.png,A,c1\nmissing.png,B,c2\na.png,B,c3\nb.png,C,c4\n"
    )
    with pytest.raises(LabelError) as e:
        load_images(tile_spec(tmp_path / "t.csv"))
    msg = str(e.value)
    assert "line 3, column path: file" in msg and "missing.png not found" in msg
    assert "line 4, column path: duplicate image 'a.png' (see line 2)" in msg
    assert "line 5, column label: label 'C' is not one of the task's classes" in msg


def test_folder_listing_needs_one_subfolder_per_class(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "X").mkdir()
    with pytest.raises(LabelError, match="missing: B; not a class: X"):
        load_images(tile_spec(tmp_path))


# --------------------------------------------------------------------------- where cases come from


def _folder(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        textured(8, 8, (200, 100, 200), 0).save(root / name)
    return root


def test_listing_without_case_ids_is_refused_with_the_three_fixes(tmp_path):
    root = _folder(tmp_path / "ds", ["A/s1_0.png", "A/s1_1.png", "B/s2_0.png"])
    (tmp_path / "t.csv").write_text(
        "path,label,split\nds/A/s1_0.png,A,train\nds/B/s2_0.png,B,test\n"
    )
    for spec in (
        tile_spec(root),
        tile_spec(tmp_path / "t.csv"),
        tile_spec(tmp_path / "t.csv", splits="dataset"),  # its val part is carved from train
    ):
        with pytest.raises(LabelError) as e:
            load_images(spec)
        msg = str(e.value)
        assert msg.startswith("task roi: image ") and "gives no case ids" in msg
        assert "crops of one slide or patient would sit on both sides of a fold" in msg
        assert "add a case_id column" in msg
        assert r"case_pattern: '(TCGA-\w\w-\w{4})'" in msg
        assert "`image_level_splits: true`" in msg
    # the explicit opt-in: one case per image
    images = load_images(tile_spec(root, image_level_splits=True))
    assert list(images["case_id"]) == ["B/s2_0.png", "A/s1_0.png", "A/s1_1.png"]


def test_case_pattern_finds_cases_and_names_images_it_does_not_match(tmp_path):
    root = _folder(tmp_path / "ds", ["A/s1_0.png", "A/s1_1.png", "B/s2_0.png", "B/odd.png"])
    spec = tile_spec(root, case_pattern=r"(s\d)_")
    with pytest.raises(LabelError) as e:
        load_images(spec)
    assert str(e.value) == (
        f"1 problem(s) in image folder {root} (task roi):\n"
        r"  image 'B/odd.png' does not match case_pattern '(s\d)_'"
    )
    (root / "B/odd.png").unlink()
    assert list(load_images(spec)["case_id"]) == ["s2", "s1", "s1"]
    # without a group, the whole match is the case id
    assert list(load_images(tile_spec(root, case_pattern=r"s\d"))["case_id"]) == ["s2", "s1", "s1"]
    # many misses: the first 20 and a count
    _folder(root, [f"A/x{i:02d}.png" for i in range(25)])
    with pytest.raises(LabelError, match=r"^25 problem\(s\)") as e:
        load_images(spec)
    assert "\n  image 'A/x00.png' does not match" in str(e.value)
    assert str(e.value).endswith(
        "image 'A/x19.png' does not match case_pattern '(s\\d)_'\n  … and 5 more"
    )

    # a CSV: the path as written; a TCGA barcode's patient part
    for name in ("TCGA-AA-3518-01Z_0.png", "TCGA-AA-3518-01Z_1.png", "TCGA-BB-0001-01Z_0.png"):
        textured(8, 8, (200, 100, 200), 0).save(tmp_path / name)
    table = (
        "path,label\nTCGA-AA-3518-01Z_0.png,A\nTCGA-AA-3518-01Z_1.png,A\nTCGA-BB-0001-01Z_0.png,B\n"
    )
    (tmp_path / "t.csv").write_text(table + "ds/A/s1_0.png,A\n")
    spec = tile_spec(tmp_path / "t.csv", case_pattern=r"(TCGA-\w\w-\w{4})")
    with pytest.raises(LabelError, match="line 5, column path: image 'ds/A/s1_0.png' does not"):
        load_images(spec)
    (tmp_path / "t.csv").write_text(table)
    assert list(load_images(spec)["case_id"]) == ["TCGA-AA-3518"] * 2 + ["TCGA-BB-0001"]


def test_case_keys_are_checked(tmp_path):
    textured(8, 8, (200, 100, 200), 0).save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("path,label,case_id\na.png,A,c1\n")
    # a case_id column and a key that also says where cases come from: ambiguous
    for kw, key in (({"case_pattern": "a"}, "case_pattern 'a'"),
                    ({"image_level_splits": True}, "`image_level_splits: true`")):  # fmt: skip
        with pytest.raises(LabelError, match=f"has a case_id column and the task also sets {key}"):
            load_images(tile_spec(tmp_path / "t.csv", **kw))
    with pytest.raises(LabelError, match=r"case_pattern '\(a' is not a valid regular expression"):
        tile_spec("x.csv", case_pattern="(a")
    with pytest.raises(LabelError, match="not both"):
        tile_spec("x.csv", case_pattern="a", image_level_splits=True)
    with pytest.raises(LabelError, match="are keys of tile_classification tasks"):
        TaskSpec.from_config(
            "s",
            {
                "type": "classification",
                "labels": "l.csv",
                "classes": ["a", "b"],
                "case_pattern": "a",
            },  # fmt: skip
        )
