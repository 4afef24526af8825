"""ATTENTION_BACKEND=flash3 on a Hopper GPU, with the wheel tools/fa3/build.sh builds: FA3's
attention against SDPA's, and a transformer of Qwen-Image's head dim with it, eager, compiled
as the worker compiles it, and replayed as a CUDA graph.

Selected with `-m gpu` on the GPU machine; a CPU run deselects them (tests/conftest.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from diffusers import QwenImageTransformer2DModel
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from qwen_image_worker.engine.acceleration import (
    _SDPA_ORDER,
    choose_attention_backend,
    lossless_tolerance,
    relative_error,
)
from qwen_image_worker.engine.cuda_graphs import AcceleratedForward
from qwen_image_worker.engine.joint_attention import (
    FLASH3_HEAD_DIM,
    attention_over_used_keys,
    flash3_unavailable,
    install_joint_attention,
)

from .conftest import forward_inputs, random_transformer

pytestmark = pytest.mark.gpu

HEADS = 24
TEXT, IMAGE = 77, 4096  # a prompt and 1024x1024
BF16_ROUNDING = 2**-8
TEXT_DIM = 64
FA3_KERNEL = "FlashAttnFwdSm90"  # in the name of FA3's Hopper forward kernel
VARLEN_KERNEL = "prepare_varlen_num_blocks"  # FA3's scheduler, for seqused_k
SDPA_KERNELS = ("cudnn", "fmha", "pytorch_flash")  # cuDNN's, efficient's and flash's


def test_the_wheel_is_installed_and_auto_chooses_it_for_qwen_images_head_dim(
    cuda: torch.device,
) -> None:
    assert flash3_unavailable(cuda, FLASH3_HEAD_DIM) is None
    assert choose_attention_backend("auto", cuda, transformer(cuda)) == "flash3"
    other = random_transformer(1, 2, TEXT_DIM)  # head dim 16: no FA3 kernel for it
    assert choose_attention_backend("auto", cuda, other) == "cudnn"
    with pytest.raises(RuntimeError, match="head dim 128"):
        choose_attention_backend("flash3", cuda, other)


def test_flash3_attention_is_as_close_to_the_exact_one_as_cudnn(cuda: torch.device) -> None:
    torch.manual_seed(0)
    shape = (1, TEXT + IMAGE, HEADS, FLASH3_HEAD_DIM)
    q, k, v = (torch.randn(shape, device=cuda, dtype=torch.bfloat16) for _ in range(3))
    flash3 = partial(dispatch_attention_fn, backend=AttentionBackendName._FLASH_3)
    with torch.inference_mode():
        ours = flash3(q, k, v)
        compiled = torch.compile(flash3, fullgraph=True, dynamic=True)(q, k, v)
        bhsd = [t.transpose(1, 2) for t in (q, k, v)]
        exact = F.scaled_dot_product_attention(*(t.float() for t in bhsd)).transpose(1, 2)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn = F.scaled_dot_product_attention(*bhsd).transpose(1, 2)
    assert ours.shape == shape and ours.dtype == torch.bfloat16
    # Rounding the output to bf16 alone costs about 2^-8 / sqrt(3); a fault costs O(1).
    assert relative_error(ours, exact) < 2 * BF16_ROUNDING
    assert relative_error(ours, exact) <= relative_error(cudnn, exact) + BF16_ROUNDING / 4
    assert torch.equal(compiled, ours)  # the same kernel behind torch.compile


def transformer(cuda: torch.device) -> QwenImageTransformer2DModel:
    """Two blocks of Qwen-Image's head dim (128) and RoPE axes, random weights, bf16."""
    model = random_transformer(2, 2, TEXT_DIM, FLASH3_HEAD_DIM, rope_axes=(16, 56, 56))
    return model.to(cuda, torch.bfloat16)


def inputs(cuda: torch.device, masked: bool) -> dict[str, object]:
    kwargs = forward_inputs(24, 40, 13, TEXT_DIM)
    for name in ("hidden_states", "encoder_hidden_states", "timestep"):
        kwargs[name] = kwargs[name].to(cuda, torch.bfloat16)  # type: ignore[union-attr]
    if masked:  # a batch of two prompts, the second one 5 tokens shorter
        mask = torch.ones(2, 13, dtype=torch.long, device=cuda)
        mask[1, 8:] = 0
        kwargs["encoder_hidden_states_mask"] = mask
    return kwargs


