"""The engine with every default speed lever pulled, on a CUDA GPU (the demo model in bf16).

Selected with `-m gpu` on the GPU machine; a CPU run deselects them (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from qwen_image_worker.engine.acceleration import (
    Accelerated,
    Levers,
    accelerate,
    lossless_tolerance,
    relative_error,
)
from qwen_image_worker.engine.base import BatchLimit, StopRequested
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.loading import load_pipeline
from qwen_image_worker.settings import WorkerSettings

from .conftest import COMPILED, GRAPHED, assert_matches_stock, captured, spec

pytestmark = pytest.mark.gpu

# Two images at COMPILED, so the warm-up's batch of two is made there, where CFG's two
# forwards are not joined (at GRAPHED they are: every forward is a masked batch already).
BATCHING = BatchLimit(max_images=8, max_pixels=2 * COMPILED[0] * COMPILED[1])


@pytest.fixture(scope="module")
def plain(cuda: torch.device) -> Engine:
    return Engine(load_pipeline(None, cuda))


@pytest.fixture(scope="module")
def fast(cuda: torch.device) -> tuple[Engine, Accelerated]:
    pipe = load_pipeline(None, cuda)
    done = accelerate(pipe, Levers.from_settings(WorkerSettings.model_construct()))
    engine = Engine(pipe, warmup_sizes=[(512, 512), COMPILED], batch=BATCHING)
    engine.warm_up(spec(prompt="warm-up", width=GRAPHED[0], height=GRAPHED[1]))
    return engine, done


def test_every_default_lever_is_pulled_on_cuda(fast: tuple[Engine, Accelerated]) -> None:
    _, done = fast
    assert done.active == [
        "fuse_qkv",
        "real_rope",
        "gelu_epilogue",
        "vae_conv2d",
        "vae_channels_last",
        "compile_transformer",
        "attention_cudnn",  # 'auto': the FA3 wheel holds head dim 128, the demo model's is 16
        "cuda_graphs",
        "paired_cfg",
    ]
    assert done.per_shape and done.forward is not None and done.paired is not None


@pytest.mark.parametrize("size", [GRAPHED, COMPILED])
def test_same_seed_same_pixels_and_another_seed_not(
    fast: tuple[Engine, Accelerated], size: tuple[int, int]
) -> None:
    engine, done = fast
    assert done.forward is not None
    replayed = done.forward.stats.replayed
    job = spec(seed=3, width=size[0], height=size[1])
    first = np.asarray(engine.generate(job, lambda: False))
    again = np.asarray(engine.generate(job, lambda: False))
    other = np.asarray(engine.generate(spec(seed=4, width=size[0], height=size[1]), lambda: False))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    graphed = done.forward.stats.replayed - replayed
    # 3 images x 3 steps, cond and uncond in one forward, replayed for the small size only.
    assert graphed == (9 if size == GRAPHED else 0)
    assert done.forward.stats.failed == 0


@pytest.mark.parametrize(("width", "height"), [(1140, 64), (64, 1140), (72, 40)])
def test_sizes_off_the_16_grid_are_cropped_exactly(
    fast: tuple[Engine, Accelerated], width: int, height: int
) -> None:
    engine, _ = fast
    job = spec(width=width, height=height, num_inference_steps=1)
    assert engine.generate(job, lambda: False).size == (width, height)


def test_stop_is_honoured_within_one_step(fast: tuple[Engine, Accelerated]) -> None:
    engine, _ = fast
    asked = 0

    def stop_after_two() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 2

    with pytest.raises(StopRequested):
        engine.generate(spec(num_inference_steps=20), stop_after_two)
    assert asked == 2


@pytest.mark.parametrize("size", [GRAPHED, (512, 512), COMPILED])
def test_latents_and_pixels_match_the_levers_off_engine(
    fast: tuple[Engine, Accelerated], plain: Engine, size: tuple[int, int]
) -> None:
    engine, _ = fast
    job = spec(seed=21, width=size[0], height=size[1], num_inference_steps=8)
    with captured(engine) as ours:
        engine.generate(job, lambda: False)
    assert_matches_stock(ours, plain, job)


def test_after_warm_up_new_prompt_lengths_and_sizes_compile_nothing(
    fast: tuple[Engine, Accelerated],
) -> None:
    engine, _ = fast
    compiled = counters["stats"]["unique_graphs"]
    for prompt, size in [
        ("a much longer prompt than any this engine has seen so far, about a harbour", GRAPHED),
        ("short", COMPILED),
        ("a prompt of another length at the middle size", (512, 512)),
    ]:
        engine.generate(spec(prompt=prompt, width=size[0], height=size[1]), lambda: False)
    assert counters["stats"]["unique_graphs"] == compiled


@pytest.mark.parametrize("size", [GRAPHED, COMPILED])
def test_a_batch_matches_its_images_made_alone_and_compiles_nothing(
    fast: tuple[Engine, Accelerated], size: tuple[int, int]
) -> None:
    """Prompts of three lengths: at the small size, prompts and negative prompts run as one
    masked forward a step, a CUDA graph; at the larger one the cond forward carries a text
    mask, the uncond forward none. The warm-up compiled every variant (its batch of two at
    COMPILED), so a batch of three compiles nothing."""
    engine, done = fast
    assert done.forward is not None
    compiled = counters["stats"]["unique_graphs"]
    replayed = done.forward.stats.replayed
    specs = [
        spec(seed=31, width=size[0], height=size[1], num_inference_steps=6),
        spec(seed=32, width=size[0], height=size[1], num_inference_steps=6, prompt="an owl"),
        spec(
            seed=33,
            width=size[0],
            height=size[1],
            num_inference_steps=6,
            prompt="a long prompt about an owl on a branch in the moonlight, oil painting",
        ),
    ]
    batched = [
        np.asarray(image, dtype=np.float64) for image in engine.generate_batch(specs, lambda: False)
    ]
    assert counters["stats"]["unique_graphs"] == compiled
    # 6 steps, one joined forward each, replayed for the small size only.
    assert done.forward.stats.replayed - replayed == (6 if size == GRAPHED else 0)
    alone = [np.asarray(engine.generate(one, lambda: False), dtype=np.float64) for one in specs]
    for ours, theirs in zip(batched, alone, strict=True):
        error = relative_error(torch.from_numpy(ours), torch.from_numpy(theirs))
        assert error <= lossless_tolerance(), error
    other = relative_error(torch.from_numpy(batched[0]), torch.from_numpy(batched[1]))
    assert other > 5 * lossless_tolerance()
    assert done.forward.stats.failed == 0


@pytest.mark.parametrize("size", [GRAPHED, (512, 512)])
def test_a_negative_prompt_as_long_as_the_prompt_compiles_nothing(
    fast: tuple[Engine, Accelerated], size: tuple[int, int]
) -> None:
    """CFG's two forwards are joined at these sizes; with texts of one length the joined
    forward has no text mask, a variant of its own that the warm-up made."""
    engine, done = fast
    assert done.paired is not None
    compiled = counters["stats"]["unique_graphs"]
    job = spec(width=size[0], height=size[1], prompt="an owl", negative_prompt="an owl")
    engine.generate(job, lambda: False)
    assert counters["stats"]["unique_graphs"] == compiled
