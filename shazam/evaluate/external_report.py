"""The external validation report of one task on one labelled cohort (issue 17): the internal
report's metrics, CIs and paired comparison, read from the prediction tables of
:func:`shazam.predict.predict_cohort` (one per model; ``results/predictions/{cohort}/{task}/
{model}.tsv``), or of :func:`shazam.predict.predict_tiles` for a tile task: a row per image,
rows identified by the task's unit (``spec.record.unit``) and every bootstrap drawing whole
cases with all their images, as the internal report does.

:func:`external_report` writes into its folder:

* ``metrics.tsv`` — every model's :func:`~.external.external_metrics` (its ensemble with the
  case bootstrap CI, and each fold's model alone), late fusion included;
* ``comparison.tsv`` — the student's ensemble against the single teacher chosen on
  **internal** validation (the internal report's ``summary.tsv``), early fusion (concat),
  late fusion and the single teacher best on this cohort (an optimistic oracle), each with
  the paired case bootstrap of Δ (:func:`~.external.external_pair`);
* ``figures/*.png``, ``report.md`` and ``report.html`` (:mod:`.external_doc`).

An unlabelled cohort (no truth column, or no labelled row) gets a short report instead
(:func:`unlabelled_report`): what each model predicted and the cases left out; the two tables
are written with their header only and ``figures/`` is left empty, so the outputs a workflow
rule declares are always there.

Late fusion is computed here, as in the internal report (:func:`~.runs.late_fusion`): per
case, the mean of the single teachers' class probabilities, or of their rank-normalised risks;
of their ensembles and of each fold's models alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..cohorts import NO_LABEL, NO_PATCHES
from ..io import atomic_path, write_text_atomic
from ..models import registry
from ..tasks import LabelError, TaskSpec, join_errors
from .document import Doc
from .external import (
    METRIC_COLUMNS,
    _folds,
    estimate,
    external_metrics,
    external_pair,
    internal_baseline,
    predicted,
    scored,
)
from .external_doc import ExternalContext, build_document, draw_figures
from .runs import ModelRun, late_fusion, single_teachers
from .stats import EvalConfig
from .tables import choose_baselines

DEFAULTS = EvalConfig()
SOURCE = "source"  # a prediction table's ``attrs`` key: the file it was read from
# the student's comparisons, in the report's order (see :data:`.tables.BASELINES`): the
# single teacher is the one chosen on internal validation; the best on this cohort is an
# oracle, chosen on the cohort's own outcomes
BASELINES = (
    ("internal", "best single teacher, chosen on internal validation"),
    ("concat", "early fusion (concat), every teacher"),
    ("late", "late fusion of the single teachers"),
    ("oracle", "best single teacher on this cohort (oracle, optimistic)"),
)
COMPARISON_COLUMNS = [
    "comparison", "student", "baseline", "metric", "n_cases", "delta", "ci_low", "ci_high",
    "n_boot",
]  # fmt: skip
_PROB = re.compile(r"^prob_(.+?)(_fold\d+)?$")


def read_predictions(paths: list[str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """Prediction tables by model (the file's stem), each remembering its file (``attrs``),
    which the checks' messages name."""
    tables: dict[str, pd.DataFrame] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"prediction table {p} is missing — run shazam predict first")
        if p.stem in tables:
            raise ValueError(
                f"two prediction tables of model {p.stem}: {tables[p.stem].attrs[SOURCE]} and {p}"
            )
        df = pd.read_csv(p, sep="\t", dtype={"case_id": str, "image_id": str, "label": str,
                         "pred": str, "note": str}, keep_default_na=False,
                         na_values=[""])  # fmt: skip
        df.attrs[SOURCE] = str(p)
        tables[p.stem] = df
    return tables


def _source(model: str, table: pd.DataFrame) -> str:
    return table.attrs.get(SOURCE) or f"the prediction table of {model}"


