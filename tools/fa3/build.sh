#!/usr/bin/env bash
# Builds FlashAttention-3 for the worker (ATTENTION_BACKEND=auto, flash3): the Hopper (sm_90a)
# forward kernel for bf16 and head dim 128, the one Qwen-Image's joint attention runs, as a
# wheel `flash_attn_3` (about 470 KB) for one PyTorch version and any newer one.
#   tools/fa3/build.sh [OUT_DIR]          (default dist/; the wheel's path is printed last)
# No GPU is needed to build, and nothing beyond PyPI is fetched:
#   - the sources: FA3's hopper/ folder and its CUTLASS headers, as xformers' source
#     distribution on PyPI carries them (flash-attention's own sdist leaves them out);
#   - the compiler: NVIDIA's nvcc, its headers and libraries as PyPI wheels, for CUDA 13.0;
#   - PyTorch's headers: those of the PyTorch that will load the wheel. TORCH_VERSION=2.11.0
#     takes them from that PyPI wheel (the device machine's); unset, from $PYTHON's torch.
# FA3 is built against PyTorch's stable C ABI (flash_api_stable.cpp), so the wheel also loads
# in later PyTorch versions. Everything is cached per version in
#   ${QWEN_IMAGE_FA3_CACHE:-${XDG_CACHE_HOME:-~/.cache}/qwen-image-serving/fa3}
# (sources 30 MB, compiler 270 MB, a PyTorch version's headers and libraries 930 MB), the
# wheels too: a second run with the same inputs copies the wheel and prints its path.
# A build takes about 100 s on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)"
python="${PYTHON:-python3}"
[[ "$python" != */* ]] || python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
xformers_version=0.0.34
xformers_url=https://files.pythonhosted.org/packages/ef/2b/365151a1e2e6aa70c1bd66e0532e3d71915a28a34ebde3d9b068e8849f66/xformers-0.0.34.tar.gz
xformers_sha256=716bd9ffe61f46c2cc0536abf8b8c43ec594bea47a49394ea5cfa417e9de6a6f
cuda_version=13.0.88
cuda_wheels=(nvidia-cuda-nvcc==$cuda_version nvidia-cuda-crt==$cuda_version
  nvidia-nvvm==$cuda_version nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
cache="${QWEN_IMAGE_FA3_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen-image-serving/fa3}"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
log() { echo "fa3: $*" >&2; }

# The host compiler and the fetchers; Debian's packages where they are missing and we may.
missing=()
for tool in g++ curl unzip; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    log "needs ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2
fi

# Each input is fetched once into its own folder, completed by a rename.
fetch() { # fetch NAME COMMAND...: run COMMAND in a fresh folder, then keep it as $cache/NAME
  [[ -d "$cache/$1" ]] && return
  local stage
  stage="$(mktemp -d "$cache/.fetch.XXXXXX")"
  log "fetching $1"
  (cd "$stage" && "${@:2}") || { rm -rf "$stage"; exit 1; }
  mv "$stage" "$cache/$1"
}
get_sources() {
  curl -fsSL --retry 3 -o src.tar.gz "$xformers_url"
  echo "$xformers_sha256  src.tar.gz" | sha256sum -c --quiet
  tar xzf src.tar.gz --strip-components=3 "xformers-$xformers_version/third_party/flash-attention/hopper" \
    "xformers-$xformers_version/third_party/flash-attention/csrc/cutlass/include"
  rm src.tar.gz
}
get_toolchain() {
  "$python" -m pip install --quiet --no-deps --target . "${cuda_wheels[@]}"
}
get_torch_headers() {
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d . "torch==$TORCH_VERSION"
  unzip -q torch-*.whl 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch_cuda.so' \
    torch/version.py
  rm torch-*.whl
}

fetch "src-xformers-$xformers_version" get_sources
fetch "cuda-$cuda_version" get_toolchain
src="$cache/src-xformers-$xformers_version"
cuda="$cache/cuda-$cuda_version/nvidia/cu13"
if [[ -n "${TORCH_VERSION:-}" ]]; then
  fetch "pytorch-$TORCH_VERSION" get_torch_headers
  torch_dir="$cache/pytorch-$TORCH_VERSION/torch"
else
  TORCH_VERSION="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
  torch_dir="$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
fi
# The extension links CUDA 13's runtime, which a PyTorch built for CUDA 12 does not load.
torch_cuda="$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'$/\1/p" "$torch_dir/version.py")"
if [[ "${torch_cuda%%.*}" != 13 ]]; then
  log "PyTorch $TORCH_VERSION here is built for CUDA '${torch_cuda:-none}'; FA3 is built with CUDA 13.0: use a CUDA 13 build of PyTorch (PyPI's default)"
  exit 1
fi

# The wheel's build tag is the PyTorch version whose headers it was built with (a version's
# local label, "+...", would put a '+' in the file name, which some transfers refuse).
version=3.0.0b1.post1  # post1: varlen compiled in
build_tag="${TORCH_VERSION//./}"
name="flash_attn_3-$version-$build_tag-cp39-abi3-linux_x86_64.whl"
summary="FlashAttention-3 forward, bf16, head dim 128, sm_90a, from xformers $xformers_version's \
sources, built with PyTorch $TORCH_VERSION's headers (qwen-image-serving tools/fa3/build.sh)"
# Built wheels are kept by what made them: this script, the packer and the PyTorch version.
stamp="$(cat "$here/build.sh" "$here/pack_wheel.py" | sha256sum | cut -c1-12)"
built="$cache/wheels-$stamp/$name"
if [[ -f "$built" ]]; then
  cp "$built" "$out_dir/"
  echo "$out_dir/$name"
  exit 0
fi

# Everything Qwen-Image's attention does not use is compiled out: backward, split-KV, paged
# and appended KV, local windows, softcap, packed GQA, fp16, fp8, other head dims and
# Ampere. What is left: flash_fwd_hdim128_bf16_sm90.cu, non-causal and causal, with and
# without thread-block clusters, with and without varlen (its `seqused_k` runs the joint
# attention of a batch whose texts are padded: joint_attention.py).
features=()
for feature in BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 FP8 \
  HDIM64 HDIM96 HDIM192 HDIM256 SM8x HDIMDIFF64 HDIMDIFF192; do
  features+=("-DFLASHATTENTION_DISABLE_$feature")
done
# FA3's setup.py flags (nvcc) and PyTorch's extension flags (both).
nvcc_flags=(-O3 -std=c++17 --use_fast_math -lineinfo --expt-relaxed-constexpr
  -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -DCUTLASS_ENABLE_GDC_FOR_SM90
  -DCUTLASS_DEBUG_TRACE_LEVEL=0 -DNDEBUG -D__CUDA_NO_HALF_OPERATORS__
  -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
  -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC -gencode arch=compute_90a,code=sm_90a
  --threads "$(nproc)")
includes=(-I"$src/hopper" -I"$src/csrc/cutlass/include" -I"$cuda/include" -I"$cuda/include/cccl")
python_include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"

start=$SECONDS
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
log "building FA3 (bf16, head dim 128, sm_90a) for torch $TORCH_VERSION in $build"
export PATH="$cuda/bin:$PATH"
pids=()
nvcc -c "$src/hopper/instantiations/flash_fwd_hdim128_bf16_sm90.cu" -o "$build/fwd.o" \
  "${includes[@]}" "${nvcc_flags[@]}" "${features[@]}" &
pids+=($!)
nvcc -c "$src/hopper/flash_prepare_scheduler.cu" -o "$build/scheduler.o" \
  "${includes[@]}" "${nvcc_flags[@]}" "${features[@]}" &
pids+=($!)
# -Wno-deprecated-declarations: FA3 uses stable-ABI helpers that newer PyTorch renamed.
g++ -c "$src/hopper/flash_api_stable.cpp" -o "$build/api.o" "${includes[@]}" \
  -I"$torch_dir/include" -I"$python_include" -O3 -std=c++17 -fPIC -Wno-deprecated-declarations \
  -D_GLIBCXX_USE_CXX11_ABI=1 -DPy_LIMITED_API=0x03090000 -DTORCH_STABLE_ONLY "${features[@]}" &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
mkdir -p "$build/wheel/flash_attn_3"
g++ -shared -o "$build/wheel/flash_attn_3/_C.abi3.so" "$build"/{api,fwd,scheduler}.o \
  -L"$torch_dir/lib" -L"$cuda/lib" -ltorch_cpu -ltorch_cuda -l:libcudart.so.13
cp "$src/hopper/__init__.py" "$build/wheel/flash_attn_3/"
cp "$src/hopper/flash_attn_interface.py" "$build/wheel/"
"$python" "$here/pack_wheel.py" "$build/wheel" "$build/$name" "$summary" "torch>=$TORCH_VERSION"
mkdir -p "$(dirname "$built")"
mv "$build/$name" "$built"
cp "$built" "$out_dir/"
log "built in $((SECONDS - start)) s"
echo "$out_dir/$name"
