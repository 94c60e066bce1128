"""Known-answer validation: synthetic cohorts whose right answer is known by construction.

On real cohorts nobody knows the right answer and the differences between teachers are within
fold noise, so a fusion that ignores a teacher or a gate without effect can hide for months.
Here each claim of the architecture becomes a check that can fail:

- ``complementary``: the label is the XOR of two bag-level factors; teacher A's patches carry
  only factor 1, teacher B's only factor 2. Single teachers stay near chance, fusion learns it.
- ``useless_teacher``: a teacher C of pure noise is added; the student is not hurt and the
  gate gives C the smallest weight.
- ``needle``: the label depends on a few patches (≤ 10% of the bag); ABMIL's attention finds
  them, a mean-pooling control does worse.
- ``survival``: event times from a hazard driven by a factor only teacher A sees, with random
  censoring; ABMIL on A ranks them, the student on A+B is not worse.
- ``distillation``: the cosine between each teacher's target and the student's projection rises
  during training with distillation on, and not with ``distill_weight: 0``.

Cohorts are written as real feature files (``{out}/cohorts/{cohort}/features/{teacher}/
{case}.h5``, the extraction's format), read back with :class:`~shazam.stores.FeatureStore`, and
trained with the real :class:`~shazam.training.Engine` and models, on one fixed seeded
train/val/test split. Settings are fixed up front (``Size``, ``train_config``); a scenario is
never tuned until it passes — a failure is reported with its observed figures.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..io import atomic_path
from ..models import registry
from ..models.abmil import Dropout, unpack
from ..training import Engine, TrainConfig
from .cohorts import COHORTS, FULL, LEVELS, QUICK, Cohort, Size

log = logging.getLogger(__name__)


def train_config(size: Size, seed: int) -> TrainConfig:
    # fp32 on every machine: `precision: auto` would train in bf16 on CPUs with native bf16
    # and in fp32 elsewhere, and known-answer figures must not depend on the CPU model
    return TrainConfig(
        epochs=size.epochs, lr=1e-3, weight_decay=1e-3, accumulate=8, batch_bags=8,
        max_patches=4096, seed=seed, d_model=64, dropout=0.1, precision="fp32",
    )  # fmt: skip


# the student as the demo runs it (2 attention layers), all three levels, gate and distillation on
SHAZAM = {"d_model": 64, "layers": 2, "heads": 1}


# --------------------------------------------------------------------------- models


class MeanPoolMIL(nn.Module):
    """Control for the needle scenario: ABMIL's projection and head with the attention replaced
    by the plain mean over the bag's patches."""

    def __init__(self, in_dim: int, n_out: int, d: int, dropout: float, key: str):
        super().__init__()
        self.key = key
        self.proj = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(), Dropout(dropout))
        self.head = nn.Linear(d, n_out)

    def forward(self, feats, mask):
        h = unpack(self.proj(feats[self.key]), mask)
        a = mask.float() / mask.sum(1, keepdim=True).clamp_min(1)
        return {"logits": self.head(torch.einsum("bn,bnd->bd", a.to(h.dtype), h)), "attention": a}


@dataclass(frozen=True)
class Run:
    """One model trained on one cohort: ``abmil-<T>``, ``meanpool-<T>``, ``concat`` or
    ``shazam`` (with ``settings`` overriding the student's, e.g. ``{"gate": False}``)."""

    cohort: str
    model: str
    teachers: tuple[str, ...]
    settings: tuple = ()  # sorted (key, value) pairs, so a Run is hashable

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.model}[{'+'.join(self.teachers)}{';' + extra if extra else ''}]"


def run(cohort: str, model: str, *teachers: str, **settings) -> Run:
    return Run(cohort, model, tuple(teachers), tuple(sorted(settings.items())))


