"""Prediction on a new cohort (an external validation set, a prospective series): every fold's
trained model of a task applied to the cases of a slide sheet, or to the images of a tile
task's other image set (DESIGN §9).

* :func:`load_fold_model` — one trained model back from its folder
  (``results/models/{task}/{model}/fold_{k}/``: ``config.json`` and ``model.safetensors``,
  nothing else), with the input standardisation that travels with its weights;
* :func:`predict_cohort` — every fold's model of a task on a cohort's cases, each bag the union
  of the case's slides' feature files as in training, each fold with its own standardiser,
  through the engine's evaluation path (full bags; a bag larger than a batch streamed in
  chunks). One table, a row per case: each fold's outputs, the ensemble, and the label (or
  time and event) when labels are given;
* :func:`predict_tiles` — the same for a tile task, on an image set's tile feature files (one
  per teacher, from ``shazam extract-tiles --images``): one row per image, each fold's class
  probabilities, the ensemble, and the label when the image set has labels.

The numbers are training's: on a fold's own test cases a model's outputs are those of its
``predictions.csv``, bit for bit (same weights, same standardiser, same batches). Batches are
whole bags grouped by size, so on a cohort of other cases a bag may share a padded batch with
other bags than in training: its outputs then agree to the last bits of float rounding.

Ensemble rules:

* classification: the mean of the folds' class probabilities; ``pred``, its arg-max;
* survival: ``risk_rank``, the mean over folds of each fold's risks rank-normalised within the
  cohort (:func:`~shazam.evaluate.stats.rank_normalise`, in (0, 1], higher = higher risk).
  Each fold's risk (−Σ S over its own time bins, whose edges come from its training cases) is
  on its own scale, so raw risks are not averaged; ranks are what the report's late fusion
  and pooled estimates use, and what the C-index reads (it is rank-invariant). A rank is
  relative to the cohort predicted with it: compare cases within one table.

An image without a label in a partly labelled image set is marked ``no label``; an image set
without any label gives a table without a ``label`` column.

A case none of whose slides has a patch (no tissue, every slide skipped) has nothing a model
could look at: it keeps its row, with empty outputs and ``note`` = ``no patches``, is named in
the log, and is left out of the ranks and of every metric — never scored on a constant.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import layout
from .cohorts import NO_LABEL, NO_PATCHES
from .tasks import LabelError, TaskSpec


@dataclass
class FoldModel:
    """One trained model of a fold, as its folder records it."""

    name: str
    fold_dir: Path
    config: dict  # config.json
    spec: TaskSpec  # the task it was trained on
    model: torch.nn.Module  # weights loaded, strictly
    standardizer: object | None  # stores.Standardizer (None: trained without one)
    train: object  # training.TrainConfig: precision, batches (the evaluation path's)
    teachers: list[str]  # the teachers it reads
    levels: list[str]  # the levels it reads

    @property
    def dims(self) -> dict[str, int]:
        return self.config["dims"]

    @property
    def fold(self) -> str:
        """``k`` of the folder ``fold_{k}`` (else the folder's name)."""
        name = self.fold_dir.name
        return name[5:] if name.startswith("fold_") else name

    @property
    def student(self) -> bool:
        return hasattr(self.model, "gates")


def load_fold_model(fold_dir: str | os.PathLike, device: str | None = None) -> FoldModel:
    """A trained model from ``config.json`` and ``model.safetensors`` of its fold folder:
    rebuilt with the registry from the recorded name, teachers, widths, outputs, training
    section and student settings, its weights loaded strictly, and its input standardiser.
    ``device``: where to predict (``cpu``, ``cuda:1``; None: the recorded training setting)."""
    from safetensors.torch import load_file

    from .models import registry
    from .stores import split_checkpoint
    from .training import TrainConfig

    d = Path(fold_dir)
    for f in ("config.json", "model.safetensors"):
        if not (d / f).exists():
            raise ValueError(f"trained model {d}: {d / f} is missing — train the fold first")
    cfg = json.loads((d / "config.json").read_text())
    spec = TaskSpec.from_json(json.dumps(cfg["task"]))
    train = TrainConfig.from_dict(cfg["train"])
    if device is not None:
        train = dataclasses.replace(train, device=device)
    state, scaler = split_checkpoint(load_file(d / "model.safetensors"))
    student = cfg.get("shazam")
    if student is not None and spec.family == "slide" and "head.weight" in state:
        # the student's width: config.json records its settings without d_model
        student = {**student, "d_model": int(state["head.weight"].shape[1])}
    dims = training_order(cfg["dims"], cfg["teachers"])
    model = registry.build(cfg["model"], dims, cfg["n_out"], cfg["teachers"],
                           train.d_model, train.dropout, student)  # fmt: skip
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"trained model {d}: model.safetensors does not fit the {cfg['model']} that "
            f"config.json describes ({str(e).splitlines()[0]})"
        ) from None
    # a tile model reads the canonical embedding (its config records the student section as given)
    levels = ["high"] if spec.family == "tile" else (student or {}).get("levels") or ["high"]
    return FoldModel(cfg["model"], d, cfg, spec, model.eval(), scaler, train,
                     list(cfg["teachers"]), list(levels))  # fmt: skip


