"""tools/fa3/build.sh's FlashAttention-3 wheel on this machine: pip installs it, this PyTorch
loads it (FA3 is built against PyTorch's stable C ABI, with another version's headers on the
device machine), its operators are registered, and diffusers and the worker see it. Its
kernels need a Hopper GPU: tests/worker/test_flash3_gpu.py runs them there.

`make test` builds the wheel first (`make fa3-wheel`: nvcc from PyPI, about 100 s, once per
machine); here build.sh only copies it out of its cache, with no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BUILD = Path(__file__).resolve().parents[2] / "tools" / "fa3" / "build.sh"
PROBE = """
import json, torch, flash_attn_interface
from diffusers.models import attention_dispatch
from qwen_image_worker.engine.joint_attention import flash3_unavailable
print(json.dumps({
    "schema": str(torch.ops.flash_attn_3.fwd.default._schema),
    "diffusers": attention_dispatch._CAN_USE_FLASH_ATTN_3,
    "worker": flash3_unavailable(torch.device("cpu"), 128),
}))
"""


def test_the_wheel_installs_loads_and_the_worker_sees_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    built = subprocess.run(
        [str(BUILD), str(tmp_path / "dist")], env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, f"run `make fa3-wheel` first?\n{built.stderr[-2000:]}"
    wheel = Path(built.stdout.splitlines()[-1])
    assert wheel.name.startswith("flash_attn_3-3.0.0b1.post1-") and wheel.stat().st_size > 100_000
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen = json.loads(probe.stdout.splitlines()[-1])
    assert seen["schema"].startswith("flash_attn_3::fwd(Tensor q, Tensor k, Tensor v,")
    assert seen["diffusers"] is True
    # Installed: what is missing now is the GPU, not the wheel.
    assert seen["worker"] == "FlashAttention-3 runs on CUDA GPUs only, not on cpu"
    # Varlen is compiled in (padded batches run over each element's used keys): the build
    # without it holds the message that refuses such a call.
    library = (site / "flash_attn_3" / "_C.abi3.so").read_bytes()
    assert b"does not support varlen" not in library
    assert b"seqused_k must have dtype int32" in library