def _build(r: Run, dims: dict[str, int], n_out: int, cfg: TrainConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if r.model.startswith("meanpool-"):
        k = f"{r.model[len('meanpool-') :]}:high"
        return MeanPoolMIL(dims[k], n_out, cfg.d_model, cfg.dropout, k)
    student = {**SHAZAM, **dict(r.settings)}
    return registry.build(r.model, dims, n_out, list(r.teachers), cfg.d_model, cfg.dropout, student)


@dataclass
class Result:
    run: Run
    metrics: dict  # test metrics (balanced_accuracy or c_index, ...)
    seconds: float
    gate_mean: dict[str, float] | None = None
    cosine: tuple[float, float] | None = None  # student's distillation cosine before, after
    attention_mass: float | None = None  # needle: mean attention on signal rows, positive bags


class Validator:
    """Builds cohorts and trains runs on demand, each once per session."""

    def __init__(self, out: str | os.PathLike, size: Size = QUICK, seed: int = 0):
        self.out, self.size, self.seed = Path(out), size, seed
        self.cfg = train_config(size, seed)
        self._cohorts: dict[str, Cohort] = {}
        self._results: dict[Run, Result] = {}

    def cohort(self, name: str) -> Cohort:
        if name not in self._cohorts:
            t0 = time.perf_counter()
            self._cohorts[name] = COHORTS[name](self.out, self.size, self.seed)
            log.info("cohort %s written in %.1fs", name, time.perf_counter() - t0)
        return self._cohorts[name]

    def result(self, r: Run) -> Result:
        if r not in self._results:
            self._results[r] = self._train(r)
        return self._results[r]

    def _train(self, r: Run) -> Result:
        t0 = time.perf_counter()
        c = self.cohort(r.cohort)
        levels = tuple(dict(r.settings).get("levels", LEVELS)) if r.model == "shazam" else ("high",)
        store = c.store(list(r.teachers), levels)
        n_out = len(c.spec.classes) if c.spec.type == "classification" else c.spec.n_bins
        model = _build(r, store.dims, n_out, self.cfg)
        eng = Engine(model, c.spec, store, c.targets(), self.cfg)
        test = c.split["test"]
        eng.prepare(c.split["train"])  # standardised inputs before the "before" cosine too
        before = self._cosine(eng, test) if r.model == "shazam" else None
        eng.fit(c.split["train"], c.split["val"], log=log.debug)
        ev = eng.evaluate(test, c.split["train"])
        res = Result(r, ev["metrics"], 0.0)
        if ev.get("gate"):
            mean = torch.stack([ev["gate"][k] for k in test]).mean(0).tolist()
            res.gate_mean = dict(zip(r.teachers, mean, strict=True))
        if before is not None:
            res.cosine = (before, self._cosine(eng, test))
        if "rows" in c.truth:
            res.attention_mass = self._attention_mass(eng, c)
        res.seconds = round(time.perf_counter() - t0, 1)
        key = c.spec.primary_metric
        log.info("%s on %s: test %s %.3f (%.1fs)", r.label, c.name, key, res.metrics[key],
                 res.seconds)  # fmt: skip
        return res

    @torch.no_grad()
    def _cosine(self, eng: Engine, ids: list[str]) -> float:
        eng.model.eval()
        vals = []
        for s in range(0, len(ids), self.cfg.batch_bags):
            chunk = ids[s : s + self.cfg.batch_bags]
            feats, mask = eng.store.batch(chunk, device=eng.device)
            vals.append(eng.model.distill_cosine(feats, mask).mean().item() * len(chunk))
        return sum(vals) / len(ids)

    @torch.no_grad()
    def _attention_mass(self, eng: Engine, c: Cohort) -> float:
        eng.model.eval()
        pos = [k for k in c.split["test"] if c.cases.loc[k, "y"] == 1]
        masses = []
        for k in pos:  # one bag at a time: attention row j is the bag's patch j
            feats, mask = eng.store.batch([k], device=eng.device)
            a = eng.model(feats, mask)["attention"][0].float().cpu().numpy()
            masses.append(float(a[: len(c.truth["rows"][k])][c.truth["rows"][k]].sum()))
        return float(np.mean(masses))


# --------------------------------------------------------------------------- scenarios


@dataclass
class Outcome:
    passed: bool
    observed: str


def _bacc(res: Result) -> float:
    return float(res.metrics["balanced_accuracy"])


def _f(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str
    runs: dict[str, Run]  # role -> run; tests swap a role's run to remove the property
    check: Callable[[dict[str, Result]], Outcome]


def check_complementary(r: dict[str, Result]) -> Outcome:
    b = {k: _bacc(v) for k, v in r.items()}
    ok = b["single_A"] <= 0.65 and b["single_B"] <= 0.65 and b["concat"] >= 0.85
    ok = ok and b["shazam"] >= 0.85
    return Outcome(ok, ", ".join(f"{r[k].run.label} {_f(v)}" for k, v in b.items()))


def check_useless(r: dict[str, Result]) -> Outcome:
    ab, abc = _bacc(r["shazam_AB"]), _bacc(r["shazam_ABC"])
    gate = r["shazam_ABC"].gate_mean or {}
    c = gate.get("C", math.nan)
    smallest = bool(gate) and all(c < v for t, v in gate.items() if t != "C")
    ok = abc >= ab - 0.05 and smallest
    g = " ".join(f"{t} {_f(v)}" for t, v in gate.items()) or "none"
    return Outcome(ok, f"bal. acc. A+B {_f(ab)}, A+B+C {_f(abc)}; mean gate {g}")


def check_needle(r: dict[str, Result]) -> Outcome:
    mass = r["abmil"].attention_mass
    a, m = _bacc(r["abmil"]), _bacc(r["meanpool"])
    ok = mass is not None and mass >= 0.5 and m < a
    return Outcome(
        ok, f"attention mass on signal patches {_f(mass)}; bal. acc. {r['abmil'].run.label} "
        f"{_f(a)}, {r['meanpool'].run.label} {_f(m)}",
    )  # fmt: skip


def check_survival(r: dict[str, Result]) -> Outcome:
    a, s = (float(r[k].metrics["c_index"]) for k in ("single_A", "shazam"))
    ok = a >= 0.70 and s >= a - 0.03
    return Outcome(
        ok, f"C-index {r['single_A'].run.label} {_f(a)}, {r['shazam'].run.label} {_f(s)}"
    )


def check_distillation(r: dict[str, Result]) -> Outcome:
    (on0, on1), (off0, off1) = r["distill"].cosine, r["no_distill"].cosine
    ok = on1 - on0 >= 0.10 and off1 - off0 < 0.10
    return Outcome(
        ok, f"cosine {r['distill'].run.label} {_f(on0)} -> {_f(on1)}, "
        f"{r['no_distill'].run.label} {_f(off0)} -> {_f(off1)}",
    )  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "complementary",
            "label = XOR(f1 in A, f2 in B): abmil-A, abmil-B bal. acc. <= 0.65; concat, shazam "
            ">= 0.85",
            {
                "single_A": run("xor", "abmil-A", "A"),
                "single_B": run("xor", "abmil-B", "B"),
                "concat": run("xor", "concat", "A", "B"),
                "shazam": run("xor", "shazam", "A", "B"),
            },
            check_complementary,
        ),
        Scenario(
            "useless_teacher",
            "noise teacher C added: shazam A+B+C bal. acc. >= shazam A+B - 0.05; C has the "
            "smallest mean gate weight",
            {
                "shazam_AB": run("xor", "shazam", "A", "B"),
                "shazam_ABC": run("xor", "shazam", "A", "B", "C"),
            },  # fmt: skip
            check_useless,
        ),
        Scenario(
            "needle",
            "label from <= 10% of patches: abmil-A attention mass on them >= 0.5 in positive "
            "bags; mean pooling bal. acc. < abmil-A",
            {"abmil": run("needle", "abmil-A", "A"), "meanpool": run("needle", "meanpool-A", "A")},
            check_needle,
        ),
        Scenario(
            "survival",
            "hazard from a factor only A sees: abmil-A C-index >= 0.70; shazam A+B >= abmil-A "
            "- 0.03",
            {
                "single_A": run("survival", "abmil-A", "A"),
                "shazam": run("survival", "shazam", "A", "B"),
            },  # fmt: skip
            check_survival,
        ),
        Scenario(
            "distillation",
            "distill_target teacher: target-projection cosine rises by >= 0.10 in training; "
            "with distill_weight 0 by < 0.10",
            {
                "distill": run("xor", "shazam", "A", "B"),
                "no_distill": run("xor", "shazam", "A", "B", distill_weight=0.0),
            },  # fmt: skip
            check_distillation,
        ),
    )
}


