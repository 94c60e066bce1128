"""The `external` config section and the checks between the training and external sheets."""

import pandas as pd
import pytest

from shazam.external_cohorts import CohortError, check_cohort_sheets, parse_cohorts
from shazam.tasks import TaskSpec

SPECS = {
    "subtype": TaskSpec.from_config(
        "subtype", {"type": "classification", "labels": "l.csv", "classes": ["A", "B"]}
    ),
    "os": TaskSpec.from_config(
        "os", {"type": "survival", "labels": "s.csv", "time_col": "t", "event_col": "e"}
    ),
    "tiles": TaskSpec.from_config(
        "tiles", {"type": "tile_classification", "images": "t.csv", "classes": ["A", "B"]}
    ),
}


def test_a_cohort_serves_every_slide_task_with_a_sheet_and_tile_tasks_with_images():
    c = parse_cohorts(
        {"b": {"slides": "b.tsv", "labels": {"os": "b_os.csv"}, "images": {"tiles": "r.csv"}}},
        SPECS,
    )["b"]
    assert c.tasks == ("subtype", "os", "tiles")
    assert c.labels == {"os": "b_os.csv"}
    only = parse_cohorts({"b": {"slides": "b.tsv", "tasks": ["os"]}}, SPECS)["b"]
    assert only.tasks == ("os",)


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"slides": "b.tsv", "labels": {"tiles": "x.csv"}}, ["labels", "tiles", "not a slide"]),
        ({"images": {"subtype": "x"}}, ["images", "subtype", "not a tile"]),
        ({"labels": {"os": "x.csv"}}, ["need the cohort's `slides`"]),
        ({"images": {"tiles": "r"}, "tasks": ["os"]}, ["os", "needs the cohort's `slides`"]),
        ({"slides": "b.tsv", "tasks": ["nope"]}, ["nope is not a task"]),
        ({}, ["no task to predict"]),
        ({"slides": "b.tsv", "sheet": "x"}, ["unknown key", "sheet"]),
    ],
)
def test_bad_cohort_entries_are_named(entry, words):
    with pytest.raises(CohortError) as e:
        parse_cohorts({"b": entry}, SPECS)
    assert "external.b" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_cohort_names_are_wildcard_safe():
    for name in ("a b", "x/y", "training"):
        with pytest.raises(CohortError, match="cohort name"):
            parse_cohorts({name: {"slides": "b.tsv"}}, SPECS)


def _sheet(tmp_path, name, rows):
    files = []
    for sid, _case in rows:
        f = tmp_path / f"{name}_{sid}.svs"
        f.write_bytes(sid.encode() * 10)
        files.append(str(f))
    df = pd.DataFrame(
        {"slide_id": [r[0] for r in rows], "case_id": [r[1] for r in rows], "path": files}
    )
    return str(tmp_path / f"{name}.tsv"), df


def test_external_sheets_must_not_share_slide_ids_cases_or_files(tmp_path):
    train = _sheet(tmp_path, "train", [("s1", "c1"), ("s2", "c2")])
    ok = _sheet(tmp_path, "b", [("b1", "x1"), ("b2", "x2")])
    check_cohort_sheets({"training": train, "b": ok}, "training")  # nothing shared

    same_id = _sheet(tmp_path, "c", [("s2", "y1")])
    with pytest.raises(CohortError, match=r"slide id s2 is in the training sheet .*line 3"):
        check_cohort_sheets({"training": train, "c": same_id}, "training")

    same_case = _sheet(tmp_path, "d", [("d1", "c1")])
    with pytest.raises(CohortError, match="case c1 of external cohort d .* also a case"):
        check_cohort_sheets({"training": train, "d": same_case}, "training")

    path, df = _sheet(tmp_path, "e", [("e1", "z1")])
    df.loc[0, "path"] = train[1].loc[1, "path"]  # the training sheet's slide under a new id
    with pytest.raises(CohortError) as e:
        check_cohort_sheets({"training": train, "e": (path, df)}, "training")
    assert "e1" in str(e.value) and "s2" in str(e.value)
