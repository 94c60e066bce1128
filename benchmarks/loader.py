"""Loader benchmark: patches/s per core of shazam's extraction loader against a naive loader.

Slide: the 32768 × 24576 px 40× JPEG benchmark slide of ``benchmarks/tiling.py`` (tissue ~50%,
generated and cached on first use), tiled by ``shazam.tiling`` at 256 px / 0.5 µm/px, so every
patch is a 512 × 512 level-0 region.

Both loaders deliver the same thing: normalised float32 batches (B, 3, 224, 224) of the same
patches, in order, with the same number of worker processes (``--workers``) and batch 64.

- naive (CLAM-style reference): one ``read_region`` per patch at level 0, ``convert('RGB')``,
  PIL bilinear resize to 224, torchvision ``ToTensor`` + ``Normalize`` in the workers;
- shazam: ``shazam.extraction.PatchBatches`` (grouped reads, uint8 batches) + ``prepare``
  (batched antialiased resize + normalise, on the CPU here, on the GPU in real runs).

Per core = patches/s ÷ (workers + 1 main process), identical for both, so the headline ratio
equals the throughput ratio. The last line is ``RESULT loader_speedup <x> x``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiling import SLIDES, ensure_slide  # noqa: E402  (sibling benchmark script)

from shazam.extraction import PatchBatches, make_loader, prepare, read_geometry  # noqa: E402
from shazam.formats import read_patch_file  # noqa: E402
from shazam.teachers import get_spec  # noqa: E402
from shazam.tiling import tile_slide  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class NaivePatches(torch.utils.data.Dataset):
    """One read_region per patch + PIL resize + torchvision transforms (the reference)."""

    def __init__(self, path, coords, level, size, input_size, mean, std):
        self.path, self.coords, self.level, self.size = str(path), coords, level, size
        self.input_size = input_size
        self.mean, self.std = mean, std
        self._osr = None
        self._tf = None

    def __len__(self):
        return len(self.coords)

    def __getitem__(self, i):
        import openslide
        from PIL import Image
        from torchvision import transforms

        if self._osr is None:
            self._osr = openslide.OpenSlide(self.path)
            self._tf = transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
            )
        x, y = self.coords[i]
        im = self._osr.read_region((int(x), int(y)), self.level, (self.size, self.size))
        im = im.convert("RGB").resize((self.input_size, self.input_size), Image.BILINEAR)
        return self._tf(im)


def run_naive(path, coords, geom, spec, workers, batch):
    ds = NaivePatches(path, coords, geom.level, geom.size, spec.input_size, spec.mean, spec.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
    n = 0
    t0 = time.perf_counter()
    for x in loader:
        n += len(x)
    return n, time.perf_counter() - t0


def run_shazam(path, coords, geom, spec, workers, batch):
    ds = PatchBatches(str(path), coords, geom, batch, resize_to=spec.resize_to or spec.input_size)
    loader = make_loader(ds, workers, pin_memory=False)
    cpu = torch.device("cpu")
    n = 0
    t0 = time.perf_counter()
    for u8, _idx, errors in loader:
        assert not errors
        x = prepare(u8, spec.input_size, spec.resize_to, spec.mean, spec.std, cpu, spec.view)
        n += len(x)
    return n, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-patches", type=int, default=1024)
    ap.add_argument("--teacher", default="uni2_h", help="whose input size/normalisation to use")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # one core for the main process, like each worker

    name = list(SLIDES)[1]
    slide = ensure_slide(a.out, name, SLIDES[name], 0, False)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        tile_slide(name, slide["path"], t / "p.h5", t / "p.json", t / "p.png")
        coords, attrs = read_patch_file(t / "p.h5")
    coords = coords[: a.max_patches]
    geom = read_geometry(attrs)
    spec = get_spec(a.teacher)
    cores = a.workers + 1
    print(
        f"slide {slide['path'].name}: {len(coords)} patches of {geom.size}px at level "
        f"{geom.level} -> {spec.input_size}px; workers {a.workers}, batch {a.batch}, "
        f"cores {cores}, torch threads 1",
        flush=True,
    )
    results = {"naive": [], "shazam": []}
    for r in range(a.repeats):  # interleaved, so machine noise hits both alike
        for label, fn in (("naive", run_naive), ("shazam", run_shazam)):
            n, s = fn(slide["path"], coords, geom, spec, a.workers, a.batch)
            results[label].append(n / s)
            print(f"  run {r + 1} {label:6s}: {n} patches in {s:.2f}s = {n / s:.0f}/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print("\n| loader | patches/s (median) | patches/s per core |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.0f} | {v / cores:.0f} |")
    ratio = med["shazam"] / med["naive"]
    print(f"\nspeed-up per core (same workers, same patches): {ratio:.2f}x (bar >= 3x)")
    print(f"RESULT loader_speedup {ratio:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
