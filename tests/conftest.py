import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shazam.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_snakemake(workdir, *args, check=True, timeout=1800):
    """Run the repo's workflow with the venv's snakemake in ``workdir``."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def tissue_image(h, w, seed=0, tissue_box=None):
    """White glass with one purple textured rectangle (tissue_box = x0, y0, x1, y1 in px)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 242, dtype=np.uint8)
    if tissue_box is not None:
        x0, y0, x1, y1 = tissue_box
        patch = np.array([200, 120, 200])[None, None, :] + rng.integers(
            -25, 25, size=(y1 - y0, x1 - x0, 3)
        )
        img[y0:y1, x0:x1] = np.clip(patch, 0, 255)
    return img


def tile_spec(images, **kw):
    """A two-class tile task over ``images`` (a class folder or a CSV)."""
    return TaskSpec.from_config(
        "roi", {"type": "tile_classification", "images": str(images), "classes": ["B", "A"], **kw}
    )


def textured(h, w, colour, seed):
    """A noisy ``colour`` image of h × w pixels."""
    rng = np.random.default_rng(seed)
    img = np.asarray(colour)[None, None, :] + rng.integers(-30, 30, size=(h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def make_slide(tmp_path):
    """Write an Aperio-style pyramidal SVS; returns its path."""
    from shazam.demo import write_svs

    def _make(name="s.svs", img=None, mpp=0.5, power=20, n_levels=3):
        if img is None:
            img = tissue_image(1536, 2048, tissue_box=(512, 384, 1536, 1152))
        path = tmp_path / name
        write_svs(path, img, mpp=mpp, objective_power=power, n_levels=n_levels)
        return path

    return _make


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The default config's whole workflow (the embedded demo) run once in a scratch folder."""
    wd = tmp_path_factory.mktemp("demo_run")
    shutil.copytree(REPO / "config", wd / "config")
    p = run_snakemake(wd, "--cores", "2", "--resources", "gpu=2")  # as `make demo` runs it
    return wd, p
