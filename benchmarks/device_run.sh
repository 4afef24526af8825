#!/usr/bin/env bash
# Issue 5's one device run, on one NVIDIA H200 (python3 3.12, torch 2.11+cu130 there):
# the GPU tests, then stock diffusers against the worker's engine. Everything lands in $OUT
# (6 files); a short summary table is printed last. Finishes inside 9 minutes: the benchmark
# is given what is left as a budget, skips sections that would start too late, and is killed
# 10 s before the end if it still runs (its JSON report is rewritten after every section).
#
# How to call it (device tool `run`): carry [".whl"], timeout_s 600, kind nvidia-h200,
#   command: bash benchmarks/device_run.sh
# .whl/ holds diffusers 0.42.1, transformers 5.24.0 (what the demo model is tested with),
# pydantic, pydantic-core, pydantic-settings, fastapi, starlette, opentelemetry-api and
# their missing needs (annotated-types, typing-inspection, typing-extensions, python-dotenv,
# regex), made with the pip download command of /work/.library/device/README.md.
#
# Time estimates from DESIGN.md section 6 (H200, bf16, true CFG; s/step = two forwards):
#   wheels install and an import check ............................... ~20 s
#   pytest tests/worker -m gpu: demo model, one tiny block compiled twice ~60-90 s (cap 150)
#   benchmark, --steps 20:
#     import, 20B random weights built on the GPU ..................... ~30 s
#     stock 1328/1024/512: 20 x (0.608 + 0.368 + 0.340) s + warm-ups ... ~30 s
#     stock's spread runs (efficient SDPA, 0.448/0.227/0.168 s a forward) ~35 s
#     stock throughput 512 and 256, batches 1,2,4,8, 8 steps ........... ~30 s
#     levers + start-up warm-up of the 8 served sizes (one compile) .... ~90-150 s
#     engine 1328/1024/512 at 20 steps (0.246/0.133/~0.05 s a forward) . ~20 s
#     engine throughput (one recompile for batch > 1) .................. ~60 s
#     full queue, 8 jobs of 512x512 at 10 steps ........................ ~10 s
#   total about 6.5-8 minutes; compile time is the unknown, hence the budget.
set -uo pipefail
DEADLINE=530  # seconds after start by which everything must have ended (9 min = 540)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_LOGS=recompiles

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/services/common:$PWD/services/gpu-worker

{
    nvidia-smi
    python3 -c "import sys, torch, diffusers, transformers, pydantic, fastapi
print(sys.version); print('torch', torch.__version__, torch.version.cuda)
print('diffusers', diffusers.__version__, 'transformers', transformers.__version__)
print('pydantic', pydantic.__version__, 'fastapi', fastapi.__version__)
import qwen_image_worker.queue, qwen_image_worker.engine.acceleration
print('worker imports ok; device', torch.cuda.get_device_name())"
} >"$OUT/env.txt" 2>&1
tail -3 "$OUT/env.txt"

left() { echo $((DEADLINE - SECONDS)); }

timeout 150 python3 -m pytest tests/worker -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $? after ${SECONDS} s"

nvidia-smi dmon -s u -d 1 >"$OUT/dmon.txt" 2>&1 &
DMON=$!
# Sections may not start later than this (counted from the benchmark's start, after its
# ~15 s of imports); the longest one (a compile, or a batch recompile) runs ~100 s more.
BUDGET=$(($(left) - 130))
if [ "$BUDGET" -gt 60 ]; then
    timeout $(($(left) - 10)) python3 benchmarks/gpu_engine.py --steps 20 \
        --budget-s "$BUDGET" --out "$OUT/gpu_engine.json" >"$OUT/gpu_engine.log" 2>&1
    echo "benchmark: exit $? after ${SECONDS} s (budget ${BUDGET} s)"
else
    echo "benchmark: not started, only $(left) s left"
fi
kill "$DMON" 2>/dev/null

echo "== gpu tests ($OUT/gpu_tests.log)"
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
echo "== benchmark ($OUT/gpu_engine.json)"
python3 benchmarks/report_table.py "$OUT/gpu_engine.json"
