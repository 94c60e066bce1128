"""Every model's outputs over the folds of a task, read from ``results/models/{task}/{model}/
fold_{k}/``, and what the report derives from them without training:

- the pooled out-of-fold predictions: every case is tested exactly once, so the test
  predictions of all folds form one prediction per case (per image for a tile task), with
  its ``fold``. Survival risks are on a different scale in each fold's model: the pooled
  estimates compare cases of one fold only (:mod:`.pooled`);
- late fusion: per fold, the average of the single teachers' class probabilities, or of their
  within-fold rank-normalised risks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..cohorts import build_cohort
from ..metrics import classification_metrics, survival_metrics
from ..models import registry
from ..splits import read_fold
from ..tasks import TaskSpec
from .stats import rank_normalise


@dataclass
class ModelRun:
    """One model's outputs over the folds of a task."""

    name: str
    predictions: list[pd.DataFrame]  # test predictions per fold
    metrics: list[dict]  # metrics.json per fold (test at top level, `val`, `reasons`)
    configs: list[dict] = field(default_factory=list)
    params: int | None = None  # trainable parameters (late fusion: its models' together)


def model_params(path: str | os.PathLike) -> int | None:
    """Trainable parameters in a ``model.safetensors`` (read from its header; the input
    standardisation saved beside the weights is not a parameter), or None without the file."""
    from safetensors import safe_open

    if not Path(path).exists():
        return None
    with safe_open(str(path), framework="np") as f:
        return int(
            sum(
                np.prod(f.get_slice(k).get_shape(), dtype=np.int64)
                for k in f.keys()
                if not k.startswith("input_scaler.")
            )
        )


def load_model_run(models_dir: str | os.PathLike, model: str, n_folds: int) -> ModelRun:
    """A model's outputs on ``n_folds`` fold files (folds × seeds under repeated runs)."""
    preds, metrics, configs = [], [], []
    for k in range(n_folds):
        d = Path(models_dir) / model / f"fold_{k}"
        for f in ("predictions.csv", "metrics.json"):
            if not (d / f).exists():
                raise ValueError(
                    f"model {model}, fold {k}: {d / f} is missing — train it first "
                    f"(snakemake {d / f}) or leave the model out of the evaluation"
                )
        preds.append(pd.read_csv(d / "predictions.csv", dtype={"case_id": str, "image_id": str}))
        metrics.append(json.loads((d / "metrics.json").read_text()))
        configs.append(
            json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        )
    params = model_params(Path(models_dir) / model / "fold_0" / "model.safetensors")
    return ModelRun(model, preds, metrics, configs, params)


def _prob_cols(spec: TaskSpec) -> list[str]:
    return [f"prob_{c}" for c in spec.classes]


def _check_predictions(run: ModelRun, spec: TaskSpec) -> None:
    need = list(dict.fromkeys(["case_id", spec.record.unit]))
    classify = spec.kind == "classification"
    need += ["label", *_prob_cols(spec)] if classify else ["time", "event", "risk"]
    for k, df in enumerate(run.predictions):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(
                f"model {run.name}, fold {k}: predictions.csv lacks column(s) "
                f"{', '.join(missing)} for a {spec.type} task — retrain the model with this "
                "version of shazam"
            )
        bad = sorted(set(df["label"].astype(str)) - set(spec.classes)) if classify else []
        if bad:
            raise ValueError(
                f"model {run.name}, fold {k}: predictions.csv has label(s) {bad} that are "
                f"not classes of task {spec.name} {list(spec.classes)}"
            )


