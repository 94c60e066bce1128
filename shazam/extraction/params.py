"""Extraction settings (the config's ``extraction`` section), without torch: the command line
reads its defaults and choices from here."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = ("float16", "float32")
ON_BAD_PATCH = ("fail", "skip")


@dataclass(frozen=True)
class ExtractParams:
    batch_size: int = 128
    num_workers: int = 4
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    levels: tuple[str, ...] = ("low", "mid", "high")
    dtype: str = "float16"  # storage dtype of the feature datasets
    on_bad_patch: str = "fail"  # fail | skip
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        if self.on_bad_patch not in ON_BAD_PATCH:
            raise ValueError(f"extraction.on_bad_patch must be fail or skip: {self.on_bad_patch}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"extraction.precision must be auto|fp32|bf16|fp16: {self.precision}")
        if self.dtype not in DTYPES:
            raise ValueError(f"extraction.dtype must be float16 or float32: {self.dtype}")
