"""The speed levers on the edit pipelines (the demo editors on the CPU): the same
`accelerate`, the same function as stock, and each lever deciding from the call, an edit's
picture tokens counted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
    VAE_IMAGE_SIZE,
    calculate_dimensions,
)
from PIL import Image

from qwen_image_common.contract import PIXELS_PER_TOKEN
from qwen_image_worker.engine.acceleration import (
    Accelerated,
    Levers,
    accelerate,
    lossless_tolerance,
    relative_error,
)
from qwen_image_worker.engine.base import BatchLimit, ImageSpec
from qwen_image_worker.engine.demo_edit_model import build_demo_edit_pipeline
from qwen_image_worker.engine.editing import EditEngine
from qwen_image_worker.settings import WorkerSettings

from .conftest import CPU_LEVERS, captured, spec
from .test_editing import picture
from .test_paired_cfg import recording

# A picture is resized to about VAE_IMAGE_SIZE pixels before the VAE, a square one exactly:
# its tokens join the image's in every forward of an edit.
PICTURE_TOKENS = VAE_IMAGE_SIZE // PIXELS_PER_TOKEN
# CFG joined for an edit of one picture at up to 32x32 (4 tokens of its own).
JOINS_UP_TO_32 = VAE_IMAGE_SIZE + 32 * 32


def tokens_of(source: Image.Image) -> int:
    """The tokens the edit pipeline makes of a picture (its aspect at VAE_IMAGE_SIZE)."""
    width, height = calculate_dimensions(VAE_IMAGE_SIZE, source.width / source.height)
    return width * height // PIXELS_PER_TOKEN


def demo_editor(num_layers: int = 1, pipeline_class: Any = QwenImageEditPlusPipeline) -> EditEngine:
    pipe = build_demo_edit_pipeline(num_layers, pipeline_class)
    pipe.set_progress_bar_config(disable=True)
    return EditEngine(pipe)


def accelerated(engine: EditEngine, levers: Levers) -> Accelerated:
    return accelerate(engine.pipe, levers, allow_cpu=True)


def edit(engine: EditEngine, job: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's input latents and output pixels of the edit."""
    with captured(engine) as seen:
        engine.generate(job, lambda: False)
    return seen["latents"], seen["pixels"]


@pytest.fixture(scope="module")
def stock() -> EditEngine:
    torch.set_num_threads(1)
    return demo_editor()


@pytest.mark.parametrize(
    ("pipeline_class", "pictures"),
    [(QwenImageEditPlusPipeline, 1), (QwenImageEditPlusPipeline, 2), (QwenImageEditPipeline, 1)],
)
def test_the_worker_levers_make_the_stock_edit_with_cfg_joined(
    pipeline_class: Any, pictures: int
) -> None:
    sources = (picture(64, 64, 1), picture(80, 48, 3))[:pictures]
    job = spec(seed=11, negative_prompt="blurry", pictures=sources)
    levers = Levers.from_settings(WorkerSettings(paired_cfg_max_pixels=4 * VAE_IMAGE_SIZE))
    stock = demo_editor(pipeline_class=pipeline_class)
    engine = demo_editor(pipeline_class=pipeline_class)
    # Below the levers' wrappers: the forwards that really run.
    batches = recording(engine.pipe, lambda kwargs: tuple(kwargs["hidden_states"].shape[:2]))
    done = accelerated(engine, levers)
    assert done.active == CPU_LEVERS  # as for generation
    ours = edit(engine, job)
    theirs = edit(stock, job)
    # One forward of both texts a step, over the image's and every picture's tokens.
    tokens = 16 + sum(tokens_of(source) for source in sources)
    assert done.paired is not None and done.paired.joined == job.num_inference_steps
    assert batches == [(2, tokens)] * job.num_inference_steps
    other = edit(stock, replace(job, seed=12))
    for index in range(2):  # latents, pixels
        assert relative_error(ours[index], theirs[index]) <= lossless_tolerance()
        assert relative_error(other[index], theirs[index]) > 5 * lossless_tolerance()


def test_cfg_stays_two_forwards_when_the_pictures_tokens_pass_the_limit(
    stock: EditEngine,
) -> None:
    """64x64 alone is 16 tokens, well under the limit; with its picture it is over."""
    engine = demo_editor()
    batches = recording(engine.pipe, lambda kwargs: int(kwargs["hidden_states"].shape[0]))
    done = accelerated(engine, Levers(paired_cfg_max_pixels=JOINS_UP_TO_32))
    job = spec(seed=11, pictures=(picture(64, 64, 1),))
    ours = edit(engine, job)
    assert done.paired is not None and done.paired.joined == 0
    assert batches == [1] * 2 * job.num_inference_steps
    theirs = edit(stock, job)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_an_editors_warm_up_makes_one_image_a_call_and_joins_where_the_calls_did() -> None:
    """Batching asked for, an editor still makes one image a call, so its warm-up brings no
    batch; CFG's joined forward without a text mask is warmed at the size that joined,
    32x32 (its picture counted), not 48x48 (under the limit on its own)."""
    engine = demo_editor()
    kinds = recording(  # batch, tokens, text mask
        engine.pipe,
        lambda kwargs: (
            *kwargs["hidden_states"].shape[:2],
            kwargs.get("encoder_hidden_states_mask") is not None,
        ),
    )
    accelerated(engine, Levers(paired_cfg_max_pixels=JOINS_UP_TO_32))
    warming = EditEngine(
        engine.pipe, warmup_sizes=[(32, 32), (48, 48)], batch=BatchLimit(8, 1 << 30)
    )
    assert warming.warm_up(spec(num_inference_steps=1)) == [(64, 64), (32, 32), (48, 48)]
    assert kinds == [
        (1, 16 + PICTURE_TOKENS, False),  # 64x64, cond
        (1, 16 + PICTURE_TOKENS, False),  # uncond
        (2, 4 + PICTURE_TOKENS, True),  # 32x32 joined: prompt and " " differ in length
        (1, 9 + PICTURE_TOKENS, False),  # 48x48, not joined
        (1, 9 + PICTURE_TOKENS, False),
        (2, 4 + PICTURE_TOKENS, False),  # 32x32 joined, negative prompt as long as prompt
    ]


def test_the_fast_modes_run_on_edits() -> None:
    """FP8 matmuls and the step cache act on the editor's blocks as on the generator's
    (the pipeline opens the same cond/uncond cache contexts)."""
    fast = Levers(fp8_matmuls=True, fp8_bf16_edge_blocks=0, step_cache_threshold=0.5)
    engine = demo_editor(num_layers=2)
    done = accelerated(engine, fast)
    assert done.fp8 is not None and done.fp8.blocks == 2
    assert done.step_cache is not None and done.paired is None
    job = spec(seed=11, num_inference_steps=4, pictures=(picture(64, 64, 1),))
    latents, _ = edit(engine, job)
    stats = done.step_cache.stats
    assert stats.computed + stats.skipped == 2 * job.num_inference_steps
    assert stats.skipped > 0 and torch.isfinite(latents).all()
