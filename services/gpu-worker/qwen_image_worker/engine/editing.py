"""Edits: the generation engine with the job's pictures passed to a Qwen-Image-Edit pipeline.

Everything else (sizes, seeds, the step callback, cancellation, warm-up) is `Engine`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from PIL import Image

from qwen_image_worker.engine.base import ImageSpec
from qwen_image_worker.engine.diffusers_engine import Engine, negative_prompt


class EditEngine(Engine):
    """One image a pipeline call: the edit pipelines take one prompt and its pictures."""

    def batch_size(self, spec: ImageSpec) -> int:
        return 1

    def inputs(self, specs: Sequence[ImageSpec]) -> dict[str, Any]:
        (spec,) = specs
        # QwenImageEditPlusPipeline takes a list of pictures; QwenImageEditPipeline one.
        pictures: Any = list(spec.pictures) if len(spec.pictures) > 1 else spec.pictures[0]
        return {
            "image": pictures,
            "prompt": spec.prompt,
            "negative_prompt": negative_prompt(spec),
        }

    def warm_up(self, spec: ImageSpec) -> list[tuple[int, int]]:
        """A grey picture of the warm-up size stands in for the job's."""
        if not spec.pictures:
            spec = replace(
                spec, pictures=(Image.new("RGB", (spec.width, spec.height), (128, 128, 128)),)
            )
        return super().warm_up(spec)
