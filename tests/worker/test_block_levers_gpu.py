"""Real RoPE and the GELU epilogue on a CUDA GPU, at Qwen-Image's widths, compiled as the
worker compiles them: the paths a CPU cannot take (cuBLASLt's epilogue, inductor's Triton
kernels).

Selected with `-m gpu` on the GPU machine; a CPU run deselects them (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

from qwen_image_worker.engine.acceleration import relative_error
from qwen_image_worker.engine.feed_forward import EpilogueGELU
from qwen_image_worker.engine.joint_attention import apply_rotary_emb_real

pytestmark = pytest.mark.gpu

WIDTH = 3072  # the model's width; the MLP's hidden is 4x
TOKENS = 4096  # 1024x1024
HEADS, HEAD_DIM = 24, 128
BF16_ROUNDING = 2**-8


def test_the_gelu_epilogue_is_the_tanh_gelu_of_the_matmul(cuda: torch.device) -> None:
    torch.manual_seed(0)
    stock = GELU(WIDTH, 4 * WIDTH, approximate="tanh").to(cuda, torch.bfloat16)
    epilogue = EpilogueGELU(stock.proj)
    x = torch.randn(1, TOKENS, WIDTH, device=cuda, dtype=torch.bfloat16)
    product = F.linear(x.double(), stock.proj.weight.double(), stock.proj.bias.double())
    exact = F.gelu(product, approximate="tanh")
    with torch.inference_mode():
        ours = epilogue(x)
        compiled = torch.compile(epilogue, fullgraph=True)(x)
        theirs = stock(x)
    assert ours.shape == theirs.shape and ours.dtype == torch.bfloat16
    # One bf16 rounding (the epilogue's) against stock's two: no further from the exact.
    assert relative_error(ours, exact) <= relative_error(theirs, exact) + BF16_ROUNDING / 4
    assert relative_error(ours, exact) < BF16_ROUNDING
    assert relative_error(compiled, ours) < BF16_ROUNDING / 2  # compiled as well


def test_the_gelu_epilogue_approximates_with_tanh_as_diffusers_does(cuda: torch.device) -> None:
    """In fp32 the rounding (~1e-7) is far below the gap between the tanh and the exact (erf)
    GELU (up to 5e-4): the epilogue must land on the tanh one, as on every CUDA path (with
    room for a hardware tanh approximation inside cuBLASLt)."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(256, 1024, device=cuda)
    x = 2 * torch.randn(512, 256, device=cuda)
    product = F.linear(x.double(), proj.weight.double(), proj.bias.double())
    with torch.inference_mode():
        ours = EpilogueGELU(proj)(x).double()
    to_tanh = (ours - F.gelu(product, approximate="tanh")).norm().item()
    to_erf = (ours - F.gelu(product)).norm().item()
    assert to_tanh < to_erf / 3


def test_compiled_real_rope_equals_the_complex_one(cuda: torch.device) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, TOKENS, HEADS, HEAD_DIM, device=cuda, dtype=torch.bfloat16)
    angles = torch.randn(TOKENS, HEAD_DIM // 2, device=cuda)
    freqs = torch.polar(torch.ones_like(angles), angles)
    with torch.inference_mode():
        stock = apply_rotary_emb_qwen(x, freqs, use_real=False)
        compiled = torch.compile(apply_rotary_emb_real, fullgraph=True, dynamic=True)(x, freqs)
    assert compiled.dtype == torch.bfloat16
    # The same fp32 products, rounded to bf16 once: a bf16 step apart at most, rarely.
    torch.testing.assert_close(compiled, stock)
    assert relative_error(compiled, stock) < BF16_ROUNDING / 4