def _truth(spec: TaskSpec) -> list[str]:
    return ["label"] if spec.kind == "classification" else ["time", "event"]


def _what(spec: TaskSpec) -> str:
    """What a row of the task's tables is: an image (tile tasks) or a case."""
    return "image" if spec.record.unit == "image_id" else "case"


def _with_labels(spec: TaskSpec) -> str:
    """How to predict with labels, in an error's words."""
    return "an image set with labels" if spec.family == "tile" else "the cohort's --labels"


def is_labelled(tables: dict[str, pd.DataFrame], spec: TaskSpec) -> bool:
    """Whether the cohort has labels: a table has the truth column with a value in it."""
    col = _truth(spec)[0]
    return any(col in t and t[col].notna().any() for t in tables.values())


def _classes(table: pd.DataFrame) -> set[str]:
    """The classes of a table's probability columns (ensemble and folds)."""
    return {m.group(1) for c in table.columns if (m := _PROB.match(c))}


def check_tables(
    tables: dict[str, pd.DataFrame], spec: TaskSpec, cohort: str, student: str
) -> bool:
    """Every table is a prediction table of this task, of the same rows (cases; a tile
    task's images), classes and truth as the student's; else an error naming the file(s) and
    what to do. Returns whether the cohort is labelled (:func:`is_labelled`): then every
    table must have the labels."""
    where = f"cohort {cohort}, task {spec.name}"
    if student not in tables:
        raise ValueError(
            f"{where}: no prediction table of the student {student} (given: "
            f"{', '.join(tables) or 'none'}) — predict it on the cohort "
            f"(results/predictions/{cohort}/{spec.name}/{student}.tsv)"
        )
    if registry.LATE_FUSION in tables:
        raise ValueError(
            f"{where}: {_source(registry.LATE_FUSION, tables[registry.LATE_FUSION])}: late "
            "fusion is computed by the report from the single teachers; leave it out"
        )
    ref, labelled = tables[student], is_labelled(tables, spec)
    for model in [student, *(m for m in tables if m != student)]:
        table, src = tables[model], _source(model, tables[model])
        try:
            registry.parse(model)
        except ValueError as e:
            raise ValueError(f"{src}: {e} (a table's model is its file's stem)") from None
        if model != student and _classes(table) != _classes(ref):
            raise LabelError(
                f"{src} has class columns of {sorted(_classes(table))}, "
                f"{_source(student, ref)} of {sorted(_classes(ref))} — were both predicted "
                f"with task {spec.name}'s models?"
            )
        _check_table(table, spec, src, labelled)
        if model != student:
            _check_same_rows(table, ref, spec, (src, _source(student, ref)), labelled)
    return labelled