def kernels(
    forward: Callable[..., tuple[torch.Tensor]], kwargs: dict[str, object]
) -> tuple[torch.Tensor, str]:
    """forward(**kwargs)'s output and the names of the GPU kernels it ran."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.inference_mode():
        out = forward(**kwargs)[0]
        torch.cuda.synchronize()
    return out, " ".join(event.name for event in prof.events())


@pytest.mark.parametrize(("masked", "padded"), [(False, False), (True, False), (True, True)])
def test_a_compiled_transformer_with_flash3_matches_stock(
    cuda: torch.device, masked: bool, padded: bool
) -> None:
    """FA3 takes the unmasked joint attention through diffusers' backend; masked calls
    (batched prompts, CFG joined) run SDPA, or with `flash3_padded` FA3 over each element's
    used keys (FA3's varlen path, which launches its scheduler's prepare_varlen kernel).
    Compiled as the worker compiles: inductor, dynamic shapes, whole blocks."""
    stock = transformer(cuda)
    ours = copy.deepcopy(stock)
    install_joint_attention(ours, fuse=True, real_rope=True, flash3=True, flash3_padded=padded)
    ours.compile_repeated_blocks(fullgraph=True, dynamic=True)
    kwargs = inputs(cuda, masked)
    try:
        with sdpa_kernel(_SDPA_ORDER["flash3"], set_priority=True):
            with torch.inference_mode():
                ours(**kwargs)  # compiles
            out, names = kernels(ours, kwargs)
        with torch.inference_mode():
            reference = stock(**kwargs)[0]
    finally:
        torch._dynamo.reset()
    assert (FA3_KERNEL in names) == (padded or not masked)
    assert (VARLEN_KERNEL in names) == padded
    assert bool([sdpa for sdpa in SDPA_KERNELS if sdpa in names]) == (masked and not padded)
    assert relative_error(out, reference) < lossless_tolerance()


def test_attention_over_used_keys_on_cuda_is_sdpa_with_the_other_keys_masked(
    cuda: torch.device,
) -> None:
    torch.manual_seed(1)
    shape = (2, TEXT + IMAGE, HEADS, FLASH3_HEAD_DIM)
    q, k, v = (torch.randn(shape, device=cuda, dtype=torch.bfloat16) for _ in range(3))
    used = torch.tensor([TEXT + IMAGE, IMAGE + 40], dtype=torch.int32, device=cuda)
    kept = torch.arange(shape[1], device=cuda)[None, :] < used[:, None]
    with torch.inference_mode():
        ours = attention_over_used_keys(q, k, v, used)
        compiled = torch.compile(attention_over_used_keys, fullgraph=True, dynamic=True)(
            q, k, v, used
        )
        bhsd = [t.transpose(1, 2) for t in (q, k, v)]
        exact = F.scaled_dot_product_attention(
            *(t.float() for t in bhsd), attn_mask=kept[:, None, None, :]
        ).transpose(1, 2)
    assert ours.shape == shape and ours.dtype == torch.bfloat16
    assert relative_error(ours, exact) < 2 * BF16_ROUNDING
    assert torch.equal(compiled, ours)


@pytest.mark.parametrize("masked", [False, True])
def test_a_forward_with_flash3_replays_as_a_cuda_graph(cuda: torch.device, masked: bool) -> None:
    model = transformer(cuda)
    install_joint_attention(model, fuse=True, real_rope=True, flash3=True, flash3_padded=masked)
    kwargs = inputs(cuda, masked)
    with torch.inference_mode():
        eager = model(**kwargs)[0]
        graphed = AcceleratedForward(model.forward, _SDPA_ORDER["flash3"], 4 * 512 * 512)
        first, again = graphed(**kwargs)[0], graphed(**kwargs)[0]
    assert graphed.stats.captured == 1 and graphed.stats.replayed == 2
    assert graphed.stats.failed == 0
    assert torch.equal(first, again)
    assert relative_error(first, eager) < BF16_ROUNDING / 8  # the same kernels, replayed
