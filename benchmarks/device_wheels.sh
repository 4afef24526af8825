#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what benchmarks/device_run.sh installs on the device
# machine, where nothing can be fetched: its image has python3 3.12 and torch 2.11+cu130 but
# not these. Carry it with the run: carry [".whl"] (about 24 MB of the 64 MiB allowed).
#   the worker's own needs, at the versions the CPU tests run: diffusers, transformers,
#   pydantic and pydantic-settings, fastapi, and what the image lacks of theirs;
#   FlashAttention-3 for torch 2.11 (tools/fa3/build.sh).
# Idempotent: pip skips wheels already there, build.sh copies a cached build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 transformers==5.24.0 pydantic==2.14.4 pydantic-core==2.50.5 \
  pydantic-settings==2.16.3 fastapi==0.165.0 starlette==1.10.0 opentelemetry-api==1.45.2 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  python-dotenv==1.2.4 regex==2026.11.19
TORCH_VERSION=2.11.0 PYTHON="$python" tools/fa3/build.sh .whl >/dev/null
du -sh .whl
