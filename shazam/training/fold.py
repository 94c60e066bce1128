"""Train one model on one fold of any task and write its outputs (DESIGN §3.5).

A training session is a few small steps (eva's ``run_evaluation_session → run_evaluation →
fit_and_validate``):

* :func:`train_fold` — the one entry, for every kind of task;
* :func:`fold_items` — the fold's feature store, targets and train/val/test item ids, from the
  task kind's own function (:func:`slide_items`: cases of the slide sheet, one bag each;
  :func:`tile_items`: the images of the fold's cases);
* :func:`fit_and_evaluate` — fit with val-only selection, then evaluate val and test once;
* :func:`write_outputs` — ``model.safetensors``, ``config.json``, ``history.csv``,
  ``predictions.csv`` and ``metrics.json``, each written atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from .. import __version__, layout
from ..cohorts import build_cohort
from ..io import atomic_path, write_json_atomic
from ..losses import survival_bins
from ..splits import read_fold
from ..stores import FeatureStore
from ..tasks import TaskSpec
from .engine import Engine, Targets, TrainConfig

SPLITS = ("train", "val", "test")


@dataclass
class FoldItems:
    """What one fold trains and is scored on."""

    store: FeatureStore
    targets: Targets
    ids: dict[str, list[str]]  # train / val / test item ids (cases, or images of a tile task)
    meta: dict  # what config.json records about them: teachers, shazam, then the kind's own


def train_fold(
    model_name: str,
    spec: TaskSpec,
    fold_csv: str | os.PathLike,
    sheet: pd.DataFrame | None,
    teachers: list[str],
    out_dir: str | os.PathLike,
    cfg: TrainConfig | None = None,
    features_root: str | os.PathLike = "results",
    labels: pd.DataFrame | None = None,
    log=print,
    shazam_cfg: dict | None = None,
) -> dict:
    """Train one model on one fold of any task and write its outputs atomically; returns the
    metrics written to ``metrics.json``.

    ``model_name``: a name of the task's family (:mod:`shazam.models.registry`: ``abmil-…``,
    ``concat``, ``shazam[-…]`` for slide tasks; ``mlp-…``, ``concat-mlp``, ``shazam-v1[-…]``
    for tile tasks); ``sheet``: the slide sheet (slide tasks; None for a tile task);
    ``labels``: a slide task's labels when not read from its label file; ``shazam_cfg``: the
    config's ``shazam`` section; ``cfg``: :class:`TrainConfig` (None: its defaults). Features
    are read under ``features_root`` (:mod:`shazam.layout`)."""
    from ..models import registry

    t0 = time.perf_counter()
    cfg = TrainConfig() if cfg is None else cfg
    items = fold_items(
        spec, model_name, teachers, fold_csv, sheet=sheet, labels=labels, root=features_root,
        shazam_cfg=shazam_cfg,
    )  # fmt: skip
    log(items.store.cache(cfg.cache))
    torch.manual_seed(cfg.seed)
    model = registry.build(
        model_name, items.store.dims, spec.n_out, teachers, cfg.d_model, cfg.dropout, shazam_cfg
    )
    return run_session(model, model_name, spec, items, cfg, out_dir, fold_csv, log, t0)


# --------------------------------------------------------------------------- a fold's items


def fold_items(
    spec: TaskSpec,
    model_name: str,
    teachers: list[str],
    fold_csv: str | os.PathLike,
    sheet: pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    root: str | os.PathLike = "results",
    shazam_cfg: dict | None = None,
) -> FoldItems:
    """The store, targets and train/val/test ids of one fold, for the teachers
    ``model_name`` reads out of the run's ``teachers``."""
    items = {"slide": slide_items, "tile": tile_items}[spec.family]
    return items(spec, model_name, teachers, fold_csv, sheet, labels, root, shazam_cfg)


def slide_items(spec, model_name, teachers, fold_csv, sheet, labels, root, shazam_cfg):
    """Slide tasks: the cohort's cases (labels ∩ sheet) of the fold, one bag each; survival
    bins from the training cases. The student reads its configured levels."""
    from ..models import registry

    cohort = build_cohort(spec, sheet, labels)
    split = _fold_split(fold_csv)
    ids = {sp: sorted(c for c in cohort.cases["case_id"] if split.get(c) == sp) for sp in SPLITS}
    _check_splits(ids, fold_csv, spec, "cases")
    cases = cohort.cases.set_index("case_id")
    edges = None
    if spec.type == "survival":
        tr = cases.loc[ids["train"]]
        edges = survival_bins(tr["time"], tr["event"], spec.n_bins)
    name = registry.parse(model_name)
    used = name.teachers(teachers)
    settings, levels = None, ["high"]
    all_ids = [c for v in ids.values() for c in v]
    if name.role == "student":
        s = name.settings(shazam_cfg)
        levels = student_levels(list(s.levels), used, sheet, all_ids, root)
        settings = {k: v for k, v in s.as_dict().items() if k != "d_model"}  # as recorded
        settings["levels"] = levels
    store, _ = FeatureStore.for_task(spec, used, root, levels, sheet, all_ids)
    ids, empty = drop_empty(ids, store)
    _check_splits(ids, fold_csv, spec, "cases with patches")
    meta = {"teachers": used, "shazam": settings,
            "bins": None if edges is None else [float(e) for e in edges],
            "no_patches": empty}  # fmt: skip
    return FoldItems(store, Targets(spec, cases, edges), ids, meta)


