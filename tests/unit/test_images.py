"""ROI image listing and reading (shazam.images): the tile path's slides.py."""

import numpy as np
import pytest
from conftest import textured, tile_spec
from PIL import Image

from shazam.images import fit_image, load_images
from shazam.tasks import LabelError


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
