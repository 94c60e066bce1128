"""Compute device and precision, shared by extraction and training.

- :func:`select_device`: CUDA when present, else CPU; on a multi-GPU box without
  ``CUDA_VISIBLE_DEVICES`` (Snakemake never sets it) a free device is taken with a file lock;
- :func:`autocast_dtype`: the mixed-precision dtype for a configured ``precision``.
"""

from __future__ import annotations

import fcntl
import math
import os
import sys
import time
from pathlib import Path

import torch


def select_device(prefer: str = "auto", lock_dir: str | os.PathLike | None = None):
    """(device, lock handle). CUDA when present, else CPU.

    Snakemake never sets ``CUDA_VISIBLE_DEVICES``. When it is set (by the user, SLURM or a
    wrapper) the job uses the first visible device. Otherwise, on a multi-GPU box, the job
    takes an exclusive ``flock`` on one lock file per device and uses the first free one, so
    parallel local jobs (``--resources gpu=N``) spread over the GPUs instead of piling onto
    GPU 0. The lock is released when the process exits.
    """
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu"), None
    if prefer.startswith("cuda:"):
        return torch.device(prefer), None
    n = torch.cuda.device_count()
    if os.environ.get("CUDA_VISIBLE_DEVICES") or n == 1:
        return torch.device("cuda:0"), None
    idx, handle = acquire_device_lock(n, lock_dir)
    return torch.device(f"cuda:{idx}"), handle


def acquire_device_lock(
    n_devices: int, lock_dir: str | os.PathLike | None = None, wait_s: float = 3600
):
    """Index of the first device whose lock file this process could lock, and the open lock
    file (keep it open to hold the device). Waits, polling, when all devices are taken."""
    lock_dir = Path(lock_dir or os.environ.get("SHAZAM_GPU_LOCK_DIR", "/tmp/shazam-gpu-locks"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for i in range(n_devices):
            f = open(lock_dir / f"gpu{i}.lock", "a+")  # noqa: SIM115 - held for the job
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            return i, f
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {n_devices} after {wait_s:.0f}s ({lock_dir})")
        time.sleep(1.0)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 matmuls
    run several times faster than fp32; elsewhere bf16 on CPU is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def autocast_dtype(
    precision: str, device: torch.device, preferred: str = "bf16", cpu_bf16: bool = False
):
    """None (fp32) or the autocast dtype. ``auto``: bf16 on CUDA; on CPU fp32, or bf16 when
    ``cpu_bf16`` is asked for (training) and the CPU has native bf16 (``cpu_has_native_bf16``)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if cpu_bf16 and cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere): what a job has
    spent before a point, start-up and imports included."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def single_malloc_arena() -> bool:
    """Have glibc serve every thread from one heap (``mallopt(M_ARENA_MAX, 1)``), before the
    compute threads start. Each thread that allocates otherwise gets its own arena, and every
    arena keeps the fragments of a training step's transient tensors: one ``shazam train
    --model shazam`` process at 40 cases peaked 0.29 GB lower with one arena, at the same
    epoch time (docs/BENCHMARKS.md). True when set; False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, 1))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def available_memory() -> int:
    """Bytes this process can still use: the kernel's ``MemAvailable``, or less when the
    process's cgroup (a SLURM job, a container) has a lower limit."""
    avail = math.inf
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        with open("/proc/self/cgroup") as f:
            rel = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit != "max":
            with open(os.path.join(base, "memory.current")) as f:
                avail = min(avail, int(limit) - int(f.read()))
    except (OSError, StopIteration, ValueError):
        pass
    return int(avail)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: ``VmHWM`` of its own address space.
    (``getrusage``'s ``ru_maxrss`` is not that: Linux folds the peak of the address space a
    process had before ``exec`` — its parent's, after ``vfork`` — into it, so a child of a large
    process reports the parent's peak.)"""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