def run_scenario(v: Validator, s: Scenario) -> dict:
    t0 = time.perf_counter()
    results = {role: v.result(r) for role, r in s.runs.items()}
    o = s.check(results)
    refs = dict.fromkeys(v.cohort(r.cohort).truth.get("reference") for r in s.runs.values())
    observed = "; ".join([o.observed] + [r for r in refs if r])
    return {
        "scenario": s.name,
        "expected": s.expected,
        "observed": observed,
        "status": "pass" if o.passed else "FAIL",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def validate(
    out: str | os.PathLike,
    quick: bool = False,
    seed: int = 0,
    scenarios: list[str] | None = None,
    show: Callable[[str], None] = print,
    threads: int = 1,
    validator: Validator | None = None,
) -> pd.DataFrame:
    """Run the scenarios, print one row per scenario as it finishes, write
    ``{out}/summary.tsv`` and return the table (``status`` is ``pass`` or ``FAIL``).

    ``threads``: torch CPU threads. One is fastest here: the models are tiny, and on a busy
    machine more threads than free cores slow small ops down by an order of magnitude.
    ``validator``: reuse one (its cohorts and trained runs), e.g. across tests."""
    if threads:
        torch.set_num_threads(threads)
    names = scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    v = validator or Validator(out, QUICK if quick else FULL, seed)
    rows = []
    for n in names:
        row = run_scenario(v, SCENARIOS[n])
        rows.append(row)
        show(f"{row['status']:4s}  {n:16s} {row['observed']}\n      expected: {row['expected']}")
    df = pd.DataFrame(rows)
    with atomic_path(Path(out) / "summary.tsv") as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return df


def with_run(s: Scenario, role: str, r: Run) -> Scenario:
    """The scenario with one role's run replaced (how tests remove a property)."""
    return replace(s, runs={**s.runs, role: r})