def _class_arrays(df: pd.DataFrame, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    y = df["label"].astype(str).map({c: i for i, c in enumerate(spec.classes)}).to_numpy()
    prob = df[_prob_cols(spec)].to_numpy(dtype=float)
    return y.astype(int), prob


def prediction_arrays(df: pd.DataFrame, spec: TaskSpec, risk_col: str = "risk") -> tuple:
    """(y, prob) or (event, time, risk) as numpy arrays: resampling indexes these, not pandas."""
    if spec.kind == "classification":
        return _class_arrays(df, spec)
    return (
        df["event"].to_numpy().astype(bool),
        df["time"].to_numpy(dtype=float),
        df[risk_col].to_numpy(dtype=float),
    )


def arrays_metrics(arrays: tuple, spec: TaskSpec, idx=None, train=None, only=None):
    """The training code's metric functions on (a resample ``idx`` of) prediction arrays.
    ``train``: (event, time) of the fold's training cases (survival IPCW C and td-AUC)."""
    a = arrays if idx is None else tuple(x[idx] for x in arrays)
    if spec.kind == "classification":
        return classification_metrics(a[0], a[1], len(spec.classes), only, spec.classes)
    tr_e, tr_t = train if train is not None else (None, None)
    return survival_metrics(a[0], a[1], a[2], None, tr_e, tr_t, None, only=only)


def prediction_metrics(
    df: pd.DataFrame, spec: TaskSpec, train: tuple | None = None, only=None, risk_col="risk"
) -> tuple[dict, dict]:
    """Metrics of one prediction table (see :func:`arrays_metrics`)."""
    return arrays_metrics(prediction_arrays(df, spec, risk_col), spec, None, train, only)


def _fuse_fold(tables: list[pd.DataFrame], ids: list, spec: TaskSpec) -> pd.DataFrame:
    """One fold's late fusion of prediction tables indexed by the unit, on the rows ``ids``."""
    unit = spec.record.unit
    base = tables[0].loc[ids]
    if spec.kind == "classification":
        cols = _prob_cols(spec)
        prob = np.mean([t.loc[ids, cols].to_numpy(dtype=float) for t in tables], axis=0)
        df = pd.DataFrame({unit: ids, "label": base["label"].to_numpy()})
        df["pred"] = [spec.classes[i] for i in prob.argmax(1)]
        for i, c in enumerate(cols):
            df[c] = prob[:, i]
    else:
        risk = np.mean([rank_normalise(t.loc[ids, "risk"]) for t in tables], axis=0)
        df = pd.DataFrame(
            {
                unit: ids,
                "time": base["time"].to_numpy(),
                "event": base["event"].to_numpy(),
                "risk": risk,
            }
        )
    if unit != "case_id":
        df.insert(1, "case_id", base["case_id"].to_numpy())
    return df


def late_fusion(runs: list[ModelRun], spec: TaskSpec) -> list[pd.DataFrame]:
    """Per fold, the single teachers' average class probabilities (classification) or average
    within-fold rank-normalised risk (survival). No training."""
    if not runs:
        raise ValueError("late fusion needs at least one single-teacher model")
    fused = []
    for k in range(len(runs[0].predictions)):
        tables = [r.predictions[k].set_index(spec.record.unit) for r in runs]
        ids = sorted(tables[0].index)
        for r, t in zip(runs, tables, strict=True):
            if sorted(t.index) != ids:
                raise ValueError(
                    f"late fusion, fold {k}: {r.name} predicts other test cases than "
                    f"{runs[0].name} — were they trained on the same splits? Retrain both."
                )
        fused.append(_fuse_fold(tables, ids, spec))
    return fused


def pooled_predictions(run: ModelRun, spec: TaskSpec) -> pd.DataFrame:
    """All folds' test predictions in one table: one row per case (per image for a tile
    task) and repetition (``repeat``: fold file // folds; one per training seed), sorted,
    each row with its ``fold`` (the fold file it was tested in)."""
    parts = []
    for k, df in enumerate(run.predictions):
        df = df.copy()
        df["fold"] = k
        df["repeat"] = k // spec.n_folds
        parts.append(df)
    pooled = pd.concat(parts, ignore_index=True)
    unit = spec.record.unit
    twice = pooled[[unit, "repeat"]].duplicated()
    dup = pooled.loc[twice, unit].unique()
    if len(dup):
        what = "image(s)" if unit == "image_id" else "case(s)"
        raise ValueError(
            f"model {run.name}: {what} {', '.join(map(str, dup[:5]))} are in more than one "
            "test fold — the test folds must partition the cohort (check the split files)"
        )
    return pooled.sort_values(["repeat", unit]).reset_index(drop=True)


def fold_outcomes(spec: TaskSpec, sheet: pd.DataFrame, splits_dir, n_folds: int) -> list:
    """(event, time) of each fold's training cases (survival), else Nones."""
    if spec.kind != "survival":
        return [None] * n_folds
    cases = build_cohort(spec, sheet).cases.set_index("case_id")
    out = []
    for k in range(n_folds):
        fold = read_fold(Path(splits_dir) / f"fold_{k}.csv")
        tr = cases.loc[
            [c for c in fold.loc[fold["split"] == "train", "case_id"] if c in cases.index]
        ]
        out.append((tr["event"].to_numpy().astype(bool), tr["time"].to_numpy(dtype=float)))
    return out


# why late fusion lacks a metric, in the report's words (survival: it fuses ranks)
FUSION_REASONS = {
    "ibs": "late fusion averages ranks: it has no survival function",
    "logrank_p": "late fusion has no training-set risks for the cut-off",
}


def fused_run(singles: list[ModelRun], spec: TaskSpec, train: list) -> ModelRun:
    preds = late_fusion(singles, spec)
    params = [r.params for r in singles]
    metrics = []
    for k, df in enumerate(preds):
        m, r = prediction_metrics(df, spec, train[k])
        r.update({key: why for key, why in FUSION_REASONS.items() if key in spec.record.scalars})
        m.pop("confusion", None)
        metrics.append({**m, "val": {}, "reasons": r})
    total = None if None in params else int(sum(params))
    return ModelRun(registry.LATE_FUSION, preds, metrics, params=total)


def load_runs(
    spec: TaskSpec,
    models: list[str],
    models_dir,
    sheet: pd.DataFrame | None,
    splits_dir,
    n_runs: int | None = None,
) -> dict[str, ModelRun]:
    """Every model's run in report order; with two or more single teachers their late fusion
    follows them. ``n_runs``: fold files (folds × seeds; default one cross-validation). An
    unknown model name fails first, with the registry's list of names."""
    for m in models:
        registry.parse(m)
    n_runs = n_runs or spec.n_folds
    runs = {m: load_model_run(models_dir, m, n_runs) for m in models}
    for r in runs.values():
        _check_predictions(r, spec)
    singles = single_teachers(spec, models)
    if len(singles) < 2:
        return runs
    train = fold_outcomes(spec, sheet, splits_dir, n_runs)
    fused = fused_run([runs[m] for m in singles], spec, train)
    order = singles + [registry.LATE_FUSION] + [m for m in models if m not in singles]
    return {n: (fused if n == registry.LATE_FUSION else runs[n]) for n in order}


def single_teachers(spec: TaskSpec, models: list[str]) -> list[str]:
    """The single-teacher baselines among ``models`` (of the task's family), in their order."""
    prefix = registry.FAMILY[spec.family].single
    return [m for m in models if m.startswith(prefix)]