def _check_table(table: pd.DataFrame, spec: TaskSpec, src: str, labelled: bool) -> None:
    truth = _truth(spec) if labelled else []
    if any(c not in table for c in truth):
        raise ValueError(
            f"{src} has no {' or '.join(truth)} column, other tables of the cohort have "
            f"labels: it was predicted without them — predict every model with "
            f"{_with_labels(spec)}"
        )
    unknown = sorted(_classes(table) - set(spec.classes))
    if unknown:
        raise LabelError(
            f"{src} has probabilities of class(es) {unknown} that are not classes of task "
            f"{spec.name} {list(spec.classes)} — was it predicted with another task's models?"
        )
    outputs = [f"prob_{c}" for c in spec.classes] if spec.kind == "classification" else []
    unit, what = spec.record.unit, _what(spec)
    need = [*dict.fromkeys([unit, "case_id"]), "note", *truth, *(outputs or ["risk_rank"])]
    lacking = [c for c in need if c not in table]
    if lacking:
        raise ValueError(
            f"{src} lacks column(s) {', '.join(lacking)} of a {spec.type} prediction table of "
            f"task {spec.name} — predict it again with this version of shazam"
        )
    dup = table.loc[table[unit].duplicated(), unit].unique()
    if len(dup):
        raise ValueError(f"{src}: {what}(s) {', '.join(dup[:5])} have more than one row")
    if not labelled:
        return
    labelled = table[table[truth[0]].notna()]
    if labelled.empty:
        raise ValueError(f"{src}: no {what} has a label, other tables of the cohort have "
                         f"labels — predict every model with {_with_labels(spec)}")  # fmt: skip

    def at(i: int, col: str) -> str:
        return f"{src}, row {labelled.index[i] + 2} ({what} {labelled[unit].iloc[i]}), {col}"

    if spec.kind == "classification":
        errors = spec.class_errors(labelled["label"], lambda i, _: at(i, "label"))
    else:
        t = pd.to_numeric(labelled["time"], errors="coerce").to_numpy(dtype=float)
        e = pd.to_numeric(labelled["event"], errors="coerce").to_numpy(dtype=float)
        errors = [f"{at(i, 'time')}: time must be a number > 0"
                  for i in np.flatnonzero(~(np.isfinite(t) & (t > 0)))]  # fmt: skip
        errors += [f"{at(i, 'event')}: event must be 0 or 1 (1 = event observed)"
                   for i in np.flatnonzero(~np.isin(e, (0, 1)))]  # fmt: skip
    if errors:
        raise LabelError(join_errors(errors, f"{src} (task {spec.name})"))


def _check_same_rows(table, ref, spec: TaskSpec, srcs: tuple[str, str], labelled: bool):
    """The same rows (cases; a tile task's images, each of the same case) and truth."""
    (src, ref_src), unit, what = srcs, spec.record.unit, _what(spec)
    a, b = set(table[unit]), set(ref[unit])
    if a != b:
        only, other = sorted(a - b), sorted(b - a)
        where = "image set" if spec.family == "tile" else "cohort's slide sheet"
        raise ValueError(
            f"{src} and {ref_src} list different {what}s ({len(only)} only in the first: "
            f"{', '.join(only[:5])}; {len(other)} only in the second: {', '.join(other[:5])}) "
            f"— predict every model on the same {where}"
        )
    cols = ["case_id"] if unit != "case_id" else []
    cols += _truth(spec) if labelled else []
    if not cols:
        return
    x = table.set_index(unit)[cols]
    y = ref.set_index(unit)[cols].loc[x.index]
    if spec.kind == "survival" and labelled:  # 1 and 1.0 are the same event
        for d in (x, y):
            d[_truth(spec)] = d[_truth(spec)].apply(pd.to_numeric, errors="coerce")
    differ = x.index[~((x == y) | (x.isna() & y.isna())).all(axis=1)]
    if len(differ):
        c = differ[0]
        show = [", ".join(map(str, d.loc[c])) for d in (x, y)]
        raise ValueError(
            f"{src} and {ref_src} give {what} {c} a different {' or '.join(cols)} "
            f"({show[0]} vs {show[1]}) — predict every model on the same "
            f"{'image set' if spec.family == 'tile' else 'sheet, with the same label file'}"
        )


def late_fusion_table(
    tables: dict[str, pd.DataFrame], singles: list[str], spec: TaskSpec
) -> pd.DataFrame:
    """Late fusion of the single teachers as a prediction table of the rows (cases; a tile
    task's images) every one of them scored: :func:`~.runs.late_fusion` of their ensembles
    (``prob_{class}`` or ``risk_rank``) and of each fold's models that all of them have
    (``prob_{class}_fold{k}`` or ``risk_fold{k}``)."""
    unit = spec.record.unit
    parts = {m: scored(tables[m], spec) for m in singles}
    common = set.intersection(*(set(t[unit]) for t in parts.values()))
    parts = {m: t[t[unit].isin(common)] for m, t in parts.items()}
    folds = sorted(set.intersection(*(set(_folds(t)) for t in parts.values())))
    estimates = [None, *folds]
    runs = [ModelRun(m, [estimate(t, spec, k) for k in estimates], [{}] * len(estimates))
            for m, t in parts.items()]  # fmt: skip
    fused = late_fusion(runs, spec)
    out = fused[0][[*dict.fromkeys([unit, "case_id"]), *_truth(spec)]].copy()
    for k, df in zip(estimates, fused, strict=True):
        sfx = "" if k is None else f"_fold{k}"
        if spec.kind == "classification":
            if k is None:
                out["pred"] = df["pred"].to_numpy()
            for c in spec.classes:
                out[f"prob_{c}{sfx}"] = df[f"prob_{c}"].to_numpy()
        else:
            out["risk_rank" if k is None else f"risk{sfx}"] = df["risk"].to_numpy()
    out["note"] = ""
    return out


