#!/usr/bin/env bash
# The GPU measurements of issue 33, in one run of about ten minutes on one H100 or H200, most
# wanted first; everything is written under $OUT as it is measured (a run cut short keeps it):
#   machine.txt    the device, the driver, the commit, the packages
#   attention.md   attention alone, forward + backward: einsum vs XLA vs cuDNN (time, temporaries,
#                  largest distance from the einsum path's output), 1B and 8B heads, T 512 and 2048
#   accel.md/json  bench_accel.py's session rows: MFU and tokens/s at 1B/3B/8B, PEFT beside us at its
#                  MetaMathQA shape, plan's figure against the measured peak (8B at 2048 among
#                  them), weight copies in each compiled step, decode against the bandwidth limit
# Needs, on the GPU machine: jax with CUDA, torch with CUDA, transformers, peft (nothing is
# downloaded: every weight is made on the device).
#     OUT=/some/dir bash scripts/bench/gpu_session.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi 2>&1 | head -15
  python - <<'PY'
import importlib
for name in ("jax", "jaxlib", "torch", "transformers", "peft"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "MISSING", type(e).__name__)
import jax
print(jax.devices(), jax.default_backend())
PY
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
timeout 120 python scripts/bench/bench_attention.py --lengths 512,2048 --rounds 10 > "$OUT/attention.md" 2>&1
tail -12 "$OUT/attention.md"
timeout 450 python scripts/bench/bench_accel.py --rows session --rounds 5 --timeout 240 --out "$OUT" \
  > "$OUT/accel.log" 2>&1
tail -30 "$OUT/accel.log"
