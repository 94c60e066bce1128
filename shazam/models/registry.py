"""The one owner of model names (timm's ``list_models`` idea): which models a task trains, what
each name means, which teachers it reads, and the student's settings with its ablations.

Pure Python — no torch import — so the workflow lists models and builds its wildcard
constraints while it parses the DAG, and the CLI's help is generated from here.

Names, per family of task (``slide``: attention-MIL over patch bags; ``tile``: one vector per
ROI image):

================  ====================  ======================  ==============================
role              slide                 tile                    reads
================  ====================  ======================  ==============================
single teacher    ``abmil-{teacher}``   ``mlp-{teacher}``       that teacher's high level
early fusion      ``concat``            ``concat-mlp``          every teacher's high level
student           ``shazam``            ``shazam-v1``           every teacher (student levels)
ablation          ``shazam-{what}``     ``shazam-v1-{what}``    as the student
late fusion       ``late-fusion``       ``late-fusion``         (evaluation only, not trained)
================  ====================  ======================  ==============================

**Adding an ablation is one record in** :data:`ABLATIONS`: the config schema's check, the
workflow's wildcard constraint, training and the report's description all read it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

LATE_FUSION = "late-fusion"
FAMILIES = ("slide", "tile")


@dataclass(frozen=True)
class Family:
    single: str  # prefix of the single-teacher baseline: {single}{teacher}
    fusion: str  # the early-fusion (concatenation) baseline
    student: str  # the Shazam student; its ablations are {student}-{what}
    single_what: str  # how the report describes a single-teacher model
    fusion_what: str
    student_what: str


FAMILY = {
    "slide": Family(
        "abmil-",
        "concat",
        "shazam",
        "ABMIL on {teacher} features (single teacher)",
        "ABMIL on the concatenated teacher features (early fusion)",
        "Shazam student distilled from {n} teachers",
    ),
    "tile": Family(
        "mlp-",
        "concat-mlp",
        "shazam-v1",
        "MLP on {teacher} image features (single teacher)",
        "MLP on the concatenated teacher image features (early fusion)",
        "Shazam v1 classifier (teachers as tokens), distilled from {n} teachers",
    ),
}


@dataclass(frozen=True)
class StudentSettings:
    """The student's settings: the config's ``shazam`` section with these defaults (the one
    place they are written; the config schema documents the same keys)."""

    d_model: int | None = None  # None: the training section's d_model
    levels: tuple[str, ...] = ("low", "mid", "high")
    layers: int = 4
    heads: int = 1
    feed_forward: bool = True
    gate: bool = True
    distill_weight: float = 0.01
    distill_target: str = "teacher"  # teacher (fixed targets) | agreement (the seed's term)

    @classmethod
    def from_config(cls, cfg: dict | None) -> StudentSettings:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in (cfg or {}).items() if k in known}
        if "levels" in kw:
            kw["levels"] = tuple(kw["levels"])
        return cls(**kw)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d


@dataclass(frozen=True)
class Ablation:
    overrides: dict  # StudentSettings fields this variant changes
    what: str  # the report's description
    tile: bool = False  # also trained for tile tasks (as shazam-v1-{what})


# name suffix -> the variant: `shazam-{suffix}` (slide), `shazam-v1-{suffix}` (tile)
ABLATIONS = {
    "nogate": Ablation({"gate": False}, "without the gate"),
    "nodistill": Ablation({"distill_weight": 0.0}, "without distillation", tile=True),
    "high": Ablation({"levels": ("high",)}, "final-layer features only"),
    "agreement": Ablation({"distill_target": "agreement"}, "seed's agreement target"),
}


def ablation_names() -> list[str]:
    """The names the config's ``shazam.ablations`` accepts (slide-level spelling)."""
    return [f"{FAMILY['slide'].student}-{s}" for s in ABLATIONS]


def check_ablations(names: list[str]) -> None:
    """A clear error for a configured ablation that is not registered."""
    known = ["shazam", *ablation_names()]
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(
            f"config: unknown ablation(s) {', '.join(bad)} in `shazam.ablations`; "
            f"known: {', '.join(known)}"
        )


def roster(teachers: list[str], ablations=(), tile: bool = False) -> list[str]:
    """The models a task trains, in report order: one single-teacher model per teacher; with
    2+ teachers the early-fusion baseline, the student and its configured ablations (a tile
    task has the ablations registered with ``tile=True``)."""
    f = FAMILY["tile" if tile else "slide"]
    names = [f"{f.single}{t}" for t in teachers]
    if len(teachers) > 1:
        names += [f.fusion, f.student]
        for a in dict.fromkeys(ablations):
            suffix = _suffix(a)
            if suffix is not None and (not tile or ABLATIONS[suffix].tile):
                names.append(f"{f.student}-{suffix}")
    return names


def _suffix(ablation: str) -> str | None:
    """``shazam-nodistill`` -> ``nodistill``; ``shazam`` -> None."""
    head = FAMILY["slide"].student + "-"
    return ablation[len(head) :] if ablation.startswith(head) else None


