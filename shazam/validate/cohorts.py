"""Synthetic feature-level cohorts whose right answer is known by construction, written as
real feature files (the extraction's format) for :mod:`shazam.validate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layout
from ..formats import write_feature_file
from ..losses import survival_bins
from ..stores import FeatureStore
from ..tasks import TaskSpec
from ..training import Targets

LEVELS = ("low", "mid", "high")
# feature width of each synthetic teacher (different on purpose: projections must cope)
DIMS = {"A": 32, "B": 48, "C": 24}


@dataclass(frozen=True)
class Size:
    """How big the cohorts are and how long models train."""

    n_train: int
    n_val: int
    n_test: int
    patches: tuple[int, int]  # bag size range (inclusive)
    epochs: int


QUICK = Size(n_train=480, n_val=64, n_test=128, patches=(24, 48), epochs=15)
FULL = Size(n_train=480, n_val=120, n_test=240, patches=(32, 96), epochs=20)


@dataclass
class Cohort:
    name: str
    spec: TaskSpec
    root: Path  # feature files under root/features/{teacher}/{case}.h5
    sheet: pd.DataFrame  # slide_id = case_id (one slide per case)
    cases: pd.DataFrame  # indexed by case_id: y, or time + event
    split: dict[str, list[str]]
    truth: dict = field(default_factory=dict)  # what the scenario knows: e.g. needle rows
    _stores: dict = field(default_factory=dict)

    def store(self, teachers: list[str], levels: tuple[str, ...]) -> FeatureStore:
        k = (tuple(teachers), tuple(levels))
        if k not in self._stores:
            ids = [c for v in self.split.values() for c in v]
            self._stores[k] = FeatureStore.for_slides(
                self.sheet, list(teachers), ids, levels, self.root
            )
        return self._stores[k]

    def targets(self) -> Targets:
        edges = None
        if self.spec.type == "survival":
            tr = self.cases.loc[self.split["train"]]
            edges = survival_bins(tr["time"], tr["event"], self.spec.n_bins)
        return Targets(self.spec, self.cases, edges)


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.normal(size=d)
    return v / np.linalg.norm(v)


def _write_cohort(
    root: Path,
    bags: dict[str, dict[str, np.ndarray]],  # case -> teacher -> per-patch signal (N, k)
    rng: np.random.Generator,
    strength: float,
) -> pd.DataFrame:
    """One feature file per (teacher, case): every level is N(0, I) noise plus each of the
    teacher's signal columns times ``strength`` along its own random unit direction (one
    direction per teacher, level and signal column, shared by all cases)."""
    teachers = list(next(iter(bags.values())))
    dirs = {
        (t, lv, j): _unit(rng, DIMS[t])
        for t in teachers
        for lv in LEVELS
        for j in range(max(next(iter(bags.values()))[t].shape[1], 1))
    }
    for case, per_t in bags.items():
        n = len(next(iter(per_t.values())))
        coords = np.stack([np.arange(n) % 16, np.arange(n) // 16], axis=1) * 256
        for t, sig in per_t.items():
            feats = {}
            for lv in LEVELS:
                x = rng.normal(size=(n, DIMS[t]))
                for j in range(sig.shape[1]):
                    x += strength * sig[:, j : j + 1] * dirs[t, lv, j][None, :]
                feats[lv] = x.astype(np.float16)
            meta = {"teacher": t, "slide_id": case, "synthetic": "shazam validate"}
            path = layout.at(layout.FEATURES, root, teacher=t, slide=case)
            write_feature_file(path, coords, {"patch_size": 256}, feats, meta, [], coords)
    return pd.DataFrame({"slide_id": list(bags), "case_id": list(bags)})


def _split(size: Size) -> tuple[list[str], dict[str, list[str]]]:
    n = size.n_train + size.n_val + size.n_test
    ids = [f"case{i:04d}" for i in range(n)]
    return ids, {
        "train": ids[: size.n_train],
        "val": ids[size.n_train : size.n_train + size.n_val],
        "test": ids[size.n_train + size.n_val :],
    }


def _sizes(rng, size: Size, n: int) -> np.ndarray:
    return rng.integers(size.patches[0], size.patches[1] + 1, size=n)


def _classification(name: str) -> TaskSpec:
    return TaskSpec(name=name, type="classification", labels="<synthetic>", classes=("0", "1"))


def xor_cohort(out: Path, size: Size, seed: int) -> Cohort:
    """Label = f1 XOR f2; A carries f1 (±1 on every patch), B carries f2, C carries nothing."""
    rng = np.random.default_rng([seed, 1])
    ids, split = _split(size)
    f1 = rng.integers(0, 2, len(ids))
    f2 = rng.integers(0, 2, len(ids))
    bags = {}
    for i, (c, n) in enumerate(zip(ids, _sizes(rng, size, len(ids)), strict=True)):
        ones = np.ones((n, 1))
        bags[c] = {
            "A": (2 * f1[i] - 1) * ones,
            "B": (2 * f2[i] - 1) * ones,
            "C": np.zeros((n, 0)),
        }
    root = out / "cohorts" / "xor"
    sheet = _write_cohort(root, bags, rng, strength=1.0)
    cases = pd.DataFrame({"y": f1 ^ f2, "f1": f1, "f2": f2}, index=pd.Index(ids, name="case_id"))
    return Cohort("xor", _classification("xor"), root, sheet, cases, split)


def needle_cohort(out: Path, size: Size, seed: int) -> Cohort:
    """Positive bags hold a few signal patches (2–10% of the bag, at least one); negative
    bags none. Bag sizes vary 4-fold, so the signal's share of a bag varies too."""
    rng = np.random.default_rng([seed, 2])
    ids, split = _split(size)
    y = rng.integers(0, 2, len(ids))
    lo, hi = size.patches
    bags, rows = {}, {}
    for i, c in enumerate(ids):
        n = int(rng.integers(lo, 4 * hi + 1))
        sig = np.zeros((n, 1))
        if y[i]:
            k = max(1, round(rng.uniform(0.02, 0.10) * n))
            sig[rng.choice(n, k, replace=False), 0] = 1.0
        rows[c] = sig[:, 0] > 0
        bags[c] = {"A": sig}
    root = out / "cohorts" / "needle"
    sheet = _write_cohort(root, bags, rng, strength=3.0)
    cases = pd.DataFrame({"y": y}, index=pd.Index(ids, name="case_id"))
    return Cohort("needle", _classification("needle"), root, sheet, cases, split, {"rows": rows})


