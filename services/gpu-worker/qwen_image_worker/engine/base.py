"""What the job queue needs from an engine, kept free of torch.

The real engine (generation.py) and the simulated one (simulated.py) both fit
`ImageEngine`; a worker that runs the simulated one never imports torch or diffusers, so
dozens of them fit on a small machine for load and fault tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


class StopRequested(Exception):
    """Raised from the step callback when the job's deadline passed or its caller left."""


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
