from __future__ import annotations

import warnings

import numpy as np
import pytest

from qwen_image_worker.engine.base import StopRequested
from qwen_image_worker.engine.diffusers_engine import Engine

from .conftest import spec


def test_same_spec_gives_the_same_pixels_and_another_seed_does_not(engine: Engine) -> None:
    first = np.asarray(engine.generate(spec(seed=3), lambda: False))
    again = np.asarray(engine.generate(spec(seed=3), lambda: False))
    other = np.asarray(engine.generate(spec(seed=4), lambda: False))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(("width", "height"), [(1140, 64), (64, 1140), (72, 40)])
def test_sizes_off_the_16_grid_are_generated_larger_and_cropped_exactly(
    engine: Engine, width: int, height: int
) -> None:
    image = engine.generate(spec(width=width, height=height, num_inference_steps=1), lambda: False)
    assert image.size == (width, height)
    gen_w, gen_h = engine.generation_size(width, height)
    assert gen_w % 16 == 0 and gen_h % 16 == 0
    assert 0 <= gen_w - width < 16 and 0 <= gen_h - height < 16


def test_one_step_makes_a_picture_and_more_steps_still_end_at_the_terminal_sigma(
    engine: Engine,
) -> None:
    """Qwen-Image's scheduler stretches its sigmas to end at 0.02; with one step diffusers'
    stretch divides 0 by 0 (its issue 14411), and the picture would be NaN, cast to black."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value" on a NaN
        one = np.asarray(engine.generate(spec(num_inference_steps=1), lambda: False))
    assert one.std() > 1  # a picture, not one flat colour
    assert engine.pipe.scheduler.config.shift_terminal == 0.02
    engine.generate(spec(num_inference_steps=2), lambda: False)
    assert engine.pipe.scheduler.sigmas.tolist() == pytest.approx([1.0, 0.02, 0.0])


def test_stop_is_honoured_within_one_step(engine: Engine) -> None:
    asked = 0

    def stop_after_two() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 2

    with pytest.raises(StopRequested):
        engine.generate(spec(num_inference_steps=20), stop_after_two)
    assert asked == 2


def test_cfg_runs_even_without_a_negative_prompt(engine: Engine) -> None:
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    handle = engine.pipe.transformer.register_forward_hook(count)
    try:
        engine.generate(spec(negative_prompt="", num_inference_steps=3), lambda: False)
    finally:
        handle.remove()
    assert calls == 6  # a conditional and an unconditional pass per step


def test_negative_prompt_and_guidance_change_the_picture(engine: Engine) -> None:
    base = np.asarray(engine.generate(spec(), lambda: False))
    negative = np.asarray(engine.generate(spec(negative_prompt="blurry"), lambda: False))
    guided = np.asarray(engine.generate(spec(guidance_scale=6.0), lambda: False))
    assert not np.array_equal(base, negative)
    assert not np.array_equal(base, guided)
