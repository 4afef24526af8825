"""What the job queue needs from an engine, kept free of torch.

The real engine (generation.py) and the simulated one (simulated.py) both fit
`ImageEngine`; a worker that runs the simulated one never imports torch or diffusers, so
dozens of them fit on a small machine for load and fault tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


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


class ImageEngine(Protocol):
    """Makes one image at a time on the worker's single GPU thread."""

    def generate(self, spec: ImageSpec, should_stop: Callable[[], bool]) -> Image.Image:
        """Checks `should_stop` after every denoising step; raises StopRequested when it says so."""
        ...

    def warm_up(self, spec: ImageSpec) -> list[tuple[int, int]]:
        """Make what readiness waits for; returns the sizes made."""
        ...

    def release_memory(self) -> None:
        """Give back what a failed call held."""
        ...