def training_order(dims: dict[str, int], teachers: list[str]) -> dict[str, int]:
    """``config.json``'s widths (``teacher:level`` keys, written with sorted keys) in the
    order training built the model with: the teachers' order, then low, mid, high. Models
    whose layers follow the widths' order (early fusion's per-teacher norms) need it."""
    rank = {lv: i for i, lv in enumerate(("low", "mid", "high"))}

    def order(k: str):
        t, _, lv = k.rpartition(":")
        return (teachers.index(t) if t in teachers else len(teachers), rank.get(lv, 3), k)

    return {k: dims[k] for k in sorted(dims, key=order)}


# --------------------------------------------------------------------------- the cohort


def case_labels(spec: TaskSpec, labels) -> pd.DataFrame:
    """A cohort's validated labels: a label file read with the task's columns and checks
    (:func:`~shazam.cohorts.load_labels`: an unknown class names file, line, label and the
    task's classes), or a frame already in that form (``case_id`` + ``label`` or ``time`` +
    ``event``)."""
    from .cohorts import load_labels

    if isinstance(labels, pd.DataFrame):
        if spec.kind == "classification":
            bad = sorted(set(labels["label"].astype(str)) - set(spec.classes))
            if bad:
                raise LabelError(
                    f"labels of task {spec.name}: label(s) {bad} are not among the task's "
                    f"classes {list(spec.classes)}"
                )
        return labels
    return load_labels(dataclasses.replace(spec, labels=os.fspath(labels)))


def check_features(fm: FoldModel, sheet: pd.DataFrame, root, cohort: str) -> None:
    """Every slide of the cohort has a feature file of every teacher the model reads, with
    the levels it reads (probed on the first slide); else an error naming them."""
    from .formats import levels_in

    missing = [
        (t, sid, path)
        for sid in sheet["slide_id"]
        for t in fm.teachers
        if not os.path.exists(path := layout.at(layout.FEATURES, root, teacher=t, slide=sid))
    ]
    reads = f"model {fm.name} reads teachers {', '.join(fm.teachers)}"
    if missing:
        t, sid, path = missing[0]
        more = f" (and {len(missing) - 1} more file(s))" if len(missing) > 1 else ""
        raise ValueError(
            f"cohort {cohort}: teacher {t}'s features are missing for slide {sid} ({path})"
            f"{more} — {reads}; extract them for this cohort first"
        )
    first = sheet["slide_id"].iloc[0]
    for t in fm.teachers:
        path = layout.at(layout.FEATURES, root, teacher=t, slide=first)
        have = levels_in(path)
        lack = [lv for lv in fm.levels if have is not None and lv not in have]
        if lack:
            raise ValueError(
                f"cohort {cohort}: {path} lacks level(s) {', '.join(lack)} — {reads} at levels "
                f"{', '.join(fm.levels)}; extract with those levels (extraction.levels)"
            )


def fold_outputs(fm: FoldModel, sheet: pd.DataFrame, cases: list[str], root, cohort: str,
                 cache: str = "disk"):  # fmt: skip
    """(the cases' patch counts, {case: outputs} of the cases with patches): class
    probabilities, or risk, through :class:`~shazam.training.Engine`'s evaluation path with
    the model's own standardiser. ``cache``: where the features are read from (see
    :func:`predict_cohort`)."""
    from .losses import survival_from_logits
    from .stores import FeatureStore

    check_features(fm, sheet, root, cohort)
    store = FeatureStore.for_slides(sheet, fm.teachers, cases, fm.levels, root)
    eng = fold_engine(fm, store, cohort, cache)
    sizes = {c: store.size(c) for c in cases}
    ids = [c for c in cases if sizes[c] > 0]
    logits = eng.predict(ids)["logits"]
    if fm.spec.kind == "classification":
        out = torch.softmax(logits, dim=1).numpy() if ids else np.zeros((0, fm.spec.n_out))
    else:
        out = survival_from_logits(logits)[2].numpy() if ids else np.zeros(0)
    return sizes, dict(zip(ids, out, strict=True))


