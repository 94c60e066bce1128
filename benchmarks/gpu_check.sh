#!/usr/bin/env bash
# GPU checks in one run (docs/BENCHMARKS.md, "GPU checks (device tool, H200)"):
#   1. one `python3 -m shazam extract` group job with virchow2 (random weights from a local
#      safetensors file), bf16, 12 loader workers, against the model-only rate
#      (benchmarks/extract_job_gpu.py);
#   2. `shazam train --model shazam` on a synthetic cohort at the real teachers' widths on cuda:
#      epoch time, peak host RSS and GPU memory, training.cache disk vs memory
#      (benchmarks/cohort_memory.py);
#   3. one 150,000-patch bag through the student on cuda, streamed vs as one batch
#      (benchmarks/large_bag.py).
#
# Run from the repository root on the GPU machine, with the wheels the image lacks in .whl/
# (openslide-python, openslide-bin, imagecodecs):
#     bash benchmarks/gpu_check.sh
# Logs and JSON go to $OUT (default benchmarks/out/gpu_check). GPU_CHECK_TINY=1 runs tiny sizes
# (a check of the script on a CPU); SKIP_WHEELS=1 uses the packages already installed.
set -u -o pipefail
OUT=${OUT:-benchmarks/out/gpu_check}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

if [ -n "${GPU_CHECK_TINY:-}" ]; then
  EXTRACT=(--teacher toy_vit --slides 2 --repeat 2 --workers 1 --batch 32 --max-patches 200
           --precision auto)
  COHORT=(--cases 4 6 --patches 500 --epochs 3 --threads 1)
  BAG=(--patches 20000)
  DEVICE=cpu
else
  EXTRACT=(--teacher virchow2 --slides 6 --repeat 5 --workers 12 --batch 256 --precision bf16)
  COHORT=(--cases 20 40 --patches 6000 --epochs 5 --threads 4)
  BAG=(--patches 150000)
  DEVICE=cuda
fi

{
  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  echo "cpus $(nproc); $(python3 --version)"
  python3 -c 'import torch, timm, numpy, h5py, openslide, imagecodecs, tifffile
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "timm", timm.__version__,
      "numpy", numpy.__version__, "h5py", h5py.__version__, "openslide", openslide.__version__,
      "imagecodecs", imagecodecs.__version__, "tifffile", tifffile.__version__)'
  python3 -m shazam --help > /dev/null && echo "python3 -m shazam: ok"
} 2>&1 | tee "$OUT/gpu_check.log"

status=0
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/gpu_check.log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$OUT/gpu_check.log"
  [ "$rc" -eq 0 ] || status=1
}

part extraction 175 python3 benchmarks/extract_job_gpu.py "${EXTRACT[@]}" \
  --workdir /tmp/extract_job --json "$OUT/extract_job.json"
cp /tmp/extract_job/job_cold.log /tmp/extract_job/job_timed.log "$OUT/" 2>/dev/null
part training 160 python3 benchmarks/cohort_memory.py "${COHORT[@]}" --device "$DEVICE" \
  --workdir /tmp/cohort_memory --out "$OUT/cohort_memory.json"
part large_bag 60 python3 benchmarks/large_bag.py "${BAG[@]}" --device "$DEVICE" \
  --workdir /tmp/large_bag --json "$OUT/large_bag.json"

echo "== summary" | tee -a "$OUT/gpu_check.log"
python3 - "$OUT" <<'EOF' 2>&1 | tee "$OUT/summary.txt" | tee -a "$OUT/gpu_check.log"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def gb(x):
    return "-" if x is None else f"{x / 1e9:.2f}"
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
e = load("extract_job.json")
if e:
    j, c = e["job"], e["cold"]
    print(f"extraction {e['teacher']} on {e['gpu']}: {j['slides']} slides, {j['patches']} patches "
          f"in {j['wall_s']:.1f}s = {j['per_s']:.0f}/s end to end; set-up to model on device "
          f"{j['setup_to_model_ready_s']:.2f}s (load {j['model_load_s']}s), first batch "
          f"{j['setup_to_first_batch_s']}s; slides only {j['steady_per_s']:.0f}/s; "
          f"model-only {e.get('model_only_per_s', float('nan')):.0f}/s; fraction "
          f"{e.get('fraction', float('nan')):.3f} (slides only {e.get('steady_fraction', float('nan')):.3f}); "
          f"GPU {j['gpu']}; cold job set-up {c['setup_to_model_ready_s']:.2f}s")
else:
    print("extraction: no result")
m = load("cohort_memory.json")
if m:
    for r in m["runs"]:
        gpu = r.get("peak_gpu_allocated_bytes")
        print(f"train n={r['cases']} cache={r['cache']} on {r['device']}: epoch0 {r['epoch_s']:.2f}s, "
              f"later {r['later_epoch_s']}, wall {r['wall_s']:.1f}s, RSS {r['peak_rss_bytes']/1e9:.2f} GB, "
              f"GPU alloc {gb(gpu)} GB, reserved {gb(r.get('peak_gpu_reserved_bytes'))} GB, "
              f"selected {r['selected_epoch']}")
    print("disk vs memory:", m["disk_vs_memory"])
    print("bars:", {k: round(v["value"], 3) for k, v in m["bars"].items()})
else:
    print("training: no result")
b = load("large_bag.json")
if b:
    for mode in ("streamed", "whole"):
        r = b[mode]
        gpu = r.get("gpu_max_allocated")
        print(f"large bag {b['patches']} {mode} on {r['device']}: RSS {r['maxrss']/1e9:.2f} GB, "
              f"GPU {gb(gpu)} GB, {r['seconds']:.2f}s")
    print(f"large bag max logit diff {b['max_logit_diff']:.2e}")
else:
    print("large bag: no result")
EOF
exit $status
