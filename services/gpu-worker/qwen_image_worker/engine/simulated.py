"""A stand-in for the model, for load and fault tests of the real worker program.

MODEL_PATH=simulated: every denoising step is a sleep of SIMULATED_STEP_SECONDS per image of
the batch (a GPU that one image already fills: batching gains nothing, and the queue's
batching is exercised without changing the figures), and `should_stop` is asked after each
step exactly as the real engine's step callback asks it, so deadlines, cancellation, the
queue, the HTTP API, metrics and drain all behave as with a GPU. The image is one flat
colour (from the seed) of exactly the requested size. It never imports torch, so a
simulated worker is a small process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from PIL import Image

from qwen_image_worker.engine.base import (
    ONE_AT_A_TIME,
    BatchLimit,
    ImageSpec,
    OnPreview,
    StepMonitor,
    common_shape,
    preview_steps,
)

SIMULATED_MODEL_PATH = "simulated"


class SimulatedEngine:
    """Sleeps `step_seconds` per step and image; same seed, same picture."""

    def __init__(
        self,
        step_seconds: float,
        on_step: Callable[[float], None] | None = None,
        batch: BatchLimit = ONE_AT_A_TIME,
    ) -> None:
        self.step_seconds = step_seconds
        self._on_step = on_step
        self.batch = batch

    def batch_size(self, spec: ImageSpec) -> int:
        return self.batch.images(spec.width, spec.height)

    def generate_batch(
        self,
        specs: Sequence[ImageSpec],
        should_stop: Callable[[], bool],
        on_preview: OnPreview | None = None,
    ) -> list[Image.Image]:
        shape = common_shape(specs)
        monitor = StepMonitor(self._on_step, should_stop)
        plans = [preview_steps(spec.num_inference_steps, spec.partial_images) for spec in specs]
        for step in range(shape.num_inference_steps):
            time.sleep(self.step_seconds * len(specs))
            for position, plan in enumerate(plans):
                if on_preview is not None and step in plan:
                    fraction = (step + 1) / shape.num_inference_steps
                    on_preview(position, plan.index(step), _picture(specs[position], fraction))
            monitor.step_done()
        return [_picture(spec, 1.0) for spec in specs]

    def warm_up(self, spec: ImageSpec) -> list[tuple[int, int]]:
        """One image, as the real engine without per-shape levers makes."""
        self.generate_batch([spec], lambda: False)
        return [(spec.width, spec.height)]

    def release_memory(self) -> None:
        return None


def _picture(spec: ImageSpec, fraction: float) -> Image.Image:
    """The seed's colour, as much of it as `fraction` of the steps made."""
    colour = (spec.seed % 256, (spec.seed >> 8) % 256, (spec.seed >> 16) % 256)
    return Image.new("RGB", (spec.width, spec.height), tuple(round(c * fraction) for c in colour))