SURVIVAL_BETA = 1.5  # log hazard ratio per SD of the factor teacher A sees


def survival_cohort(out: Path, size: Size, seed: int) -> Cohort:
    """Exponential event times with hazard exp(β z), z ~ N(0, 1) visible to A only (z on every
    patch); B carries an unrelated factor. Independent uniform censoring (about a third)."""
    rng = np.random.default_rng([seed, 3])
    ids, split = _split(size)
    z = rng.normal(size=len(ids))
    w = rng.normal(size=len(ids))
    t_event = rng.exponential(1.0 / np.exp(SURVIVAL_BETA * z)) * 24.0
    t_cens = rng.uniform(0, 3 * np.median(t_event), size=len(ids))
    event = t_event <= t_cens
    time_ = np.maximum(np.minimum(t_event, t_cens), 0.01)
    bags = {}
    for i, (c, n) in enumerate(zip(ids, _sizes(rng, size, len(ids)), strict=True)):
        ones = np.ones((n, 1))
        bags[c] = {"A": z[i] * ones, "B": w[i] * ones}
    root = out / "cohorts" / "survival"
    sheet = _write_cohort(root, bags, rng, strength=1.0)
    cases = pd.DataFrame(
        {"time": time_, "event": event, "z": z}, index=pd.Index(ids, name="case_id")
    )
    test = np.isin(ids, split["test"])
    from sksurv.metrics import concordance_index_censored

    oracle = concordance_index_censored(event[test], time_[test], z[test])[0]
    spec = TaskSpec(
        name="survival", type="survival", labels="<synthetic>", time_col="time",
        event_col="event", event_convention="event", n_bins=4,
    )  # fmt: skip
    reference = f"C-index of the true log-hazard on test {oracle:.3f}"
    return Cohort("survival", spec, root, sheet, cases, split, {"reference": reference})


COHORTS = {"xor": xor_cohort, "needle": needle_cohort, "survival": survival_cohort}
