"""Training (DESIGN §5–§6): :mod:`.engine` holds the one engine for every model (its config and
targets); :mod:`.fold` trains one model on one fold of any task and writes its outputs."""

from .engine import Engine, Targets, TrainConfig
from .fold import train_fold

__all__ = ["Engine", "Targets", "TrainConfig", "train_fold"]