def read_summary(summary, spec: TaskSpec) -> pd.DataFrame:
    """The internal report's ``summary.tsv`` (or its frame), checked for what the choice of
    the single teacher reads."""
    where = "the internal summary" if isinstance(summary, pd.DataFrame) else str(summary)
    if not isinstance(summary, pd.DataFrame):
        if not Path(summary).exists():
            raise ValueError(
                f"{summary} is missing — write the internal report first "
                f"(snakemake results/report/{spec.name}/summary.tsv)"
            )
        summary = pd.read_csv(summary, sep="\t")
    lacking = [c for c in ("model", "metric", "mean", "val_mean") if c not in summary]
    if lacking:
        raise ValueError(
            f"{where} lacks column(s) {', '.join(lacking)} — give the internal report's "
            f"summary.tsv (results/report/{spec.name}/summary.tsv)"
        )
    if not (summary["metric"] == spec.primary_metric).any():
        raise ValueError(
            f"{where} has no {spec.primary_metric} rows — is it the summary of task {spec.name}?"
        )
    return summary


def choose(
    metrics: pd.DataFrame, summary: pd.DataFrame, spec: TaskSpec, models: list[str], cohort: str
) -> dict:
    """The baselines of :data:`BASELINES` that this cohort's tables have (None where not)."""
    internal = internal_baseline(summary, spec)
    if internal is not None and internal not in models:
        raise ValueError(
            f"cohort {cohort}: the internal report chose {internal} as the best single teacher "
            f"of task {spec.name}, but no prediction table of it was given — predict it on the "
            f"cohort (results/predictions/{cohort}/{spec.name}/{internal}.tsv)"
        )
    ens = metrics[(metrics["estimate"] == "ensemble") & (metrics["metric"] == spec.primary_metric)]
    on_cohort = ens.assign(mean=pd.to_numeric(ens["value"]), val_mean=np.nan)
    fusion = registry.FAMILY[spec.family].fusion
    return {
        "internal": internal,
        "concat": fusion if fusion in models else None,
        "late": registry.LATE_FUSION if registry.LATE_FUSION in models else None,
        "oracle": choose_baselines(on_cohort, single_teachers(spec, models), spec.primary_metric)[
            "oracle"
        ],
    }


def compare_student(tables, student: str, chosen: dict, spec: TaskSpec, cfg: EvalConfig):
    """(the student's :class:`~.stats.Paired` against each chosen baseline, the (rows, cases)
    of each, ``comparison.tsv``: ``n_cases`` counts the rows, a tile task's images, as
    ``metrics.tsv`` does); a teacher chosen twice is compared once, with both labels."""
    pairs, counts, done = [], [], {}
    for key, label in BASELINES:
        b = chosen.get(key)
        if b is None:
            continue
        if b in done:
            done[b].label += " (also the best on this cohort)"
            continue
        pair, n = external_pair(tables[student], tables[b], spec, (student, b), label, cfg)
        done[b] = pair
        pairs.append(pair)
        counts.append(n)
    rows = [{"comparison": p.label, "student": p.a, "baseline": p.b, "metric": p.metric,
             "n_cases": n[0], "delta": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high,
             "n_boot": p.n_valid} for p, n in zip(pairs, counts, strict=True)]  # fmt: skip
    return pairs, counts, pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def left_out(
    tables: dict[str, pd.DataFrame], spec: TaskSpec, student: str, labelled: bool = True
) -> dict:
    """{reason: rows} of the rows (cases; a tile task's images) no metric reads: without
    patches (in any table) and, in a labelled cohort, without a label."""
    unit, no_patches = spec.record.unit, set()
    for t in tables.values():
        no_patches |= set(t.loc[t["note"].fillna("").str.contains(NO_PATCHES), unit])
    if not labelled:
        return {NO_PATCHES: sorted(no_patches)}
    ref = tables[student]
    no_label = set(ref.loc[ref[_truth(spec)[0]].isna(), unit])
    return {NO_PATCHES: sorted(no_patches), NO_LABEL: sorted(no_label)}


