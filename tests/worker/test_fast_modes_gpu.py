"""The opt-in fast modes on a CUDA GPU: FP8 matmuls through torch._scaled_mm and the step
cache, each composed with the default levers (regional compile, CUDA graphs), on the demo
model with 4 blocks in bf16. Off by default, and within a stated distance of the lossless
engine's output.

Selected with `-m gpu` on the GPU machine; a CPU run deselects them (tests/conftest.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from qwen_image_worker.engine.acceleration import (
    Accelerated,
    Levers,
    accelerate,
    relative_error,
)
from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.fp8 import Fp8Linear, quantise
from qwen_image_worker.settings import WorkerSettings

from .conftest import COMPILED, GRAPHED, captured, spec

pytestmark = pytest.mark.gpu

JOB = spec(seed=21, num_inference_steps=8)
# Stated deviations from the lossless engine (latents, relative_error), for this model and
# job. Measured on the CPU: FP8 in every block moves the latents by 0.005-0.009; the step
# cache at 0.5, which skips 12-14 of the 16 forwards here, by 0.025-0.032; bf16 and fast
# accumulation add about 0.005. Another seed is 1.4 away.
FP8_BOUND = 0.05
CACHE_BOUND = 0.1
CACHE_THRESHOLD = 0.5


def build(device: torch.device, **settings: Any) -> tuple[Engine, Accelerated]:
    """The 4-block demo model in bf16 with the default levers and `settings`, warmed up."""
    pipe = build_demo_pipeline(num_layers=4).to(device=device, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    done = accelerate(pipe, Levers.from_settings(WorkerSettings.model_construct(**settings)))
    engine = Engine(pipe, warmup_sizes=[COMPILED])
    engine.warm_up(spec(prompt="warm-up", width=GRAPHED[0], height=GRAPHED[1]))
    return engine, done


@pytest.fixture(scope="module")
def lossless(cuda: torch.device) -> tuple[Engine, Accelerated]:
    return build(cuda)


@pytest.fixture(scope="module")
def fp8(cuda: torch.device) -> tuple[Engine, Accelerated]:
    return build(cuda, fp8_matmuls=True)


@pytest.fixture(scope="module")
def cached(cuda: torch.device) -> tuple[Engine, Accelerated]:
    return build(cuda, step_cache=True, step_cache_threshold=CACHE_THRESHOLD)


def latents(engine: Engine, size: tuple[int, int], seed: int = JOB.seed) -> torch.Tensor:
    with captured(engine) as seen:
        engine.generate(replace(JOB, width=size[0], height=size[1], seed=seed), lambda: False)
    return seen["latents"]


@pytest.mark.parametrize("rowwise", [True, False])
def test_the_fp8_layer_on_cuda_is_the_product_of_its_quantised_operands(
    cuda: torch.device, rowwise: bool
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(cuda, torch.bfloat16)
    layer = Fp8Linear.from_linear(linear, rowwise)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for rows in (7, 77):  # not multiples of 16, as text lengths are not
        x = torch.randn(2, rows, 64, device=cuda, dtype=torch.bfloat16)
        with torch.no_grad():
            out = layer(x)
            again = compiled(x)
        qx, sx = quantise(x.reshape(-1, 64), rowwise)
        qw, sw = quantise(linear.weight.detach(), rowwise)
        product = (qx.double() * sx.double()) @ (qw.double() * sw.double()).T
        reference = (product + linear.bias.detach().double()).reshape(2, rows, 48)
        assert out.dtype == torch.bfloat16 and out.shape == (2, rows, 48)
        # bf16 output rounding (2^-8) and fast accumulation; a wrong scale is off by far more.
        assert relative_error(out, reference) < 1e-2
        assert relative_error(again, out) < 1e-2


def test_the_fast_modes_are_off_by_default(lossless: tuple[Engine, Accelerated]) -> None:
    engine, done = lossless
    assert done.fp8 is None and done.step_cache is None
    assert not {"fp8_row", "fp8_tensor", "step_cache"} & set(done.active)
    assert not any(isinstance(m, Fp8Linear) for m in engine.pipe.transformer.modules())


@pytest.mark.parametrize("size", [GRAPHED, COMPILED])
def test_fp8_composes_with_compile_and_graphs_and_stays_near_lossless(
    fp8: tuple[Engine, Accelerated], lossless: tuple[Engine, Accelerated], size: tuple[int, int]
) -> None:
    engine, done = fp8
    assert {"fp8_row", "compile_transformer", "cuda_graphs"} <= set(done.active)
    assert done.fp8 is not None and (done.fp8.blocks, done.fp8.bf16_blocks) == (2, 2)
    assert done.forward is not None
    replayed = done.forward.stats.replayed
    ours = latents(engine, size)
    reference = latents(lossless[0], size)
    # 8 steps, cond and uncond in one forward, a graph replay at the small size only.
    assert "paired_cfg" in done.active
    assert done.forward.stats.replayed - replayed == (8 if size == GRAPHED else 0)
    assert done.forward.stats.failed == 0
    error = relative_error(ours, reference)
    assert 0 < error <= FP8_BOUND
    assert relative_error(latents(lossless[0], size, seed=22), reference) > 10 * FP8_BOUND


@pytest.mark.parametrize("size", [GRAPHED, COMPILED])
def test_the_step_cache_skips_steps_around_compiled_blocks_and_stays_near_lossless(
    cached: tuple[Engine, Accelerated],
    lossless: tuple[Engine, Accelerated],
    size: tuple[int, int],
) -> None:
    engine, done = cached
    assert {"step_cache", "compile_transformer"} <= set(done.active)
    assert "cuda_graphs" not in done.active  # its decision is a host-side branch
    assert "paired_cfg" not in done.active  # it keeps state per branch (cond, uncond)
    assert done.step_cache is not None
    before = replace(done.step_cache.stats)
    ours = latents(engine, size)
    computed = done.step_cache.stats.computed - before.computed
    skipped = done.step_cache.stats.skipped - before.skipped
    assert computed + skipped == 16 and computed >= 2 and skipped > 0
    assert relative_error(ours, latents(lossless[0], size)) <= CACHE_BOUND