def student_levels(configured, teachers, sheet, cases, root) -> list[str]:
    """The student's levels: the configured ones that every teacher's files have. An imported
    teacher (TRIDENT, CLAM) has its one embedding, the high level; a student over it and an
    extracted teacher then reads the high level of both (a line in the log says so; the
    model's config.json records the levels used). Probed on the first slide of ``cases``."""
    from ..formats import levels_in

    wanted = set(cases)
    sid = next(
        (s for c, s in zip(sheet["case_id"], sheet["slide_id"], strict=True) if c in wanted), None
    )
    if sid is None:
        return configured
    have = {t: levels_in(layout.at(layout.FEATURES, root, teacher=t, slide=sid)) for t in teachers}
    levels = [lv for lv in configured if all(h is None or lv in h for h in have.values())]
    if levels != configured:
        short = {t: sorted(h) for t, h in have.items() if h is not None and set(configured) - h}
        if not levels:
            raise ValueError(
                f"shazam.levels {configured}: no level that every teacher has ({short}); "
                "add `high` (every feature file has it)"
            )
        print(f"student levels: {levels} of the configured {configured}, the levels every "
              f"teacher has (teachers with fewer: {short})")  # fmt: skip
    return levels


def drop_empty(ids: dict[str, list[str]], store: FeatureStore):
    """(the ids with patches, {split: ids without}). A case none of whose slides has a patch
    (every slide skipped as unreadable, or without tissue) has nothing a model could look at:
    it is left out of training, selection and the test metrics of every model alike, and
    listed (``metrics.json`` ``no_patches``; the report names it) instead of being scored on
    a constant prediction."""
    empty = {sp: [i for i in v if store.size(i) == 0] for sp, v in ids.items()}
    kept = {sp: [i for i in v if store.size(i) > 0] for sp, v in ids.items()}
    return kept, {sp: v for sp, v in empty.items() if v}


def tile_items(spec, model_name, teachers, fold_csv, sheet, labels, root, shazam_cfg):
    """Tile tasks: the images of the fold's cases (folds are case-level), from the task's tile
    feature files; the config records the ``shazam`` section as given."""
    from ..models import registry

    name = registry.parse(model_name)
    used = name.teachers(teachers)
    store, rows = FeatureStore.for_task(spec, used, root)
    if (rows["y"] < 0).any():  # an image set extracted for prediction has no truth to fit
        path = layout.at(layout.TILE_FEATURES, root, task=spec.name, teacher=used[0])
        raise ValueError(
            f"task {spec.name}: {path} holds unlabelled images (an image set extracted with "
            "--images, for prediction); training reads the task's own extraction — rerun it"
        )
    split = _fold_split(fold_csv)
    unknown = sorted(set(rows["case_id"]) - set(split))
    if unknown:
        raise ValueError(
            f"fold file {fold_csv}: {len(unknown)} case(s) of the features are not in it, e.g. "
            f"{', '.join(unknown[:3])}; rerun the task's splits"
        )
    rows["split"] = rows["case_id"].map(split)
    ids = {sp: list(rows.loc[rows["split"] == sp, "image_id"]) for sp in SPLITS}
    _check_splits(ids, fold_csv, spec, "images")
    rows["label"] = [spec.classes[i] for i in rows["y"]]
    meta = {
        "teachers": used,
        "shazam": shazam_cfg if name.role == "student" else None,
        "n_case_ids": {sp: int(rows.loc[rows["split"] == sp, "case_id"].nunique()) for sp in ids},
    }
    return FoldItems(store, Targets(spec, rows.set_index("image_id")), ids, meta)


def _fold_split(fold_csv) -> dict[str, str]:
    """{case_id: train | val | test} of a fold file."""
    fold = read_fold(fold_csv)
    return dict(zip(fold["case_id"], fold["split"], strict=True))


def _check_splits(ids: dict[str, list[str]], fold_csv, spec: TaskSpec, what: str) -> None:
    for sp, v in ids.items():
        if not v:
            raise ValueError(f"fold file {fold_csv}: no {sp} {what} of task {spec.name}")


# --------------------------------------------------------------------------- the session