def default_student(spec: TaskSpec) -> str:
    """The student of the task's family: ``shazam`` (slide tasks), ``shazam-v1`` (tile)."""
    return registry.FAMILY[spec.family].student


def external_report(
    spec: TaskSpec,
    cohort: str,
    tables: dict[str, pd.DataFrame],
    summary: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike,
    cfg: EvalConfig = DEFAULTS,
    student: str | None = None,
    extra: Callable[[Doc], None] | None = None,
) -> dict:
    """Write the external report of task ``spec`` on ``cohort`` into ``out_dir`` from the
    prediction ``tables`` by model (:func:`read_predictions`), with the single teacher that
    the internal ``summary`` (``results/report/{task}/summary.tsv``) chose; ``student``
    defaults to the family's (:func:`default_student`). An unlabelled cohort gets the short
    report of :func:`unlabelled_report`. ``extra(doc)`` may add a section before the
    protocol. Returns the headline numbers."""
    student = student or default_student(spec)
    labelled = check_tables(tables, spec, cohort, student)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # a figure that no longer applies must not linger
        old.unlink()
    if not labelled:
        return unlabelled_report(spec, cohort, tables, out, cfg, student, extra)
    summary = read_summary(summary, spec)
    singles = single_teachers(spec, list(tables))
    late = [registry.LATE_FUSION] if len(singles) >= 2 else []  # after the singles it fuses
    models = singles + late + [m for m in tables if m not in singles]
    if late:
        tables = {**tables, registry.LATE_FUSION: late_fusion_table(tables, singles, spec)}
    metrics = pd.concat([external_metrics(tables[m], spec, m, cfg) for m in models],
                        ignore_index=True)  # fmt: skip
    chosen = choose(metrics, summary, spec, models, cohort)
    pairs, counts, comparison = compare_student(tables, student, chosen, spec, cfg)
    ctx = ExternalContext(
        spec=spec, cohort=cohort, student=student, models=models, metrics=metrics,
        pairs=pairs, n_paired=counts, chosen=chosen, left_out=left_out(tables, spec, student),
        n_listed=_counts(tables[student]), n_folds=len(_folds(tables[student])), cfg=cfg,
        n_scored_cases={m: scored(tables[m], spec)["case_id"].nunique() for m in models},
    )  # fmt: skip
    ctx.figures, ctx.km_p = draw_figures(ctx, tables, fig_dir)
    _write(ctx, out, metrics, comparison, extra)
    return headline(ctx)


def _counts(table: pd.DataFrame) -> tuple[int, int]:
    """(rows, cases) of a table."""
    return len(table), int(table["case_id"].nunique())


def _write(ctx: ExternalContext, out: Path, metrics, comparison, extra) -> None:
    """The report's tables and document, each file atomically."""
    for name, df in (("metrics", metrics), ("comparison", comparison)):
        with atomic_path(out / f"{name}.tsv") as tmp:
            df.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    doc = build_document(ctx, extra)
    write_text_atomic(out / "report.md", doc.markdown())
    title = f"Shazam external validation: {ctx.spec.name} on {ctx.cohort}"
    write_text_atomic(out / "report.html", doc.html(title))


