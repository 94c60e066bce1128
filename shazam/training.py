"""One training engine for every slide-level model (DESIGN §5–§6).

Protocol: AdamW + cosine schedule, ``accumulate`` bags per optimiser step (run as padded
batches of ``batch_bags`` bags, not one bag at a time), bf16 autocast on CUDA and on CPUs
with native bf16 (``precision: auto``), seeded.
Every epoch is scored on val; the checkpoint with the best val metric (classification:
balanced accuracy; survival: C-index; ties → lower val loss, then the earlier epoch) is
selected, and test is evaluated once, with those weights, after training. Nothing in
training or selection reads test labels.

Models return a dict with ``logits`` and optionally ``aux_loss`` (e.g. distillation), which
the engine adds to the task loss.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__, layout
from .cohorts import build_cohort
from .io import atomic_path, write_json_atomic
from .losses import bin_index, cross_entropy, nll_survival, survival_bins, survival_from_logits
from .metrics import classification_metrics, survival_metrics
from .splits import read_fold
from .stores import BagStore
from .tasks import TaskSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-3
    accumulate: int = 8  # bags per optimiser step
    batch_bags: int = 8  # bags per forward pass (≤ accumulate)
    max_patches: int = 4096  # training-time subsampling; eval uses full bags
    seed: int = 42
    d_model: int = 128
    dropout: float = 0.25
    alpha: float = 0.4  # survival NLL weight of the uncensored term
    class_weights: str = "none"  # none | balanced
    patience: int = 0  # early stopping: epochs without a better val key (0: train all epochs)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16
    # z-score each teacher:level per dimension with the training cases' mean and SD (stored
    # with the weights); see bags.Standardizer for why
    standardize: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def for_tiles(cls, training: dict, tile_training: dict | None = None) -> TrainConfig:
        """Tile tasks: the ``training`` section with ``tile_training`` on top; its
        ``batch_size`` (images per optimiser step) sets both ``accumulate`` and ``batch_bags``."""
        d = {**training, **(tile_training or {})}
        if "batch_size" in d:
            d["accumulate"] = d["batch_bags"] = d.pop("batch_size")
        return cls.from_dict(d)


@dataclass
class Targets:
    """Per-case targets of a task: class index, or (bin, event, time) for survival."""

    spec: TaskSpec
    cases: pd.DataFrame  # indexed by case_id
    edges: np.ndarray | None = None  # survival bin edges, from training cases only

    def tensors(self, ids: list[str]) -> dict[str, torch.Tensor]:
        sub = self.cases.loc[ids]
        if self.spec.kind == "classification":
            return {"y": torch.as_tensor(sub["y"].to_numpy(), dtype=torch.long)}
        return {
            "y": torch.as_tensor(bin_index(sub["time"], self.edges), dtype=torch.long),
            "event": torch.as_tensor(sub["event"].to_numpy(), dtype=torch.bool),
        }


class Engine:
    def __init__(self, model, spec: TaskSpec, store: BagStore, targets: Targets, cfg: TrainConfig):
        from .device import autocast_dtype, select_device

        self.spec, self.store, self.targets, self.cfg = spec, store, targets, cfg
        self.device, self._lock = select_device(cfg.device)
        self.amp = autocast_dtype(cfg.precision, self.device, cpu_bf16=True)
        self.standardizer = None
        self._prepared = False
        self.model = model.to(self.device)
        self.class_weight = None
        self._train_risk: tuple[tuple, np.ndarray] | None = None  # (train ids, risks) cache

    def prepare(self, train_ids: list[str]) -> None:
        """Once, before any batch: standardise the store with the training items' statistics
        (``cfg.standardize``), then convert it to bfloat16 when computing in bf16 (16-bit
        either way: converted once, not every batch; after z-scoring, so the offset that
        standardisation removes does not eat bf16's 8-bit mantissa)."""
        if self._prepared:
            return
        if self.cfg.standardize:
            from .stores import standardize_store

            self.standardizer = standardize_store(self.store, train_ids)
        if self.amp == torch.bfloat16:
            self.store.to_dtype(torch.bfloat16)
        self._prepared = True

    # -- one batch
    def _forward(self, ids, train: bool, rng=None):
        if not self._prepared:
            raise RuntimeError("Engine.prepare(train_ids) (or fit) must run before any batch")
        feats, mask = self.store.batch(
            ids, self.cfg.max_patches if train else None, rng, self.device,
            dtype=self.amp or torch.float32, reuse=train,
        )  # fmt: skip
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.model(feats, mask)
        return out

    def _loss(self, out, ids):
        t = {k: v.to(self.device) for k, v in self.targets.tensors(ids).items()}
        if self.spec.kind == "classification":
            loss = cross_entropy(out["logits"], t["y"], self.class_weight)
        else:
            loss = nll_survival(out["logits"], t["y"], t["event"], self.cfg.alpha)
        if "aux_loss" in out:
            loss = loss + out["aux_loss"]
        return loss

    # -- training
    def fit(self, train_ids: list[str], val_ids: list[str], log=print):
        cfg = self.cfg
        self.prepare(train_ids)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if self.spec.kind == "classification" and cfg.class_weights == "balanced":
            y = self.targets.cases.loc[train_ids, "y"].to_numpy()
            counts = np.bincount(y, minlength=len(self.spec.classes)).astype(float)
            w = len(y) / (len(counts) * np.maximum(counts, 1))
            self.class_weight = torch.as_tensor(w, dtype=torch.float32, device=self.device)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train_ids) / cfg.accumulate)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
        history, best, best_state = [], None, None
        for epoch in range(cfg.epochs):
            self.model.train()
            t0 = time.perf_counter()
            order = [train_ids[i] for i in rng.permutation(len(train_ids))]
            total, n_seen = 0.0, 0
            for s in range(0, len(order), cfg.accumulate):
                group = order[s : s + cfg.accumulate]
                opt.zero_grad(set_to_none=True)
                for m in range(0, len(group), cfg.batch_bags):
                    ids = group[m : m + cfg.batch_bags]
                    loss = self._loss(self._forward(ids, True, rng), ids)
                    (loss * len(ids) / len(group)).backward()
                    total += float(loss.detach()) * len(ids)
                    n_seen += len(ids)
                opt.step()
                sched.step()
            val = self.evaluate(val_ids)
            key = self._selection_key(val)
            row = {
                "epoch": epoch,
                "lr": sched.get_last_lr()[0],
                "train_loss": total / max(n_seen, 1),
                "val_loss": val["loss"],
                f"val_{self.metric_name}": val["metrics"].get(self.metric_name),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(row)
            log(json.dumps(row))
            if best is None or key > best[0]:
                best = (key, epoch)
                best_state = copy.deepcopy(self.model.state_dict())
            elif cfg.patience and epoch - best[1] >= cfg.patience:
                log(json.dumps({"early_stop": epoch, "best_epoch": best[1]}))
                break
        self.model.load_state_dict(best_state)
        self._train_risk = None
        return history, best[1]

    @property
    def metric_name(self) -> str:
        return self.spec.primary_metric

    def _selection_key(self, val):
        m = val["metrics"].get(self.metric_name)
        return (-math.inf if m is None else m, -val["loss"])

    # -- evaluation
    def train_risk(self, train_ids: list[str]) -> np.ndarray:
        """Risks of the training cases under the current weights (the log-rank cut-off),
        computed once per fitted model and shared by the val and test evaluations."""
        key = tuple(train_ids)
        if self._train_risk is None or self._train_risk[0] != key:
            _, _, risk = survival_from_logits(self.predict(train_ids)["logits"])
            self._train_risk = (key, risk.numpy())
        return self._train_risk[1]

    @torch.no_grad()
    def predict(self, ids: list[str]) -> dict:
        self.model.eval()
        order = sorted(ids, key=self.store.size)  # similar sizes together: less padding
        logits, losses, gates = {}, [], {}
        for s in range(0, len(order), self.cfg.batch_bags):
            chunk = order[s : s + self.cfg.batch_bags]
            out = self._forward(chunk, False)
            losses.append(float(self._loss(out, chunk)) * len(chunk))
            for i, c in enumerate(chunk):
                logits[c] = out["logits"][i].float().cpu()
                if "gate" in out:
                    gates[c] = out["gate"][i].float().cpu()
        lg = torch.stack([logits[c] for c in ids]) if ids else torch.zeros(0)
        return {"logits": lg, "loss": sum(losses) / max(len(ids), 1), "gate": gates}

    def evaluate(self, ids: list[str], train_ids: list[str] | None = None) -> dict:
        p = self.predict(ids)
        cases = self.targets.cases.loc[ids]
        if self.spec.kind == "classification":
            prob = torch.softmax(p["logits"], dim=1).numpy()
            m, r = classification_metrics(cases["y"].to_numpy(), prob, len(self.spec.classes))
            return {"loss": p["loss"], "metrics": m, "reasons": r, "prob": prob, "gate": p["gate"]}
        h, s, risk = (x.numpy() for x in survival_from_logits(p["logits"]))
        tr = self.targets.cases.loc[train_ids] if train_ids else None
        train_risk = self.train_risk(train_ids) if train_ids else None
        edges = self.targets.edges

        def surv_fn(times):
            # step survival function: S(t) = S after the last bin that ends at or before t
            k = np.searchsorted(edges[1:-1], times, side="right")
            s_pad = np.concatenate([np.ones((len(s), 1)), s], axis=1)
            return s_pad[:, k]

        m, r = survival_metrics(
            cases["event"].to_numpy(),
            cases["time"].to_numpy(),
            risk,
            surv_fn,
            None if tr is None else tr["event"].to_numpy(),
            None if tr is None else tr["time"].to_numpy(),
            train_risk,
        )
        if tr is None:  # val during training: metrics needing training data are not computed
            for k in ("c_index_ipcw", "ibs", "td_auc_mean", "logrank_p"):
                m.pop(k, None)
                r.pop(k, None)
        return {"loss": p["loss"], "metrics": m, "reasons": r, "hazards": h, "surv": s,
                "risk": risk, "gate": p["gate"]}  # fmt: skip


# --------------------------------------------------------------------------- one fold


def train_fold(
    model_name: str,
    spec: TaskSpec,
    fold_csv: str | os.PathLike,
    sheet: pd.DataFrame,
    teachers: list[str],
    out_dir: str | os.PathLike,
    cfg: TrainConfig = TrainConfig(),
    features_root: str | os.PathLike = "results",
    labels: pd.DataFrame | None = None,
    log=print,
    shazam_cfg: dict | None = None,
) -> dict:
    """Train one model on one fold and write DESIGN §3.5 outputs atomically.

    ``model_name``: ``abmil-{teacher}``, ``concat``, or ``shazam`` / an ablation
    (``shazam_cfg`` = the config's ``shazam`` section)."""
    from .models import registry

    t0 = time.perf_counter()
    cohort = build_cohort(spec, sheet, labels)
    fold = read_fold(fold_csv)
    split = dict(zip(fold["case_id"], fold["split"], strict=True))
    ids = {
        sp: sorted(c for c in cohort.cases["case_id"] if split.get(c) == sp)
        for sp in ("train", "val", "test")
    }
    for sp, v in ids.items():
        if not v:
            raise ValueError(f"fold file {fold_csv}: no {sp} cases of task {spec.name}")
    cases = cohort.cases.set_index("case_id")
    edges = None
    if spec.type == "survival":
        tr = cases.loc[ids["train"]]
        edges = survival_bins(tr["time"], tr["event"], spec.n_bins)
    targets = Targets(spec, cases, edges)
    name = registry.parse(model_name)
    used = name.teachers(teachers)
    settings = None
    levels = ["high"]
    if name.role == "student":
        s = name.settings(shazam_cfg)
        levels = list(s.levels)
        settings = {k: v for k, v in s.as_dict().items() if k != "d_model"}  # as recorded
    all_ids = [c for v in ids.values() for c in v]
    store = BagStore(sheet, used, all_ids, levels=levels, root=features_root)
    torch.manual_seed(cfg.seed)
    model = registry.build(
        model_name, store.dims, spec.n_out, teachers, cfg.d_model, cfg.dropout, shazam_cfg
    )
    meta = {"teachers": used, "shazam": settings,
            "bins": None if edges is None else [float(e) for e in edges]}  # fmt: skip
    return fit_and_write(
        model, model_name, spec, store, targets, ids, cfg, out_dir, fold_csv, meta, log, t0
    )


def fit_and_write(
    model, model_name, spec, store, targets, ids, cfg, out_dir, fold_csv, meta, log, t0
) -> dict:
    """Fit with val-only selection, evaluate val and then test once, and write the DESIGN §3.5
    outputs atomically. ``ids``: train/val/test item ids (cases, or images of a tile task)."""
    eng = Engine(model, spec, store, targets, cfg)
    history, best_epoch = eng.fit(ids["train"], ids["val"], log=log)
    val = eng.evaluate(ids["val"], ids["train"])
    test = eng.evaluate(ids["test"], ids["train"])  # the only time test is touched

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    with atomic_path(out / "model.safetensors") as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in eng.model.state_dict().items()}
        if eng.standardizer is not None:  # the input transform travels with the weights
            tensors.update(eng.standardizer.tensors())
        save_file(tensors, str(tmp))
    n_out = spec.n_out
    write_json_atomic(
        out / "config.json",
        {
            "model": model_name,
            "task": json.loads(spec.to_json()),
            **meta,
            "dims": store.dims,
            "n_out": n_out,
            "train": asdict(cfg),
            "n_cases": {k: len(v) for k, v in ids.items()},
            "fold_csv": os.fspath(fold_csv),
            "selected_epoch": best_epoch,
            "epochs_run": len(history),
            "device": str(eng.device),
            "shazam_version": __version__,
        },
    )
    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    cases = targets.cases
    with atomic_path(out / "predictions.csv") as tmp:
        _predictions(spec, cases.loc[ids["test"]], test, ids["test"]).to_csv(tmp, index=False)
    metrics = {**test["metrics"], "val": val["metrics"], "selected_epoch": best_epoch,
               "reasons": {**test["reasons"], **{f"val.{k}": v for k, v in val["reasons"].items()}},
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if test.get("gate"):  # the student's mean gate weight per teacher on the test set
        mean = torch.stack(list(test["gate"].values())).mean(0).tolist()
        metrics["gate_mean"] = dict(zip(meta["teachers"], mean, strict=True))
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def train_tile_fold(
    model_name: str,
    spec: TaskSpec,
    fold_csv: str | os.PathLike,
    teachers: list[str],
    out_dir: str | os.PathLike,
    cfg: TrainConfig = TrainConfig(),
    features_root: str | os.PathLike = "results",
    log=print,
    shazam_cfg: dict | None = None,
) -> dict:
    """Train one tile-level model (``mlp-{teacher}``, ``concat-mlp``, ``shazam-v1[-nodistill]``)
    on one fold of a tile task, with the same engine and outputs as slide models. Folds are
    case-level; the engine's items are the cases' images. Features come from
    ``{features_root}/tile_features/{task}/{teacher}.h5``."""
    from .models import registry
    from .stores import TileStore

    t0 = time.perf_counter()
    name = registry.parse(model_name)
    used = name.teachers(teachers)
    files = {
        t: layout.at(layout.TILE_FEATURES, features_root, task=spec.name, teacher=t) for t in used
    }
    store, rows = TileStore.from_files(files)
    fold = read_fold(fold_csv)
    split = dict(zip(fold["case_id"], fold["split"], strict=True))
    unknown = sorted(set(rows["case_id"]) - set(split))
    if unknown:
        raise ValueError(
            f"fold file {fold_csv}: {len(unknown)} case(s) of the features are not in it, e.g. "
            f"{', '.join(unknown[:3])}; rerun the task's splits"
        )
    rows["split"] = rows["case_id"].map(split)
    ids = {sp: list(rows.loc[rows["split"] == sp, "image_id"]) for sp in ("train", "val", "test")}
    for sp, v in ids.items():
        if not v:
            raise ValueError(f"fold file {fold_csv}: no {sp} images of task {spec.name}")
    rows["label"] = [spec.classes[i] for i in rows["y"]]
    targets = Targets(spec, rows.set_index("image_id"))
    torch.manual_seed(cfg.seed)
    model = registry.build(
        model_name, store.dims, spec.n_out, teachers, cfg.d_model, cfg.dropout, shazam_cfg
    )
    meta = {
        "teachers": used,
        "shazam": shazam_cfg if name.role == "student" else None,
        "n_case_ids": {sp: int(rows.loc[rows["split"] == sp, "case_id"].nunique()) for sp in ids},
    }
    return fit_and_write(
        model, model_name, spec, store, targets, ids, cfg, out_dir, fold_csv, meta, log, t0
    )


def _predictions(spec: TaskSpec, cases: pd.DataFrame, res: dict, ids: list[str]) -> pd.DataFrame:
    if spec.is_tile:  # one row per test image
        df = pd.DataFrame({"image_id": ids, "case_id": cases["case_id"].to_numpy()})
    else:
        df = pd.DataFrame({"case_id": ids})
    if spec.kind == "classification":
        df["label"] = cases["label"].to_numpy()
        df["pred"] = [spec.classes[i] for i in res["prob"].argmax(1)]
        for i, c in enumerate(spec.classes):
            df[f"prob_{c}"] = res["prob"][:, i]
    else:
        df["time"] = cases["time"].to_numpy()
        df["event"] = cases["event"].astype(int).to_numpy()
        df["risk"] = res["risk"]
        for k in range(res["hazards"].shape[1]):
            df[f"hazard_{k}"] = res["hazards"][:, k]
        for k in range(res["surv"].shape[1]):
            df[f"surv_{k}"] = res["surv"][:, k]
    return df
