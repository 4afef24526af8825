#!/usr/bin/env bash
# Issue 5, round 7: one device run on one NVIDIA H200 (python3 3.12, torch 2.11+cu130 there),
# the new defaults against the old in one run. Round 6 (benchmarks/results/*round6*) measured
# each lever alone: FlashAttention-3 for unmasked attention 1.046x / 1.024x the lossless
# engine at 1328 / 1024, the GELU in the matmul's epilogue 1.020x / 1.011x, outputs within
# tolerance, all 30 GPU tests passed. Both are now defaults (ATTENTION_BACKEND=auto: FA3
# where it runs; GELU_EPILOGUE=true). This run measures stock diffusers against:
#   lossless              the new defaults at 1328x1328, 1024x1024, 512x512, 256x256,
#                         warmed up at every served size as a worker is (start-up cost),
#                         profiled at 1328/1024 (kernel kinds, busy fraction)
#   cudnn+separate-gelu   the defaults before: SDPA cuDNN-first, the GELU its own kernel
#   separate-gelu         at 512/256: the GELU epilogue at the CUDA-graphed sizes
# No GPU tests (round 6 ran them all) and no spread run (stock's own spread, round 6:
# latents 0.0034-0.0038), to fit the time left of this session's device budget.
# Everything lands in $OUT (4 files); the tables are printed last.
# Ends within DEADLINE (260 s): the benchmark gets what is left as a budget, skips sections
# that would start too late, and is killed 10 s before the end if it still runs (its JSON,
# verdict included, is rewritten after every section).
#
# How to call it (device tool `run`): carry [".whl"], timeout_s 280, kind nvidia-h200,
#   command: bash benchmarks/device_run.sh
# .whl/ holds diffusers 0.42.1, transformers 5.24.0 (what the demo model is tested with),
# pydantic, fastapi and what the image lacks of their needs, and FA3 built for torch 2.11:
# benchmarks/device_wheels.sh fills it.
#
# Time estimates, from round 6 (benchmarks/results/gpu_engine-h200-2026-11-26-round6.json):
#   wheels install and the import / FA3 check ............................ ~25 s
#   imports, CUDA start, the 20B random model built ...................... ~17 s
#   stock: warm-up 2 + 12 steps, four sizes .............................. ~30 s
#   lossless: warm-up of the 8 served sizes (48 s in round 6), 4 rows,
#     probes, profiles at 1328 and 1024 .................................. ~100 s
#   cudnn+separate-gelu: build, warm-up of its 4 sizes, 4 rows ........... ~35 s
#   separate-gelu: build, warm-up of 2 sizes, 2 rows ..................... ~15 s
set -uo pipefail
DEADLINE=260  # seconds after start by which everything must have ended
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_LOGS=recompiles
ALL=1328x1328+1024x1024+512x512+256x256
VARIANTS=lossless,cudnn+separate-gelu@$ALL,separate-gelu@512x512+256x256

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/services/common:$PWD/services/gpu-worker

{
    nvidia-smi
    python3 -c "import sys, torch, diffusers, transformers
print(sys.version); print('torch', torch.__version__, torch.version.cuda)
print('diffusers', diffusers.__version__, 'transformers', transformers.__version__)
print('device', torch.cuda.get_device_name(), torch.cuda.get_device_capability())
from importlib.metadata import version
from qwen_image_worker.engine.joint_attention import flash3_unavailable
print('flash_attn_3', version('flash_attn_3'), flash3_unavailable(torch.device('cuda'), 128) or 'usable')"
} >"$OUT/env.txt" 2>&1
tail -4 "$OUT/env.txt"

left() { echo $((DEADLINE - SECONDS)); }

nvidia-smi dmon -s u -d 1 >"$OUT/dmon.txt" 2>&1 &
DMON=$!
# Sections may not start later than this (counted from the benchmark's start, after its
# ~15 s of imports); each section after lossless runs ~35 s at most.
BUDGET=$(($(left) - 45))
timeout $(($(left) - 10)) python3 benchmarks/gpu_engine.py --steps 12 \
    --sizes 1328x1328,1024x1024,512x512,256x256 --variants "$VARIANTS" \
    --no-throughput --no-queue --no-spread --budget-s "$BUDGET" \
    --out "$OUT/gpu_engine.json" >"$OUT/gpu_engine.log" 2>&1
echo "benchmark: exit $? after ${SECONDS} s (budget ${BUDGET} s)"
kill "$DMON" 2>/dev/null

echo "== benchmark ($OUT/gpu_engine.json)"
python3 benchmarks/report_table.py "$OUT/gpu_engine.json"