def prediction_summary(tables: dict[str, pd.DataFrame], spec: TaskSpec) -> pd.DataFrame:
    """Per model, what it predicted on the cohort: its rows with a prediction (and their
    cases, for a tile task), then the count of each predicted class (classification) or the
    distribution of ``risk_rank`` (survival)."""
    what, rows = _what(spec), []
    for model, table in tables.items():
        done = predicted(table)
        row = {"model": model, f"predicted {what}s": len(done)}
        if spec.record.unit != "case_id":
            row["cases"] = done["case_id"].nunique()
        if spec.kind == "classification":
            counts = done["pred"].value_counts()
            row.update({f"predicted {c}": int(counts.get(c, 0)) for c in spec.classes})
        else:
            r = done["risk_rank"].to_numpy(dtype=float)
            q = np.percentile(r, [0, 25, 50, 75, 100]) if len(r) else [np.nan] * 5
            row.update({"risk_rank median": f"{q[2]:.3f}", "IQR": f"{q[1]:.3f}–{q[3]:.3f}",
                        "range": f"{q[0]:.3f}–{q[4]:.3f}"})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def unlabelled_report(
    spec: TaskSpec,
    cohort: str,
    tables: dict[str, pd.DataFrame],
    out: Path,
    cfg: EvalConfig,
    student: str,
    extra: Callable[[Doc], None] | None = None,
) -> dict:
    """The short report of a cohort without labels (checked tables): what each model
    predicted, the cases left out, the protocol; no metric, no comparison. ``metrics.tsv``
    and ``comparison.tsv`` are written with their header only, and ``figures/`` exists, so
    a workflow's outputs are complete."""
    models = list(tables)
    ctx = ExternalContext(
        spec=spec, cohort=cohort, student=student, models=models,
        metrics=pd.DataFrame(columns=METRIC_COLUMNS), pairs=[], n_paired=[], chosen={},
        left_out=left_out(tables, spec, student, labelled=False),
        n_listed=_counts(tables[student]), n_folds=len(_folds(tables[student])), cfg=cfg,
        labelled=False, predicted=prediction_summary(tables, spec),
    )  # fmt: skip
    _write(ctx, out, ctx.metrics, pd.DataFrame(columns=COMPARISON_COLUMNS), extra)
    done = predicted(tables[student])
    head = {"task": spec.name, "cohort": cohort, "labelled": False,
            "n_cases": int(done["case_id"].nunique()), "models": models,
            "figures": []}  # fmt: skip
    if spec.record.unit != "case_id":
        head["n_images"] = len(done)
    return head


def headline(ctx: ExternalContext) -> dict:
    """The numbers the CLI logs: the student's primary metric, its baselines and its Δ
    against the single teacher chosen internally. ``n_cases``: the cases scored (a tile
    task also gives ``n_images``, the images scored, which ``metrics.tsv``'s ``n_cases``
    counts)."""
    value, lo, hi = ctx.value(ctx.student)
    head = {
        "task": ctx.spec.name,
        "cohort": ctx.cohort,
        "labelled": True,
        "metric": ctx.spec.primary_metric,
        "n_cases": ctx.n_scored_cases.get(ctx.student, ctx.n_scored(ctx.student)),
        "student": value,
        "student_ci": (lo, hi),
        "baseline_internal": ctx.chosen.get("internal"),
        "baseline_oracle": ctx.chosen.get("oracle"),
        "figures": sorted(ctx.figures),
    }
    if ctx.spec.record.unit != "case_id":
        head["n_images"] = ctx.n_scored(ctx.student)
    if ctx.spec.kind == "survival":
        head["km_logrank_p"] = ctx.km_p
    p = ctx.internal_pair
    if p is not None:
        head.update(mean_delta=p.mean, ci=(p.ci_low, p.ci_high))
    return head