def run_session(model, model_name, spec, items, cfg, out_dir, fold_csv, log, t0) -> dict:
    """Fit and evaluate ``model`` on the fold's items, then write every output; returns the
    metrics. ``t0``: when the fold's work began (``metrics.json``'s ``seconds``)."""
    eng = Engine(model, spec, items.store, items.targets, cfg)
    fitted = fit_and_evaluate(eng, items.ids, log)
    return write_outputs(Path(out_dir), eng, model_name, items, fitted, fold_csv, t0)


@dataclass
class Fitted:
    history: list[dict]
    best_epoch: int
    val: dict  # Engine.evaluate of val with the selected weights
    test: dict  # … and of test: the only time test is touched


def fit_and_evaluate(eng: Engine, ids: dict[str, list[str]], log=print) -> Fitted:
    """Fit with val-only selection, then evaluate val and test once, with those weights."""
    history, best_epoch = eng.fit(ids["train"], ids["val"], log=log)
    val = eng.evaluate(ids["val"], ids["train"])
    test = eng.evaluate(ids["test"], ids["train"])  # the only time test is touched
    return Fitted(history, best_epoch, val, test)


def write_outputs(out: Path, eng, model_name, items, fitted, fold_csv, t0) -> dict:
    """The DESIGN §3.5 files of one trained model, each atomically; returns the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out / "model.safetensors", eng)
    write_json_atomic(out / "config.json", config_record(eng, model_name, items, fitted, fold_csv))
    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(fitted.history).to_csv(tmp, index=False)
    test_ids = items.ids["test"]
    with atomic_path(out / "predictions.csv") as tmp:
        rows = items.targets.cases.loc[test_ids]
        predictions(eng.spec, rows, fitted.test, test_ids).to_csv(tmp, index=False)
    metrics = metrics_record(fitted, items.meta["teachers"], t0, items.meta.get("no_patches"))
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def write_weights(path: Path, eng: Engine) -> None:
    """The model's state dict, and the input standardisation that travels with it."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in eng.model.state_dict().items()}
        if eng.standardizer is not None:  # the input transform travels with the weights
            tensors.update(eng.standardizer.tensors())
        save_file(tensors, str(tmp))


def config_record(eng: Engine, model_name, items: FoldItems, fitted: Fitted, fold_csv) -> dict:
    """``config.json``: what was trained, on what, how (keys in this order)."""
    return {
        "model": model_name,
        "task": json.loads(eng.spec.to_json()),
        **items.meta,
        "dims": items.store.dims,
        "n_out": eng.spec.n_out,
        "train": asdict(eng.cfg),
        "n_cases": {k: len(v) for k, v in items.ids.items()},
        "fold_csv": os.fspath(fold_csv),
        "selected_epoch": fitted.best_epoch,
        "epochs_run": len(fitted.history),
        "device": str(eng.device),
        "shazam_version": __version__,
    }


def metrics_record(
    fitted: Fitted, teachers: list[str], t0: float, no_patches: dict | None = None
) -> dict:
    """``metrics.json``: test metrics, val's, the selected epoch, why any metric is missing,
    the fold's seconds, and the student's mean gate weight per teacher on test."""
    test, val = fitted.test, fitted.val
    metrics = {**test["metrics"], "val": val["metrics"], "selected_epoch": fitted.best_epoch,
               "reasons": {**test["reasons"], **{f"val.{k}": v for k, v in val["reasons"].items()}},
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if no_patches:
        metrics["no_patches"] = no_patches
    if test.get("gate"):  # the student's mean gate weight per teacher on the test set
        mean = torch.stack(list(test["gate"].values())).mean(0).tolist()
        metrics["gate_mean"] = dict(zip(teachers, mean, strict=True))
    return metrics


def predictions(spec: TaskSpec, rows: pd.DataFrame, res: dict, ids: list[str]) -> pd.DataFrame:
    """One row per test item (``spec.record.unit``; an image also names its case): the truth
    and the prediction (class probabilities; or risk, hazards and survival per bin)."""
    df = pd.DataFrame({spec.record.unit: ids})
    if spec.record.unit != "case_id":
        df["case_id"] = rows["case_id"].to_numpy()
    if spec.kind == "classification":
        df["label"] = rows["label"].to_numpy()
        df["pred"] = [spec.classes[i] for i in res["prob"].argmax(1)]
        for i, c in enumerate(spec.classes):
            df[f"prob_{c}"] = res["prob"][:, i]
    else:
        df["time"] = rows["time"].to_numpy()
        df["event"] = rows["event"].astype(int).to_numpy()
        df["risk"] = res["risk"]
        for k in range(res["hazards"].shape[1]):
            df[f"hazard_{k}"] = res["hazards"][:, k]
        for k in range(res["surv"].shape[1]):
            df[f"surv_{k}"] = res["surv"][:, k]
    return df