def fold_engine(fm: FoldModel, store, cohort: str, cache: str | None = None):
    """The engine that runs ``fm`` on ``store`` as training evaluated it: the store's widths
    checked against the model's, the model's own input standardiser; the features read from
    ``cache`` (None: the model's training setting)."""
    from .training import Engine

    for k, c in store.dims.items():
        if fm.dims.get(k) != c:
            raise ValueError(
                f"cohort {cohort}: {k} features are {c} wide, model {fm.name} ({fm.fold_dir}) "
                f"was trained on {fm.dims.get(k)} — extract this cohort with the same teacher"
            )
    store.cache(cache or fm.train.cache)
    eng = Engine(fm.model, fm.spec, store, None, fm.train)
    eng.use_inputs(fm.standardizer)
    return eng


def predict_cohort(
    task_spec: TaskSpec,
    models_dir: str | os.PathLike,
    model: str,
    n_runs: int | None,
    sheet: pd.DataFrame,
    features_root: str | os.PathLike = layout.RESULTS,
    labels=None,
    *,
    cohort: str = "cohort",
    device: str | None = None,
    log=print,
    cache: str = "disk",
) -> pd.DataFrame:
    """Every fold's model ``model`` of the task (``models_dir/{model}/fold_{k}``, k <
    ``n_runs``: folds × seeds; None: the task's folds) on the cases of ``sheet``, from their
    feature files under ``features_root``. ``labels``: a label file (or a frame of validated
    labels) to put the truth beside the predictions. Returns one row per case of the sheet:
    ``case_id``, ``n_slides``, ``n_patches``, the truth (``label`` or ``time``/``event``), the
    ensemble (``pred`` + ``prob_{class}``, or ``risk_rank``), each fold's outputs
    (``prob_{class}_fold{k}`` or ``risk_fold{k}``) and ``note`` (``no patches``,
    ``no label``). See the module's docstring for the ensemble and no-patch rules.

    ``cache``: where each fold model reads the cohort's features from. ``disk`` (default):
    rows read on demand through the page cache, which the next fold then reads again from
    memory. Training's ``memory`` would copy the whole cohort into the process once per fold
    model to read each row once: at 12 slides of 15,000 patches, twice the time and 3.3× the
    peak memory (``benchmarks/predict_cohort.py``). The outputs are the same either way."""
    if task_spec.family != "slide":
        raise ValueError(f"task {task_spec.name}: prediction on a new cohort is for slide tasks")
    n_runs = n_runs or task_spec.n_folds
    if sheet.empty:
        raise ValueError(f"cohort {cohort}: the slide sheet lists no slide")
    cases = sorted(sheet["case_id"].unique())
    folds = []
    for k in range(n_runs):
        fm = load_fold_model(Path(models_dir) / model / f"fold_{k}", device)
        _check_same_task(fm, task_spec, model)
        folds.append(fold_outputs(fm, sheet, cases, features_root, cohort, cache))
    table = cohort_table(task_spec, sheet, cases, folds)
    if labels is not None:
        table = add_truth(table, task_spec, case_labels(task_spec, labels), cohort, log)
    empty = list(table.loc[table["note"].str.contains(NO_PATCHES), "case_id"])
    if empty:
        log(f"cohort {cohort}: {len(empty)} case(s) without patches, not predicted: "
            f"{', '.join(empty[:10])}{' …' if len(empty) > 10 else ''}")  # fmt: skip
    return table


def _check_same_task(fm: FoldModel, spec: TaskSpec, model: str) -> None:
    t = fm.spec
    if fm.name != model or (t.type, t.classes, t.n_bins) != (spec.type, spec.classes, spec.n_bins):
        raise ValueError(
            f"{fm.fold_dir}: a {fm.name} model of a {t.type} task with classes "
            f"{list(t.classes)}, not the {model} of task {spec.name} ({spec.type}, classes "
            f"{list(spec.classes)}) — retrain it or check --models-dir"
        )


