from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch
from diffusers import QwenImageTransformer2DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from qwen_image_worker.engine.acceleration import lossless_tolerance, relative_error
from qwen_image_worker.engine.base import ImageSpec
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.loading import load_pipeline

# Sizes of the gpu tests (tests/worker/*_gpu.py).
GRAPHED = (64, 64)  # at most 512x512 pixels: replayed as a CUDA graph
COMPILED = (1024, 576)  # larger: compiled blocks, no graph
# What `accelerate(..., allow_cpu=True)` pulls at the default settings: a GPU worker's levers,
# as far as a CPU runs them ('auto' without FA3: SDPA, cuDNN first).
CPU_LEVERS = [
    "fuse_qkv",
    "real_rope",
    "gelu_epilogue",
    "vae_conv2d",
    "vae_channels_last",
    "attention_cudnn",
    "paired_cfg",
]


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    return torch.device("cuda")


@pytest.fixture(scope="session")
def engine() -> Engine:
    torch.set_num_threads(1)
    return Engine(load_pipeline(None, torch.device("cpu")))


def spec(**overrides: object) -> ImageSpec:
    values: dict[str, object] = {
        "prompt": "a red fox in the snow",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "guidance_scale": 4.0,
        "seed": 7,
    }
    values.update(overrides)
    return ImageSpec(**values)  # type: ignore[arg-type]


def random_transformer(
    layers: int,
    heads: int,
    text_dim: int,
    head_dim: int = 16,
    rope_axes: tuple[int, int, int] = (8, 4, 4),
) -> QwenImageTransformer2DModel:
    """A small transformer with random weights from seed 0; more heads and layers than the
    demo model, so head splits and the edge blocks are exercised. `rope_axes` sum to
    `head_dim`."""
    torch.manual_seed(0)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        axes_dims_rope=rope_axes,
    ).eval()


def forward_inputs(tokens_h: int, tokens_w: int, text: int, text_dim: int) -> dict[str, object]:
    """A batch of two (cond and uncond) with random latents and text for one forward."""
    return {
        "hidden_states": torch.randn(2, tokens_h * tokens_w, 16),
        "encoder_hidden_states": torch.randn(2, text, text_dim),
        "timestep": torch.full((2,), 0.5),
        "img_shapes": [[(1, tokens_h, tokens_w)]] * 2,
        "return_dict": False,
    }


def compile_blocks_and_vary_shapes(
    transformer: QwenImageTransformer2DModel, text_dim: int
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Regionally compile `transformer`'s blocks (dynamic shapes, aot_eager) and run three
    image sizes and prompt lengths; returns the graphs dynamo made for the second and third
    (none where dynamic shapes cover them; how many the first needs depends on PyTorch's
    version), and the compiled and the eager output of the first. Sizes equal no model
    width: dynamo would tie equal sizes to one symbol."""
    torch._dynamo.reset()
    first = forward_inputs(5, 7, 9, text_dim=text_dim)
    try:
        with torch.no_grad():
            eager = transformer(**first)[0]
            for block in transformer.transformer_blocks:
                block.compile(fullgraph=True, dynamic=True, backend="aot_eager")
            torch._dynamo.utils.counters.clear()
            compiled = transformer(**first)[0]
            first_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            transformer(**forward_inputs(6, 7, 11, text_dim=text_dim))
            transformer(**forward_inputs(3, 10, 23, text_dim=text_dim))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - first_graphs
        return graphs, compiled, eager
    finally:
        torch._dynamo.reset()


@contextmanager
def captured(engine: Engine) -> Iterator[dict[str, torch.Tensor]]:
    """The VAE's input latents and output pixels (floats) of the images made inside."""
    seen: dict[str, torch.Tensor] = {}
    vae = engine.pipe.vae
    handles = [
        vae.post_quant_conv.register_forward_pre_hook(
            lambda _m, args: seen.__setitem__("latents", args[0].float().cpu())
        ),
        vae.decoder.register_forward_hook(
            lambda _m, _a, out: seen.__setitem__("pixels", out.float().cpu())
        ),
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def assert_matches_stock(ours: dict[str, torch.Tensor], plain: Engine, job: ImageSpec) -> None:
    """`ours` (`captured` of an accelerated engine's `job`) is the levers-off engine's picture
    within the lossless tolerance, whose spread is that engine with another exact attention
    kernel (a CUDA one); another seed lands far outside it, so the tolerance separates."""
    with captured(plain) as stock:
        plain.generate(job, lambda: False)
    with captured(plain) as other_kernel, sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        plain.generate(job, lambda: False)
    with captured(plain) as other_seed:
        plain.generate(replace(job, seed=job.seed + 1), lambda: False)
    for name in ("latents", "pixels"):
        spread = relative_error(other_kernel[name], stock[name])
        assert relative_error(ours[name], stock[name]) <= lossless_tolerance(spread), name
    assert relative_error(other_seed["latents"], stock["latents"]) > 5 * lossless_tolerance()


class OpLog(TorchDispatchMode):
    """The operators called under it, by name, custom ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
