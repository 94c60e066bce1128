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
    on_bad_slide: str = "fail"  # fail | skip: a slide that cannot be read at all
    slides_per_job: int = 32  # slides per workflow job (one model load; see extraction.groups)

    def __post_init__(self):
        if self.on_bad_patch not in ON_BAD_PATCH:
            raise ValueError(f"extraction.on_bad_patch must be fail or skip: {self.on_bad_patch}")
        if self.on_bad_slide not in ON_BAD_PATCH:
            raise ValueError(f"extraction.on_bad_slide must be fail or skip: {self.on_bad_slide}")
        if self.slides_per_job < 1:
            raise ValueError(f"extraction.slides_per_job must be at least 1: {self.slides_per_job}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"extraction.precision must be auto|fp32|bf16|fp16: {self.precision}")
        if self.dtype not in DTYPES:
            raise ValueError(f"extraction.dtype must be float16 or float32: {self.dtype}")