@dataclass(frozen=True)
class ModelName:
    """A parsed model name."""

    name: str
    family: str  # slide | tile
    role: str  # single | fusion | student | late-fusion
    teacher: str | None = None  # single-teacher models
    ablation: str | None = None  # student variants: a key of ABLATIONS

    def teachers(self, run_teachers: list[str]) -> list[str]:
        """The teachers whose features this model reads."""
        return [self.teacher] if self.teacher else list(run_teachers)

    def settings(self, cfg: dict | None = None) -> StudentSettings:
        """The student's settings for this variant, from the config's ``shazam`` section."""
        if self.role != "student":
            raise ValueError(f"model {self.name} is not a Shazam student")
        base = StudentSettings.from_config(cfg)
        if self.ablation is None:
            return base
        over = dict(ABLATIONS[self.ablation].overrides)
        return StudentSettings(**{**asdict(base), **over})

    def describe(self, teachers: list[str], n_singles: int) -> str:
        f = FAMILY[self.family]
        if self.role == "single":
            return f.single_what.format(teacher=self.teacher)
        if self.role == "fusion":
            return f.fusion_what
        if self.role == LATE_FUSION:
            return f"average of the {n_singles} single-teacher predictions (no training)"
        if self.ablation is None:
            return f.student_what.format(n=len(teachers))
        what = "Shazam v1 ablation" if self.family == "tile" else "Shazam ablation"
        return f"{what}: {ABLATIONS[self.ablation].what}"


def parse(name: str) -> ModelName:
    """What a model name means; a clear error naming the grammar for anything else."""
    if name == LATE_FUSION:
        return ModelName(name, "slide", LATE_FUSION)
    # the tile family first: its student's name extends the slide student's
    for fam in ("tile", "slide"):
        f = FAMILY[fam]
        if name.startswith(f.single) and len(name) > len(f.single):
            return ModelName(name, fam, "single", teacher=name[len(f.single) :])
        if name == f.fusion:
            return ModelName(name, fam, "fusion")
        if name == f.student:
            return ModelName(name, fam, "student")
        if name.startswith(f.student + "-"):
            suffix = name[len(f.student) + 1 :]
            if suffix in ABLATIONS and (fam == "slide" or ABLATIONS[suffix].tile):
                return ModelName(name, fam, "student", ablation=suffix)
    raise ValueError(f"unknown model '{name}'; known: {grammar()}")


def grammar() -> str:
    """Every model name, as the CLI's help and error messages show it."""
    parts = []
    for fam in FAMILIES:
        f = FAMILY[fam]
        abl = [s for s in ABLATIONS if fam == "slide" or ABLATIONS[s].tile]
        parts.append(f"{fam}: {f.single}<teacher>, {f.fusion}, {f.student}[-{'|-'.join(abl)}]")
    return "; ".join(parts)


def wildcard_regex(family: str, teachers: list[str]) -> str:
    """The workflow's wildcard constraint for one family's trained models (no late fusion)."""
    f = FAMILY[family]
    abl = [s for s in ABLATIONS if family == "slide" or ABLATIONS[s].tile]
    alts = [re.escape(f"{f.single}{t}") for t in teachers]
    alts += [re.escape(f.fusion), re.escape(f.student) + f"(-({'|'.join(abl)}))?"]
    return "|".join(alts)


def student_regex(family: str) -> str:
    """The wildcard constraint of one family's student and its ablations."""
    f = FAMILY[family]
    abl = [s for s in ABLATIONS if family == "slide" or ABLATIONS[s].tile]
    return re.escape(f.student) + f"(-({'|'.join(abl)}))?"


def build(
    name: str,
    dims: dict[str, int],
    n_out: int,
    teachers: list[str],
    d: int = 128,
    dropout: float = 0.25,
    student: dict | None = None,
):
    """The network of a model name (timm's ``create_model``): ``dims`` keyed ``teacher:level``
    (the feature store's), ``teachers`` the run's, ``student`` the config's ``shazam`` section.
    Single-teacher and fusion models read the high level; the student reads its levels."""
    m = parse(name)
    high = {k: v for k, v in dims.items() if k.endswith(":high")}
    used = m.teachers(teachers)
    missing = [t for t in used if f"{t}:high" not in high and m.role != "student"]
    if missing:
        raise ValueError(f"model {name}: no features of teacher {', '.join(missing)}")
    if m.family == "tile":
        from .tile import ConcatMLP, ShazamV1, TileMLP

        if m.role == "single":
            k = f"{m.teacher}:high"
            return TileMLP(high[k], n_out, k, d, dropout)
        if m.role == "fusion":
            return ConcatMLP(high, n_out, d, dropout)
        s = m.settings(student)
        return ShazamV1(
            high, n_out, d=s.d_model or d, layers=s.layers, heads=s.heads,
            feed_forward=s.feed_forward, dropout=dropout, distill_weight=s.distill_weight,
        )  # fmt: skip
    from .abmil import ABMIL, ConcatABMIL
    from .shazam import Shazam

    if m.role == "single":
        k = f"{m.teacher}:high"
        return ABMIL(high[k], n_out, d, dropout, key=k)
    if m.role == "fusion":
        return ConcatABMIL(high, n_out, d, dropout)
    s = m.settings(student)
    # the configured levels every teacher has (training.fold.student_levels)
    levels = [lv for lv in s.levels if all(f"{t}:{lv}" in dims for t in used)]
    return Shazam(
        dims, used, levels, n_out, d=s.d_model or d, layers=s.layers, heads=s.heads,
        feed_forward=s.feed_forward, dropout=dropout, gate=s.gate,
        distill_weight=s.distill_weight, distill_target=s.distill_target,
    )  # fmt: skip
