"""The one training engine for every model, slide or tile (DESIGN §5–§6).

Protocol: AdamW + cosine schedule, ``accumulate`` bags per optimiser step (run as padded
batches of ``batch_bags`` bags, not one bag at a time), bf16 autocast on CUDA and on CPUs
with native bf16 (``precision: auto``), seeded.
Every epoch is scored on val; the checkpoint with the best val metric (classification:
balanced accuracy; survival: C-index; ties → lower val loss, then the earlier epoch) is
selected, and test is evaluated once, with those weights, after training. Nothing in
training or selection reads test labels.

Models return a dict with ``logits`` and optionally ``aux_loss`` (e.g. distillation), which
the engine adds to the task loss. The engine reads any :class:`~shazam.stores.FeatureStore`:
a tile task's image is a bag of one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..losses import bin_index, cross_entropy, nll_survival, survival_from_logits
from ..metrics import classification_metrics, survival_metrics
from ..stores import FeatureStore
from ..tasks import TaskSpec


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
    # with the weights); see stores.Standardizer for why
    standardize: bool = True
    # where the features are read from: auto | memory | disk (stores.FeatureStore.cache); it
    # changes no result, only memory and speed
    cache: str = "auto"

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def for_task(
        cls, spec: TaskSpec, training: dict, tile_training: dict | None = None
    ) -> TrainConfig:
        """A task's config: the ``training`` section; a tile task's has ``tile_training`` on
        top, whose ``batch_size`` (images per optimiser step) sets both ``accumulate`` and
        ``batch_bags``."""
        if spec.family != "tile":
            return cls.from_dict(training)
        d = {**training, **(tile_training or {})}
        if "batch_size" in d:
            d["accumulate"] = d["batch_bags"] = d.pop("batch_size")
        return cls.from_dict(d)


@dataclass
class Targets:
    """Per-item targets of a task: class index, or (bin, event, time) for survival."""

    spec: TaskSpec
    cases: pd.DataFrame  # indexed by the item id (spec.record.unit: case_id or image_id)
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
    def __init__(
        self, model, spec: TaskSpec, store: FeatureStore, targets: Targets | None, cfg: TrainConfig
    ):
        from ..device import autocast_dtype, select_device

        self.spec, self.store, self.targets, self.cfg = spec, store, targets, cfg
        self.device, self._lock = select_device(cfg.device)
        self.amp = autocast_dtype(cfg.precision, self.device, cpu_bf16=True)
        self.standardizer = None
        self._prepared = False
        self.model = model.to(self.device)
        self.class_weight = None
        self._train_risk: tuple[tuple, np.ndarray] | None = None  # (train ids, risks) cache

    def prepare(self, train_ids: list[str]) -> None:
        """Once, before any batch: fit the standardisation on the training items' rows
        (``cfg.standardize``); the store then applies it to every batch it gathers (or, held in
        memory, once to every row: :meth:`~shazam.stores.FeatureStore.prepare`), in float32,
        before the rows take the engine's dtype (so the offset that standardisation removes
        does not eat bf16's 8-bit mantissa)."""
        if self._prepared:
            return
        if self.cfg.standardize:
            from ..stores import standardize_store

            self.standardizer = standardize_store(self.store, train_ids)
        self.store.prepare(self.dtype)  # a store in memory: transformed once, not per batch
        self._prepared = True

    def use_inputs(self, standardizer) -> None:
        """Prediction with a trained model: its own saved input transform (``input_scaler.*``
        of ``model.safetensors``, or None when it was trained without one) instead of
        :meth:`prepare`'s fit; batches then go through the same path as in training."""
        if self._prepared or self.store.standardizer is not None:
            raise RuntimeError("this engine's store already has its input transform")
        self.standardizer = self.store.standardizer = standardizer
        self.store.prepare(self.dtype)
        self._prepared = True

    # -- batches
    @property
    def dtype(self) -> torch.dtype:
        """The dtype batches are delivered in: the autocast dtype, else float32."""
        return self.amp or torch.float32

    def _run(self, feats, mask):
        if not self._prepared:
            raise RuntimeError("Engine.prepare(train_ids) (or fit) must run before any batch")
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(feats, mask)

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
        """Train ``cfg.epochs`` epochs (or until ``patience``), scoring val after each; load
        the best val epoch's weights. Returns (history rows, selected epoch)."""
        cfg = self.cfg
        self.prepare(train_ids)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.class_weight = self._class_weight(train_ids)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train_ids) / cfg.accumulate)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
        history, best, best_state = [], None, None
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            train_loss = self._train_epoch(train_ids, opt, sched, rng)
            val = self.evaluate(val_ids, only=(self.metric_name,))  # what selection reads
            key = self._selection_key(val)
            row = {
                "epoch": epoch,
                "lr": sched.get_last_lr()[0],
                "train_loss": train_loss,
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

    def _class_weight(self, train_ids: list[str]) -> torch.Tensor | None:
        """``class_weights: balanced``: inverse class frequencies of the training items."""
        if self.spec.kind != "classification" or self.cfg.class_weights != "balanced":
            return None
        y = self.targets.cases.loc[train_ids, "y"].to_numpy()
        counts = np.bincount(y, minlength=len(self.spec.classes)).astype(float)
        w = len(y) / (len(counts) * np.maximum(counts, 1))
        return torch.as_tensor(w, dtype=torch.float32, device=self.device)

    def _train_epoch(self, train_ids: list[str], opt, sched, rng) -> float:
        """One pass over the training items in a random order, ``accumulate`` items per
        optimiser step run as batches of ``batch_bags``; returns the mean training loss. The
        epoch's rows are drawn first (the same draws, in the same order, as batch by batch),
        then each batch is read in the background while the model trains on the one before."""
        cfg = self.cfg
        self.model.train()
        order = [train_ids[i] for i in rng.permutation(len(train_ids))]
        steps = [order[s : s + cfg.accumulate] for s in range(0, len(order), cfg.accumulate)]
        plan = [
            (ids, self.store.draw(ids, cfg.max_patches, rng))
            for group in steps
            for ids in (group[m : m + cfg.batch_bags] for m in range(0, len(group), cfg.batch_bags))
        ]
        batches = iter(self.store.batches(plan, self.device, self.dtype))
        total, n_seen, b = 0.0, 0, 0
        for group in steps:
            opt.zero_grad(set_to_none=True)
            for _ in range(0, len(group), cfg.batch_bags):
                ids = plan[b][0]
                b += 1
                loss = self._loss(self._run(*next(batches)), ids)
                (loss * len(ids) / len(group)).backward()
                total += float(loss.detach()) * len(ids)
                n_seen += len(ids)
            opt.step()
            sched.step()
        return total / max(n_seen, 1)

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

    @property
    def eval_rows(self) -> int:
        """Rows per evaluation batch: as many as a training batch holds (``batch_bags`` ×
        ``max_patches``), so evaluation needs no more memory than training."""
        return self.cfg.batch_bags * self.cfg.max_patches

    def _eval_batches(self, ids: list[str]) -> tuple[list[list[str]], list[str]]:
        """(batches of whole bags, similar sizes together — less padding — each at most
        ``batch_bags`` bags and ``eval_rows`` rows; the bags larger than ``eval_rows``, which
        a model with ``forward_chunks`` reads in chunks)."""
        budget, chunked = self.eval_rows, hasattr(self.model, "forward_chunks")
        batches, large, rows = [], [], 0
        for c in sorted(ids, key=self.store.size):
            n = self.store.size(c)
            if chunked and n > budget:
                large.append(c)
            elif batches and len(batches[-1]) < self.cfg.batch_bags and rows + n <= budget:
                batches[-1].append(c)
                rows += n
            else:
                batches.append([c])
                rows = n
        return batches, large

    @torch.no_grad()
    def predict(self, ids: list[str]) -> dict:
        """Logits (in ``ids`` order), the mean loss and the student's gate weights, batch by
        batch (read in the background); a bag larger than a batch goes through the model in
        chunks (a streaming softmax: its activations are never all in memory)."""
        self.model.eval()
        logits, losses, gates = {}, [], {}
        for chunk, out in self._outputs(ids):
            if self.targets is not None:  # None: prediction on unlabelled cases
                losses.append(float(self._loss(out, chunk)) * len(chunk))
            for i, c in enumerate(chunk):
                logits[c] = out["logits"][i].float().cpu()
                if "gate" in out:
                    gates[c] = out["gate"][i].float().cpu()
        lg = torch.stack([logits[c] for c in ids]) if ids else torch.zeros(0)
        loss = sum(losses) / max(len(ids), 1) if self.targets is not None else None
        return {"logits": lg, "loss": loss, "gate": gates}

    def _outputs(self, ids: list[str]):
        """(bag ids, the model's output) per evaluation batch, then per large bag."""
        batches, large = self._eval_batches(ids)
        plan = [(chunk, [None] * len(chunk)) for chunk in batches]
        read = self.store.batches(plan, self.device, self.dtype)
        for chunk, b in zip(batches, read, strict=True):
            yield chunk, self._run(*b)
        for c in large:
            yield [c], self._stream(c)

    def _stream(self, item: str) -> dict:
        """The model's output for one large bag, read and run ``eval_rows`` rows at a time."""
        chunks = self.store.bag_chunks(item, self.eval_rows, self.device, self.dtype)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model.forward_chunks(chunks)

    def evaluate(
        self, ids: list[str], train_ids: list[str] | None = None, only: tuple | None = None
    ) -> dict:
        """Loss, metrics (and why any is missing) and predictions of ``ids``. ``train_ids``
        (survival): the metrics that need training data too (val during training has none).
        ``only``: just these metrics (per-epoch validation needs the selection metric)."""
        p = self.predict(ids)
        cases = self.targets.cases.loc[ids]
        if self.spec.kind == "classification":
            prob = torch.softmax(p["logits"], dim=1).numpy()
            m, r = classification_metrics(
                cases["y"].to_numpy(), prob, len(self.spec.classes), only, self.spec.classes
            )
            return {"loss": p["loss"], "metrics": m, "reasons": r, "prob": prob, "gate": p["gate"]}
        return self._evaluate_survival(p, cases, train_ids, only)

    def _evaluate_survival(self, p: dict, cases: pd.DataFrame, train_ids, only=None) -> dict:
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
            only=only,
        )
        if tr is None:  # val during training: metrics needing training data are not computed
            for k in ("c_index_ipcw", "ibs", "td_auc_mean", "logrank_p"):
                m.pop(k, None)
                r.pop(k, None)
        return {"loss": p["loss"], "metrics": m, "reasons": r, "hazards": h, "surv": s,
                "risk": risk, "gate": p["gate"]}  # fmt: skip