def cohort_table(spec: TaskSpec, sheet: pd.DataFrame, cases: list[str], folds) -> pd.DataFrame:
    """The prediction table from each fold's (sizes, outputs) (see :func:`predict_cohort`)."""
    sizes = folds[0][0]
    n_slides = sheet.groupby("case_id").size()
    df = pd.DataFrame({"case_id": cases, "n_slides": [int(n_slides[c]) for c in cases],
                       "n_patches": [sizes[c] for c in cases]})  # fmt: skip
    ok = [c for c in cases if all(c in out for _, out in folds)]
    rows = df["case_id"].isin(set(ok)).to_numpy()
    per_fold = [np.stack([out[c] for c in ok]) if ok else None for _, out in folds]
    cols: dict[str, np.ndarray] = {}
    if spec.kind == "classification":
        shape = (len(ok), len(spec.classes))
        cols = class_columns(
            spec, rows, [p if p is not None else np.zeros(shape) for p in per_fold]
        )
    else:
        from .evaluate.stats import rank_normalise

        risks = [r if r is not None else np.zeros(0) for r in per_fold]
        cols["risk_rank"] = _fill(rows, np.mean([rank_normalise(r) for r in risks], axis=0))
        for k, r in enumerate(risks):
            cols[f"risk_fold{k}"] = _fill(rows, r)
    df = pd.concat([df, pd.DataFrame(cols)], axis=1)
    df["note"] = np.where(rows, "", NO_PATCHES)
    return df


def class_columns(spec: TaskSpec, rows: np.ndarray, probs: list[np.ndarray]) -> dict:
    """The ensemble's ``pred`` and ``prob_{class}`` (the mean of the folds' probabilities),
    then each fold's ``prob_{class}_fold{k}``: ``probs[k]`` holds fold k's probabilities of
    the ``rows`` (a mask) that have outputs; the other rows stay empty."""
    mean = np.mean(probs, axis=0)
    pred = np.full(len(rows), None, dtype=object)
    pred[rows] = [spec.classes[i] for i in mean.argmax(1)]
    cols = {"pred": pred}
    for i, c in enumerate(spec.classes):
        cols[f"prob_{c}"] = _fill(rows, mean[:, i])
    for k, p in enumerate(probs):
        for i, c in enumerate(spec.classes):
            cols[f"prob_{c}_fold{k}"] = _fill(rows, p[:, i])
    return cols


