"""What the job queue needs from an engine, kept free of torch.

The real engine (diffusers_engine.py) and the simulated one (simulated.py) both fit
`ImageEngine`; a worker that runs the simulated one never imports torch or diffusers, so
dozens of them fit on a small machine for load and fault tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from qwen_image_common.contract import MAX_SIDE_PIXELS

# A streamed job's partial image: (the image's place in the batch, its preview's index from
# 0, the picture). Called on the GPU thread.
OnPreview = Callable[[int, int, Image.Image], None]


class StopRequested(Exception):
    """Raised from the step callback when the job's deadline passed or its caller left."""


class StepMonitor:
    """What every engine does after a denoising step: report how long it took, and stop the
    job (by raising StopRequested) when its deadline passed or its caller left."""

    def __init__(
        self, on_step: Callable[[float], None] | None, should_stop: Callable[[], bool]
    ) -> None:
        self._on_step = on_step
        self._should_stop = should_stop
        self._last = time.perf_counter()

    def step_done(self) -> None:
        now = time.perf_counter()
        if self._on_step is not None:
            self._on_step(now - self._last)
        self._last = now
        if self._should_stop():
            raise StopRequested


@dataclass(frozen=True)
class ImageSpec:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    partial_images: int = 0
    pictures: tuple[Image.Image, ...] = field(default=(), compare=False)

    @property
    def batch_key(self) -> tuple[int, int, int, float]:
        """Images may share one pipeline call when these agree: one latent shape, one
        timestep schedule, one CFG scale. Prompts, negative prompts and seeds may differ."""
        return (self.width, self.height, self.num_inference_steps, self.guidance_scale)


def edit_output_size(picture_width: int, picture_height: int) -> tuple[int, int]:
    """The size an edit makes when none is asked: the last picture's aspect at about one
    megapixel, sides multiples of 32, as QwenImageEditPlusPipeline chooses; a side past
    MAX_SIDE_PIXELS (a picture more than 4:1) shrinks both, keeping the aspect."""
    ratio = picture_width / picture_height
    width = math.sqrt(1024 * 1024 * ratio)
    height = width / ratio
    scale = min(1.0, MAX_SIDE_PIXELS / max(width, height))
    return max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32)


@dataclass(frozen=True)
class BatchLimit:
    """How many images one pipeline call may make: at most `max_images`, and no more than
    `max_pixels` in all (small images leave a GPU idle one at a time; large ones fill it
    alone). The defaults make one image per call."""

    max_images: int = 1
    max_pixels: int = 0

    def images(self, width: int, height: int) -> int:
        return max(1, min(self.max_images, self.max_pixels // (width * height)))


ONE_AT_A_TIME = BatchLimit()


def preview_steps(num_inference_steps: int, partial_images: int) -> list[int]:
    """The loop indices after which the previews are made: `partial_images` points spread
    evenly over the run, never the last step (that is the image itself). Fewer when the run
    has fewer steps than previews asked, as OpenAI's API may send fewer."""
    done = {
        round(num_inference_steps * (k + 1) / (partial_images + 1)) for k in range(partial_images)
    }
    return sorted(count - 1 for count in done if 1 <= count < num_inference_steps)


def common_shape(specs: Sequence[ImageSpec]) -> ImageSpec:
    """The first spec, after checking that all of them may share one pipeline call."""
    if not specs:
        raise ValueError("a batch needs at least one image")
    first = specs[0]
    if any(spec.batch_key != first.batch_key for spec in specs):
        raise ValueError("the images of one batch must share size, steps and guidance scale")
    return first


class ImageEngine(Protocol):
    """Makes images on the worker's single GPU thread, several of one shape per call."""

    def generate_batch(
        self,
        specs: Sequence[ImageSpec],
        should_stop: Callable[[], bool],
        on_preview: OnPreview | None = None,
    ) -> list[Image.Image]:
        """One image per spec, in order; the specs share one `batch_key` and number at most
        `batch_size(spec)`. Checks `should_stop` after every denoising step and raises
        StopRequested when it says so. With `on_preview`, hands it each spec's
        `partial_images` previews at the steps `preview_steps` names."""
        ...

    def batch_size(self, spec: ImageSpec) -> int:
        """How many images like `spec` one `generate_batch` call may make."""
        ...

    def warm_up(self, spec: ImageSpec) -> list[tuple[int, int]]:
        """Make what readiness waits for; returns the sizes made."""
        ...

    def release_memory(self) -> None:
        """Give back what a failed call held."""
        ...
