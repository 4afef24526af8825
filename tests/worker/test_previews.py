"""Partial images: the demo pipeline's predicted picture at evenly spaced steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qwen_image_worker.engine.base import preview_steps
from qwen_image_worker.engine.diffusers_engine import Engine
from worker.conftest import spec


@pytest.mark.parametrize(
    ("steps", "partial_images", "expected"),
    [(50, 3, [11, 24, 37]), (50, 1, [24]), (8, 2, [2, 4]), (2, 3, [0]), (1, 3, []), (50, 0, [])],
)
def test_previews_are_spread_evenly_and_never_the_last_step(
    steps: int, partial_images: int, expected: list[int]
) -> None:
    assert preview_steps(steps, partial_images) == expected


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_previews_approach_the_result_and_leave_it_unchanged(engine: Engine) -> None:
    plain = engine.generate_batch([spec(num_inference_steps=8)], lambda: False)[0]
    previews: list[tuple[int, int, Image.Image]] = []
    streamed = engine.generate_batch(
        [spec(num_inference_steps=8, partial_images=3), spec(num_inference_steps=8, seed=8)],
        lambda: False,
        lambda position, index, image: previews.append((position, index, image)),
    )
    assert np.array_equal(pixels(streamed[0]), pixels(plain))
    # Only the image that asked for previews gets them, each at the final size.
    assert [(position, index) for position, index, _ in previews] == [(0, 0), (0, 1), (0, 2)]
    assert all(image.size == plain.size for _, _, image in previews)
    distances = [np.abs(pixels(image) - pixels(plain)).mean() for _, _, image in previews]
    assert distances[0] > distances[1] > distances[2] > 0
