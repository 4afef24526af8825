"""True CFG's two forwards of a step run as one (engine/paired_cfg.py): the demo model on the
CPU, through the real pipeline, against the pipeline left alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from PIL import Image

from qwen_image_worker.engine.acceleration import (
    Accelerated,
    Levers,
    accelerate,
    lossless_tolerance,
    relative_error,
)
from qwen_image_worker.engine.base import BatchLimit
from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.joint_attention import install_joint_attention
from qwen_image_worker.engine.loading import load_pipeline

from .conftest import OpLog, spec

T = TypeVar("T")
PAIRED = Levers(paired_cfg_max_pixels=512 * 512)
JOB = spec(seed=3, prompt="a red fox in the snow at dawn", negative_prompt="blurry")


def recording(pipe: QwenImagePipeline, what: Callable[[dict[str, Any]], T]) -> list[T]:
    """`what` of every forward the transformer really runs (installed before `accelerate`,
    so below its wrappers)."""
    seen: list[T] = []
    forward = pipe.transformer.forward

    def record(*args: Any, **kwargs: Any) -> Any:
        seen.append(what(kwargs))
        return forward(*args, **kwargs)

    pipe.transformer.forward = record
    return seen


def counted(levers: Levers) -> tuple[Engine, Accelerated, list[int]]:
    """An engine whose transformer records the batch of every forward it really runs."""
    pipe = load_pipeline(None, torch.device("cpu"))
    batches = recording(pipe, lambda kwargs: int(kwargs["hidden_states"].shape[0]))
    return Engine(pipe), accelerate(pipe, levers, allow_cpu=True), batches


@pytest.fixture(scope="module")
def plain() -> Engine:
    return Engine(load_pipeline(None, torch.device("cpu")))


def picture(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_each_step_runs_one_forward_of_both_texts_and_makes_the_same_picture(
    plain: Engine,
) -> None:
    engine, done, batches = counted(PAIRED)
    assert done.active == ["paired_cfg"] and done.paired is not None
    ours = picture(engine.generate(JOB, lambda: False))
    assert batches == [2, 2, 2] and done.paired.joined == 3  # 3 steps, not 6 forwards
    theirs = picture(plain.generate(JOB, lambda: False))
    assert np.abs(ours - theirs).max() <= 1
    # The next call encodes anew and joins its own texts.
    other = replace(JOB, prompt="a grey wolf", seed=4)
    again = picture(engine.generate(other, lambda: False))
    assert batches == [2] * 6 and done.paired.joined == 6
    assert np.abs(again - picture(plain.generate(other, lambda: False))).max() <= 1


def test_a_batch_of_jobs_joins_its_prompts_and_negative_prompts(plain: Engine) -> None:
    specs = [
        JOB,
        spec(seed=4, prompt="owl", negative_prompt=""),
        spec(seed=5, prompt="a lighthouse on a rocky coast at dusk, long exposure"),
    ]
    engine, _, batches = counted(PAIRED)
    ours = [picture(image) for image in engine.generate_batch(specs, lambda: False)]
    assert batches == [6, 6, 6]
    for job, image in zip(specs, ours, strict=True):
        assert np.abs(image - picture(plain.generate(job, lambda: False))).max() <= 1


def test_fa3_over_used_keys_makes_a_batchs_pictures_as_the_masked_attention_does(
    plain: Engine,
) -> None:
    """Batched jobs and joined CFG pad their texts on the right (diffusers' encode_prompt,
    then paired_cfg.py), which FA3's path for padded batches relies on: it leaves each
    element's last keys out. FA3's kernel is CUDA's; on the CPU its reference runs, the same
    function (test_joint_attention.py)."""
    specs = [
        JOB,
        spec(seed=4, prompt="owl", negative_prompt=""),
        spec(seed=5, prompt="a lighthouse on a rocky coast at dusk, long exposure"),
    ]
    engine, _, batches = counted(PAIRED)
    assert install_joint_attention(
        engine.pipe.transformer, fuse=True, real_rope=True, flash3=True, flash3_padded=True
    )
    with OpLog() as log:
        ours = [picture(image) for image in engine.generate_batch(specs, lambda: False)]
    assert batches == [6, 6, 6]
    assert log.ops.count("qwen_image.attention_over_used_keys.default") == 3  # a step each
    for job, image in zip(specs, ours, strict=True):
        assert np.abs(image - picture(plain.generate(job, lambda: False))).max() <= 1


def test_above_its_size_limit_a_step_keeps_two_forwards(plain: Engine) -> None:
    engine, done, batches = counted(Levers(paired_cfg_max_pixels=32 * 32))
    ours = picture(engine.generate(JOB, lambda: False))  # 64x64
    assert batches == [1] * 6 and done.paired is not None and done.paired.joined == 0
    assert np.array_equal(ours, picture(plain.generate(JOB, lambda: False)))


def test_a_call_without_cfg_is_left_alone_and_the_next_one_joins_again() -> None:
    engine, _, batches = counted(PAIRED)
    engine.generate(spec(guidance_scale=1.0), lambda: False)  # one encoding, one forward a step
    assert batches == [1, 1, 1]
    engine.generate(JOB, lambda: False)
    assert batches[3:] == [2, 2, 2]


def test_other_calls_of_the_transformer_run_as_they_are() -> None:
    engine, _, batches = counted(PAIRED)
    engine.generate(JOB, lambda: False)
    transformer = engine.pipe.transformer
    torch.manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 16, transformer.config.in_channels),
        "encoder_hidden_states": torch.randn(1, 5, transformer.config.joint_attention_dim),
        "timestep": torch.full((1,), 0.5),
        "img_shapes": [[(1, 4, 4)]],
        "return_dict": False,
    }
    with torch.inference_mode():
        twice = [transformer(**inputs)[0] for _ in range(2)]
    assert batches[3:] == [1, 1] and torch.equal(twice[0], twice[1])


@pytest.mark.parametrize(
    "fast", [Levers(step_cache_threshold=0.5), Levers(fp8_matmuls=True, fp8_rowwise=False)]
)
def test_fast_modes_that_decide_for_a_whole_batch_keep_the_texts_apart(fast: Levers) -> None:
    pipe = load_pipeline(None, torch.device("cpu"))
    done = accelerate(pipe, replace(fast, paired_cfg_max_pixels=512 * 512), allow_cpu=True)
    assert done.batch_coupling is not None and done.paired is None
    assert "paired_cfg" not in done.active


def test_the_warm_up_brings_every_kind_of_forward_a_request_can() -> None:
    """Compiled blocks keep a variant per kind of forward: the warm-up must bring a joined
    forward with and without a text mask, and the unjoined batch (masked prompts, unmasked
    negative prompts) where a size batches without joining."""
    pipe = load_pipeline(None, torch.device("cpu"))
    kinds = recording(  # batch, image tokens, text mask
        pipe,
        lambda kwargs: (
            *kwargs["hidden_states"].shape[:2],
            kwargs.get("encoder_hidden_states_mask") is not None,
        ),
    )
    accelerate(pipe, Levers(paired_cfg_max_pixels=32 * 32), allow_cpu=True)
    # 32x32 joins and batches 4; 48x48 batches 2 and does not join; 64x64 batches 1.
    engine = Engine(pipe, warmup_sizes=[(32, 32), (48, 48)], batch=BatchLimit(8, 2 * 48 * 48))
    assert engine.warm_up(spec(num_inference_steps=1)) == [(64, 64), (32, 32), (48, 48)]
    assert kinds == [
        (1, 16, False),  # 64x64, cond
        (1, 16, False),  # 64x64, uncond
        (2, 4, True),  # 32x32 joined: prompt and " " differ in length
        (1, 9, False),
        (1, 9, False),
        (2, 9, True),  # the batch of two at 48x48: prompts of two lengths
        (2, 9, False),  # its negative prompts
        (2, 4, False),  # 32x32 joined, the negative prompt as long as the prompt
    ]


def test_in_bf16_the_joined_forwards_stay_within_the_lossless_tolerance() -> None:
    """bf16 rounds a batch of two otherwise than two of one (measured here: identical at
    64x64, 0.024 at 256x256); that must stay inside the rule the GPU engine is judged by."""

    def engine(levers: Levers) -> Engine:
        pipe = build_demo_pipeline(num_layers=4).to(dtype=torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)
        accelerate(pipe, levers, allow_cpu=True)
        return Engine(pipe)

    joined, apart = engine(PAIRED), engine(Levers())
    job = spec(seed=21, num_inference_steps=8, width=256, height=256)
    ours = torch.from_numpy(picture(joined.generate(job, lambda: False)).astype(np.float64))
    theirs = torch.from_numpy(picture(apart.generate(job, lambda: False)).astype(np.float64))
    other = replace(job, seed=22)
    another = torch.from_numpy(picture(apart.generate(other, lambda: False)).astype(np.float64))
    assert relative_error(ours, theirs) <= lossless_tolerance()
    assert relative_error(another, theirs) > 5 * lossless_tolerance()
