"""The reports' heatmap gallery (shazam.evaluate.gallery): which pictures, in which order, with
which captions, the cap, the source filter, and the internal report's section."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_evaluate import _write_task

from shazam.cli import main
from shazam.evaluate import EvalConfig, evaluate_task
from shazam.evaluate.document import Doc
from shazam.evaluate.gallery import heatmap_gallery
from shazam.heatmap_select import INDEX_COLUMNS


def job(root, model, fold, rows):
    """A heatmap job's folder: index.tsv with ``rows`` (slide, case, source, label, note) and
    a small PNG for each drawn slide's overlay (and the student's montage)."""
    d = root / "heatmaps" / "sub" / model / f"fold_{fold}"
    d.mkdir(parents=True)
    index = []
    for sid, case, source, label, note in rows:
        files = dict.fromkeys(("overlay", "montage", "h5", "geojson"), "")
        if not note:
            files.update(overlay=f"{sid}.png", montage=f"{sid}_montage.png", h5=f"{sid}.h5")
            for f in (files["overlay"], files["montage"]):
                Image.fromarray(np.full((4, 6, 3), 9 * fold, np.uint8)).save(d / f)
            (d / files["h5"]).write_bytes(b"h5")
        index.append({"slide_id": sid, "case_id": case, "source": source, "label": label,
                      "model": model, "fold": str(fold), **files, "note": note})  # fmt: skip
    pd.DataFrame(index, columns=list(INDEX_COLUMNS)).to_csv(d / "index.tsv", sep="\t", index=False)
    return d / "index.tsv"


@pytest.fixture
def indexes(tmp_path):
    """Two folds of the student and of an ABMIL: two test slides each (A, B), a chosen slide
    drawn by every fold, an external slide and a chosen slide without patches."""
    out = []
    for model in ("abmil-ta", "shazam"):
        for k in (0, 1):
            out.append(job(tmp_path, model, k, [
                (f"t{k}a", f"c{k}a", "test", "A", ""), (f"t{k}b", f"c{k}b", "test", "B", ""),
                ("ch", "cch", "chosen", "", ""), ("e1", "k1", "external:kiel", "A", ""),
                ("blank", "cbl", "chosen", "", "no patches"),
            ]))  # fmt: skip
    return out


def test_gallery_shows_each_slide_once_per_model_student_first_with_the_cap(indexes, tmp_path):
    doc = Doc()
    report = tmp_path / "report" / "sub"
    shown = heatmap_gallery(doc, indexes, ("test", "chosen"), rel_to=report, per_group=3)
    assert shown == 4  # three test slides (capped) and the chosen one
    md = doc.markdown()
    assert md.startswith("## Where the models look") and "### Test slides" in md
    assert "### Chosen slides" in md and "kiel" not in md
    # test slides in turn from each label: t0a (A), t0b (B), t1a (A); t1b is past the cap
    links = [ln for ln in md.splitlines() if ln.startswith("![")]
    up = "../../heatmaps/sub"
    assert links[:3] == [f"![t0a]({up}/shazam/fold_0/t0a.png)",
                         f"![t0a]({up}/abmil-ta/fold_0/t0a.png)",
                         f"![t0a_montage]({up}/shazam/fold_0/t0a_montage.png)"]  # fmt: skip
    assert [ln.split("/")[-1][:-1] for ln in links[3::3]] == ["t0b.png", "t1a.png", "ch.png"]
    assert len(links) == 4 * 3 and "t1b" not in md
    # the chosen slide is drawn by both folds: shown by fold 0's models only
    assert "shazam/fold_0/ch.png" in md and "fold_1/ch" not in md
    assert f"1 more slide(s) of this group are drawn under `{up}` (a folder per model" in md
    assert "Without patches (nothing to draw): blank." in md
    student = "gate-weighted mean of the teachers' top-level attention, a summary"
    assert (
        f"*Slide t1a (case c1a, A) under shazam, fold 1: attention × N, 1 = uniform ({student}).*"
        in md
    )
    assert "*Slide t1a (case c1a, A) under abmil-ta, fold 1: attention × N, 1 = uniform.*" in md
    html = doc.html("r")
    assert html.count("data:image/jpeg;base64,") == 12  # heatmaps: embedded as small JPEGs
    assert "<h2>Where the models look</h2>" in html and "<figcaption>Slide ch (case cch)" in html


def test_gallery_of_one_external_cohort_and_of_no_matching_source(indexes):
    doc = Doc()
    assert heatmap_gallery(doc, indexes, ["external:kiel"]) == 1
    md = doc.markdown()
    assert "### External cohort kiel" in md and "Test slides" not in md
    assert md.count("![e1") == 3  # the student's and the ABMIL's overlays, the montage
    empty = Doc()
    assert heatmap_gallery(empty, indexes, ["external:oslo"]) == 0 and empty.blocks == []


def test_a_file_missing_from_an_index_folder_names_both(indexes):
    (indexes[0].parent / "t0a.png").unlink()
    with pytest.raises(ValueError, match=r"abmil-ta/fold_0/index.tsv names t0a.png"):
        heatmap_gallery(Doc(), indexes)


def test_internal_report_has_the_gallery_before_the_protocol_only_when_given(tmp_path):
    spec, sheet, models_dir, split_dir = _write_task(tmp_path, "survival", ["abmil-a"], ["a"])
    index = job(tmp_path, "abmil-a", 0, [("s1", "case001", "test", "event", ""),
                                         ("e1", "k1", "external:kiel", "", "")])  # fmt: skip
    args = (spec, ["abmil-a"], ["a"], sheet, models_dir, split_dir)
    evaluate_task(*args, tmp_path / "plain", cfg=EvalConfig(n_boot=20))
    assert "Where the models look" not in (tmp_path / "plain" / "report.md").read_text()
    out = tmp_path / "report"  # the same through the CLI, with the index
    sheet.assign(path=sheet["slide_id"] + ".svs").to_csv(tmp_path / "slides.csv", index=False)
    rc = main(["evaluate", "--spec", spec.to_json(), "--slides", str(tmp_path / "slides.csv"),
               "--models", "abmil-a", "--teachers", "a", "--models-dir", str(models_dir),
               "--splits-dir", str(split_dir), "--out-dir", str(out),
               "--evaluation", '{"n_boot": 20}', "--heatmaps", str(index)])  # fmt: skip
    assert rc == 0
    md = (out / "report.md").read_text()
    assert md.index("## Dataset") < md.index("## Where the models look") < md.index("## Protocol")
    assert "![s1](../heatmaps/sub/abmil-a/fold_0/s1.png)" in md and "e1" not in md
    html = (out / "report.html").read_text()
    plain = (tmp_path / "plain" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == plain.count("data:image/png;base64,")
    assert html.count("data:image/jpeg;base64,") == 1 and "jpeg" not in plain
