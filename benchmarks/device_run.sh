#!/usr/bin/env bash
# One device run on one NVIDIA H200 (python3 3.12, torch 2.11+cu130 there): the GPU tests,
# then the engine against stock diffusers with today's defaults (docs/performance.md):
#   GPU tests       all of them (35; the 2 of test_edit_levers_gpu.py not yet run)
#   lossless        the defaults at 1328x1328, 1024x1024, 512x512, 256x256, warmed up at
#                   every served size; profiled at 1328/1024; probed at 512/256
#   queue           16 jobs at once through the worker's JobQueue at 512x512 and 256x256,
#                   per batch limit 1, 2, 4, 8: images/s, busy fraction, pictures vs alone
#   edit            1024x1024 from one 1024x1024 picture: stock QwenImageEditPlusPipeline
#                   (measured with the stock rows) against the EditEngine with the lossless
#                   levers (right after them), the generation model's transformer and VAE
#   sdpa-padded     at 512/256: what FA3 over used keys (the default) gains over SDPA's mask
#   fp8             at 1328/1024/512: FP8 row-wise matmuls on top of the defaults, profiled
#                   at 1328/1024: where its time goes
# in that order: the benchmark skips what would start too late.
# Everything lands in $OUT (6 files); the tables are printed last.
# Ends within DEADLINE (560 s): the benchmark gets what is left as a budget, skips sections
# that would start too late, and is killed 10 s before the end if it still runs (its JSON,
# verdict included, is rewritten after every section).
#
# How to call it (device tool `run`): carry [".whl"], timeout_s 590, kind nvidia-h200,
#   command: bash benchmarks/device_run.sh
# .whl/ holds diffusers 0.42.1, transformers 5.24.0 (what the demo model is tested with),
# pydantic, fastapi and what the image lacks of their needs, and FA3 built for torch 2.11:
# benchmarks/device_wheels.sh fills it.
#
# Time estimates, from earlier runs (the machine started in about 30 s):
#   wheels install and the import / FA3 check ............................ ~25 s
#   pytest tests/worker -m gpu: 33 tests (before the edit ones) ........... ~160 s (cap 240)
#   benchmark, --steps 12:
#     imports, CUDA start, the 20B random model built .................... ~17 s
#     stock: warm-up 2 + 12 steps + a spread run, four sizes ............. ~45 s
#     lossless: warm-up of the 8 served sizes (37 s), 4 rows, probes,
#       profiles at 1328 and 1024 ........................................ ~100 s
#     queue: 2 sizes x 4 batch limits x 16 jobs of 10 steps ............. ~60 s
#     edit: stock (warm-up 2 + 12 steps + spread), a rebuild, the engine's
#       warm-up and rows .......................... not yet timed on a device
#     sdpa-padded, fp8: build, (quantise,) warm-up, rows .................. ~30 s each
set -uo pipefail
DEADLINE=560  # seconds after start by which everything must have ended
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_LOGS=recompiles
VARIANTS=lossless,sdpa-padded@512x512+256x256,fp8@1328x1328+1024x1024+512x512

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

timeout 240 python3 -m pytest tests/worker -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $? after ${SECONDS} s"

nvidia-smi dmon -s u -d 1 >"$OUT/dmon.txt" 2>&1 &
DMON=$!
# Sections may not start later than this (counted from the benchmark's start, after its
# ~15 s of imports); each section after lossless runs ~30 s.
BUDGET=$(($(left) - 45))
if [ "$BUDGET" -gt 60 ]; then
    timeout $(($(left) - 10)) python3 benchmarks/gpu_engine.py --steps 12 \
        --sizes 1328x1328,1024x1024,512x512,256x256 --variants "$VARIANTS" \
        --no-throughput --budget-s "$BUDGET" \
        --out "$OUT/gpu_engine.json" >"$OUT/gpu_engine.log" 2>&1
    echo "benchmark: exit $? after ${SECONDS} s (budget ${BUDGET} s)"
else
    echo "benchmark: not started, only $(left) s left"
fi
kill "$DMON" 2>/dev/null

echo "== gpu tests ($OUT/gpu_tests.log)"
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
echo "== benchmark ($OUT/gpu_engine.json)"
python3 benchmarks/report_table.py "$OUT/gpu_engine.json"
