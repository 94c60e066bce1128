"""GPU extraction benchmark: end-to-end extraction rate against the model-only forward rate.

Run on a CUDA machine (``python benchmarks/extract_gpu.py``). With a real-architecture
teacher (random weights; default ``virchow2``, ViT-H/14) in bf16:

1. model-only rate: the teacher's :class:`LevelExtractor` on random normalised tensors already
   on the GPU (batch ``--batch``, all levels), after warm-up;
2. extraction rate: :func:`shazam.extraction.extract_slide` on the 40× benchmark slide
   (``benchmarks/tiling.py``, JPEG tiles) with ``--workers`` loader processes — reading,
   decoding, resizing on the GPU, forward, and writing the feature file — with the same model
   (built once, so weight initialisation is not counted). The slide's patch list is repeated
   ``--repeat`` times to get a steady-state run;
3. precision: cosine between bf16-on-GPU and fp32-on-CPU features of the same patches.

Prints a table and ends with ``RESULT gpu_extraction_fraction <extraction/model-only> x``;
``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiling import SLIDES, ensure_slide  # noqa: E402  (sibling benchmark script)

from shazam.extraction import ExtractParams, extract_slide  # noqa: E402
from shazam.formats import read_feature_file  # noqa: E402
from shazam.teachers import get_spec  # noqa: E402
from shazam.teachers.build import LevelExtractor, build_model  # noqa: E402
from shazam.tiling import tile_slide  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def model_only_rate(ext, spec, batch: int, iters: int, device) -> float:
    x = torch.randn(batch, 3, spec.input_size, spec.input_size, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            out = ext(x)
            [v.float().cpu() for v in out.values()]  # same device->host copies as extraction
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            out = ext(x)
            [v.float().cpu() for v in out.values()]
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def repeated_patch_file(src: Path, dst: Path, repeat: int) -> int:
    with h5py.File(src) as f:
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
    coords = np.concatenate([coords] * repeat)
    with h5py.File(dst, "w") as f:
        d = f.create_dataset("coords", data=coords)
        for k, v in attrs.items():
            d.attrs[k] = v
    return len(coords)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="virchow2")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 1
    dev = torch.device("cuda:0")
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    name = list(SLIDES)[1]
    slide = ensure_slide(a.out, name, SLIDES[name], 0, False)
    spec = get_spec(a.teacher)
    t0 = time.perf_counter()
    model, w = build_model(spec, random_weights=True)
    ext = LevelExtractor(spec, model).to(dev).eval()
    res["build_seconds"] = round(time.perf_counter() - t0, 1)

    res["model_only_per_s"] = model_only_rate(ext, spec, a.batch, a.iters, dev)
    print(f"model-only {a.teacher} bf16 batch {a.batch}: {res['model_only_per_s']:.0f} patches/s")

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        tile_slide(name, slide["path"], t / "p.h5", t / "p.json", t / "p.png")
        n = repeated_patch_file(t / "p.h5", t / "rep.h5", a.repeat)
        params = ExtractParams(batch_size=a.batch, num_workers=a.workers, precision="bf16")
        # warm-up run (page cache, cuDNN/cuBLAS heuristics), then the timed one
        extract_slide(a.teacher, name, slide["path"], t / "p.h5", t / "w.h5", params,
                      extractor=(ext, w.identity), progress=False)  # fmt: skip
        r = extract_slide(a.teacher, name, slide["path"], t / "rep.h5", t / "f.h5", params,
                          extractor=(ext, w.identity), progress=False)  # fmt: skip
        res["extraction_patches"] = n
        res["extraction_seconds"] = r["seconds"]
        res["extraction_per_s"] = n / r["seconds"]
        print(f"extraction: {n} patches in {r['seconds']:.1f}s = {res['extraction_per_s']:.0f}/s")

        # precision: bf16 on GPU vs fp32 on CPU, first 64 patches of the slide
        gpu, coords, _ = read_feature_file(t / "w.h5")
        cpu_ext = LevelExtractor(spec, model.float().cpu()).eval()
        small = t / "small.h5"
        repeated_patch_file(t / "p.h5", small, 1)
        with h5py.File(small, "a") as f:
            c = f["coords"][:64]
            attrs = dict(f["coords"].attrs)
            del f["coords"]
            d = f.create_dataset("coords", data=c)
            for k, v in attrs.items():
                d.attrs[k] = v
        cpu_params = ExtractParams(batch_size=32, num_workers=4, precision="fp32", device="cpu")
        extract_slide(a.teacher, name, slide["path"], small, t / "cpu.h5", cpu_params,
                      extractor=(cpu_ext, w.identity), progress=False)  # fmt: skip
        ref, _, _ = read_feature_file(t / "cpu.h5")
        g = gpu[:64].astype(np.float32)
        ref = ref.astype(np.float32)
        cos = (g * ref).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(ref, axis=1)
        res["cos_bf16_gpu_vs_fp32_cpu_min"] = float(cos.min())
        res["cos_bf16_gpu_vs_fp32_cpu_mean"] = float(cos.mean())
        print(f"bf16 GPU vs fp32 CPU features: cosine min {cos.min():.4f} mean {cos.mean():.4f}")

    frac = res["extraction_per_s"] / res["model_only_per_s"]
    res["fraction"] = frac
    res.update(teacher=a.teacher, batch=a.batch, workers=a.workers)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    print(f"extraction / model-only: {frac:.2f} (bar >= 0.85)")
    print(f"RESULT gpu_extraction_fraction {frac:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