def _fill(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at the ``rows`` (a mask), NaN elsewhere; the values' float dtype kept."""
    out = np.full(len(rows), np.nan, dtype=np.result_type(values.dtype, np.float32))
    out[rows] = values
    return out


def add_truth(table: pd.DataFrame, spec: TaskSpec, labels: pd.DataFrame, cohort: str, log):
    """The table with the truth after ``n_patches`` (``label``, or ``time`` and ``event``:
    1 = event observed); a case without a label is marked ``no label``."""
    cols = ["label"] if spec.kind == "classification" else ["time", "event"]
    truth = labels.set_index("case_id")[cols].reindex(table["case_id"])
    unlabelled = list(truth.index[truth[cols[0]].isna()])
    out = table.copy()
    at = out.columns.get_loc("n_patches") + 1
    for i, c in enumerate(cols):
        v = truth[c].to_numpy()
        out.insert(at + i, c, v if c != "event" else pd.array(v, dtype="Int64"))
    if unlabelled:
        mark = out["case_id"].isin(set(unlabelled))
        out.loc[mark, "note"] = [
            f"{n}; {NO_LABEL}" if n else NO_LABEL for n in out.loc[mark, "note"]
        ]
        log(f"cohort {cohort}: {len(unlabelled)} case(s) of the sheet without a label: "
            f"{', '.join(unlabelled[:10])}{' …' if len(unlabelled) > 10 else ''}")  # fmt: skip
    n_extra = len(set(labels["case_id"]) - set(table["case_id"]))
    if n_extra:
        log(f"cohort {cohort}: {n_extra} labelled case(s) have no slide in the sheet")
    return out


# --------------------------------------------------------------------------- tile tasks


def predict_tiles(
    task_spec: TaskSpec,
    models_dir: str | os.PathLike,
    model: str,
    n_runs: int | None,
    feature_files: dict[str, str | os.PathLike],
    *,
    cohort: str = "cohort",
    device: str | None = None,
    log=print,
) -> pd.DataFrame:
    """Every fold's model ``model`` of a tile task (``models_dir/{model}/fold_{k}``, k <
    ``n_runs``; None: the task's folds) on the images of an image set, from its tile feature
    file per teacher (``feature_files``: teacher → ``.h5`` of ``shazam extract-tiles``, all
    listing the same images). Returns one row per image, in the files' order: ``image_id``,
    ``case_id``, ``label`` (when the image set has labels), the ensemble (``pred`` +
    ``prob_{class}``, the mean of the folds' probabilities), each fold's
    ``prob_{class}_fold{k}``, and ``note`` (``no label``)."""
    if task_spec.family != "tile":
        raise ValueError(f"task {task_spec.name}: predict_tiles is for tile tasks")
    n_runs = n_runs or task_spec.n_folds
    rows, probs = None, []
    for k in range(n_runs):
        fm = load_fold_model(Path(models_dir) / model / f"fold_{k}", device)
        _check_same_task(fm, task_spec, model)
        rows, prob = tile_outputs(fm, feature_files, cohort)
        probs.append(prob)
    return tile_table(task_spec, rows, probs, cohort, log)


def tile_outputs(fm: FoldModel, feature_files: dict, cohort: str):
    """(the images' frame ``image_id``/``case_id``/``y``, their class probabilities under
    ``fm``): every image of the files, through the engine's evaluation path with the model's
    own standardiser."""
    from .formats import tile_classes
    from .stores import FeatureStore

    reads = f"model {fm.name} ({fm.fold_dir}) reads teachers {', '.join(fm.teachers)}"
    missing = [t for t in fm.teachers if t not in feature_files]
    if missing:
        raise ValueError(
            f"cohort {cohort}: no tile feature file of teacher(s) {', '.join(missing)} — "
            f"{reads}; extract the image set with each (shazam extract-tiles --images) and "
            "give every file as TEACHER=H5"
        )
    for t in fm.teachers:
        path = feature_files[t]
        if not os.path.exists(path):
            raise ValueError(f"cohort {cohort}: teacher {t}'s tile feature file {path} not found")
        classes = tile_classes(path)
        if classes is not None and classes != list(fm.spec.classes):
            raise ValueError(
                f"cohort {cohort}: {path} was extracted with classes {classes}, model "
                f"{fm.name} predicts {list(fm.spec.classes)} — extract it with this task's spec"
            )
    store, rows = FeatureStore.for_tiles({t: feature_files[t] for t in fm.teachers}, fm.levels)
    eng = fold_engine(fm, store, cohort)
    ids = list(rows["image_id"])
    logits = eng.predict(ids)["logits"]
    prob = torch.softmax(logits, dim=1).numpy() if ids else np.zeros((0, fm.spec.n_out))
    return rows, prob


def tile_table(spec: TaskSpec, rows: pd.DataFrame, probs, cohort: str, log) -> pd.DataFrame:
    """The image table of :func:`predict_tiles` from the images' frame and each fold's
    probabilities; the truth is the images' labels (class index -1: none)."""
    y = rows["y"].to_numpy()
    df = pd.DataFrame({"image_id": rows["image_id"], "case_id": rows["case_id"]})
    labelled = y >= 0
    if labelled.any():
        df["label"] = np.array([spec.classes[i] if i >= 0 else None for i in y], dtype=object)
    every = np.ones(len(df), dtype=bool)
    df = pd.concat([df, pd.DataFrame(class_columns(spec, every, probs))], axis=1)
    partly = labelled.any() and not labelled.all()
    df["note"] = np.where(partly & ~labelled, NO_LABEL, "")
    if partly:
        log(f"cohort {cohort}: {int((~labelled).sum())} of {len(df)} image(s) without a label")
    return df


def model_paths(template: str, models: list[str], flag: str = "--out") -> dict[str, str]:
    """Each model's output path: ``{model}`` in ``template`` replaced by the model's name.
    Several models need the placeholder (one file each); else an error naming ``flag``."""
    if len(models) > 1 and "{model}" not in template:
        raise ValueError(
            f"predict: {flag} {template} has no {{model}} but {len(models)} models are given "
            f"({', '.join(models)}) — put {{model}} in the path to write one file per model"
        )
    return {m: template.replace("{model}", m) for m in models}


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """The prediction table as TSV, atomically (full precision: what was computed)."""
    from .io import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
