"""Imported teachers end to end: feature folders in TRIDENT's and CLAM's layouts train beside
a toy teacher; nothing is extracted for them; an all-imported run does not tile."""

import json
import os
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_snakemake, tissue_image

from shazam.formats import read_patch_file
from shazam.tiling import TilingParams, tile_slide

N_CASES = 8
TRIDENT_DIR = "job/20x_256px_0px_overlap/features_uni_v1"


def _counts(stdout):
    table = stdout.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def _features(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _trident(path, coords, seed):
    """trident.IO.save_h5's layout: chunked rows, geometry attrs on coords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        feats = _features(len(coords), 24, seed)
        f.create_dataset("features", data=feats, chunks=(1, 24), maxshape=(None, 24))
        f["features"].attrs.update({"name": path.stem, "encoder": "uni_v1", "savetodir": "x"})
        c = f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))
        c.attrs.update({"patch_size": 256, "patch_size_level0": 256, "overlap": 0,
                        "level0_magnification": 20, "target_magnification": 20,
                        "name": path.stem, "savetodir": "x"})  # fmt: skip


def _clam(root, patches, slide, coords, seed):
    """CLAM: pt_files/<slide>.pt (no coords) and its patch file <patches>/<slide>.h5."""
    (root / "pt_files").mkdir(parents=True, exist_ok=True)
    patches.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(_features(len(coords), 16, seed)), root / f"pt_files/{slide}.pt")
    with h5py.File(patches / f"{slide}.h5", "w") as f:
        c = f.create_dataset("coords", data=coords.astype(np.int64))
        c.attrs.update({"patch_size": 256, "patch_level": 0, "downsample": [1.0, 1.0],
                        "name": slide, "save_path": str(patches)})  # fmt: skip


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    """A small cohort; its slides tiled by our tiling for the imported files' coords."""
    from shazam.demo import write_svs

    wd = tmp_path_factory.mktemp("imported")
    (wd / "slides").mkdir()
    rows = []
    for i in range(N_CASES):
        sid = f"S{i:02d}"
        img = tissue_image(1024, 1280, seed=i, tissue_box=(256, 256, 1024, 768))
        write_svs(wd / f"slides/{sid}.svs", img, mpp=0.5, objective_power=20, n_levels=2)
        ref = wd / "ref"
        tile_slide(sid, wd / f"slides/{sid}.svs", ref / f"{sid}.h5", ref / f"{sid}.json",
                   ref / f"{sid}.png", TilingParams())  # fmt: skip
        coords, _ = read_patch_file(ref / f"{sid}.h5")
        assert len(coords) >= 4
        # TRIDENT's tissue mask differs on one slide: a patch less (a partial overlap)
        _trident(wd / TRIDENT_DIR / f"{sid}.h5", coords[:-1] if i == 0 else coords, i)
        _clam(wd / "clam", wd / "clam_patches", sid, coords, 100 + i)
        rows.append((sid, f"slides/{sid}.svs", f"C{i:02d}", "AB"[i % 2]))
    sheet = pd.DataFrame(rows, columns=["slide_id", "path", "case_id", "label"])
    sheet.drop(columns="label").to_csv(wd / "slides.tsv", sep="\t", index=False)
    sheet[["case_id", "label"]].to_csv(wd / "labels.csv", index=False)
    return wd


def _config(wd, teachers, run_dir=None):
    """The run's config in ``run_dir`` (default ``wd``): a small task, 2 folds, 2 epochs."""
    run_dir = run_dir or wd
    (run_dir / "config").mkdir(parents=True, exist_ok=True)
    (run_dir / "config/config.yaml").write_text(
        f"slides: {wd / 'slides.tsv'}\ndemo: {{enabled: false}}\n"
        f"teachers: {json.dumps(teachers)}\n"
        "extraction: {batch_size: 64, num_workers: 0}\n"
        f"tasks: {{sub: {{type: classification, labels: {wd / 'labels.csv'}, classes: [A, B],"
        " folds: 2, val_fraction: 0.25}}\n"
        "training: {epochs: 2, seeds: [42], accumulate: 2}\n"
        "shazam: {ablations: [], layers: 1}\nevaluation: {n_boot: 10}\n"
    )
    return run_dir


def _trident_teacher(wd):
    return {"name": "trident_uni", "features": str(wd / TRIDENT_DIR), "format": "trident"}


def _clam_teacher(wd):
    return {"name": "clam_r50", "features": str(wd / "clam"), "format": "clam",
            "patches": str(wd / "clam_patches")}  # fmt: skip


def test_imported_teachers_train_beside_a_toy_teacher_without_extraction(imported_run):
    wd = imported_run
    _config(wd, ["toy_vit", _trident_teacher(wd), _clam_teacher(wd)])
    counts = _counts(run_snakemake(wd, "-n", "--cores", "2").stdout)
    assert counts["import_features"] == 2 * N_CASES  # per imported teacher and slide
    assert counts["feature_file"] == N_CASES  # toy_vit's only
    assert counts["tile_slide"] == N_CASES and counts["train_baseline"] == 3 * 2
    p = run_snakemake(wd, "--cores", "2", "--resources", "gpu=2")
    feats = wd / "results/features"
    # TRIDENT's one-row chunks and a CLAM .pt: rewritten once as our own contiguous files
    for t in ("trident_uni", "clam_r50"):
        assert not os.path.islink(feats / f"{t}/S03.h5")
        with h5py.File(feats / f"{t}/S03.h5") as f:
            assert f["features"].chunks is None and f["features"].dtype == np.float16
    log = (wd / "logs/import_features/trident_uni/S00.log").read_text()
    assert "WARNING" in log and "S00.h5: has" in log and "patches (100%) are on our grid" in log
    cfg = json.loads((wd / "results/models/sub/shazam/fold_0/config.json").read_text())
    assert cfg["shazam"]["levels"] == ["high"]  # the levels every teacher has
    report = (wd / "results/report/sub/report.md").read_text()
    assert "imported (TRIDENT, encoder uni_v1)" in report and "imported (CLAM)" in report
    assert "20x, 256 px patches" in report
    # replacing one imported file redoes that slide's import and what reads it, nothing else
    coords, _ = read_patch_file(wd / "ref/S03.h5")
    _trident(wd / "new.h5", coords, seed=99)  # new features of the same patches
    os.replace(wd / "new.h5", wd / TRIDENT_DIR / "S03.h5")
    counts = _counts(run_snakemake(wd, "-n", "--cores", "2").stdout)
    assert counts["import_features"] == 1 and "tile_slide" not in counts, p.stdout[-500:]
    assert "extract_features" not in counts and "train_baseline" in counts


def test_every_teacher_imported_means_no_tiling(imported_run):
    wd = imported_run
    run_dir = _config(wd, [_trident_teacher(wd), _clam_teacher(wd)], wd / "all_imported")
    p = run_snakemake(run_dir, "-n", "--cores", "2")
    counts = _counts(p.stdout)
    assert counts["import_features"] == 2 * N_CASES
    for rule in ("tile_slide", "tiling_qc", "extract_features", "feature_file", "extraction_qc"):
        assert rule not in counts


def test_missing_slide_and_pt_without_coords_stop_the_dry_run(imported_run, tmp_path):
    wd = imported_run
    partial = tmp_path / "trident"
    shutil.copytree(wd / TRIDENT_DIR, partial)
    (partial / "S04.h5").unlink()
    teacher = {**_trident_teacher(wd), "features": str(partial)}
    run_dir = _config(wd, ["toy_vit", teacher], tmp_path)
    p = run_snakemake(run_dir, "-n", check=False)
    out = p.stdout + p.stderr
    assert (
        p.returncode != 0 and f"1 of {N_CASES} slide(s)" in out and str(partial / "S04.h5") in out
    )
    clam = {**_clam_teacher(wd)}
    del clam["patches"]
    _config(wd, ["toy_vit", clam], tmp_path)
    p = run_snakemake(run_dir, "-n", check=False)
    assert p.returncode != 0 and "without coords" in p.stdout + p.stderr
