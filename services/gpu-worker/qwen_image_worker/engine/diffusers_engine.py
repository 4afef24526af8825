"""Images from seeds, one batch of one shape per call: the only place that calls the pipeline.

Runs on the worker's single GPU thread. Cancellation is cooperative: the pipeline's
step callback asks `should_stop` after every denoising step and aborts by raising.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from diffusers import QwenImagePipeline
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
from qwen_image_worker.engine.paired_cfg import PairedGuidance
from qwen_image_worker.engine.previews import decode
from qwen_image_worker.engine.scheduler import PredictingScheduler, serving_scheduler

logger = logging.getLogger(__name__)

# diffusers skips true CFG when no negative prompt is given; one space keeps it on, as the
# Qwen-Image reference code does.
_EMPTY_NEGATIVE_PROMPT = " "


class Engine:
    """Owns the pipeline; call it from one thread only (the pipeline keeps per-call state)."""

    def __init__(
        self,
        pipe: QwenImagePipeline,
        on_step: Callable[[float], None] | None = None,
        warmup_sizes: Sequence[tuple[int, int]] = (),
        batch: BatchLimit = ONE_AT_A_TIME,
    ) -> None:
        self.pipe = pipe
        self.device = pipe.device
        self._multiple = pipe.vae_scale_factor * 2
        self._on_step = on_step
        self.warmup_sizes = tuple(warmup_sizes)
        self.batch = batch
        # Prompts of one batch are padded to the longest. Padding after the text keeps every
        # real token's position and, under the text encoder's causal attention, its hidden
        # state: a prompt encodes the same alone or in a batch.
        pipe.tokenizer.padding_side = "right"
        forward = pipe.transformer.forward
        self._paired = forward if isinstance(forward, PairedGuidance) else None
        pipe.scheduler = serving_scheduler(pipe.scheduler)

    def generation_size(self, width: int, height: int) -> tuple[int, int]:
        """The pipeline makes only multiples of 16: generate the next larger one and crop."""
        return (
            math.ceil(width / self._multiple) * self._multiple,
            math.ceil(height / self._multiple) * self._multiple,
        )

    def batch_size(self, spec: ImageSpec) -> int:
        return self.batch.images(*self.generation_size(spec.width, spec.height))

    def generate(self, spec: ImageSpec, should_stop: Callable[[], bool]) -> Image.Image:
        return self.generate_batch([spec], should_stop)[0]

    @torch.inference_mode()
    def generate_batch(
        self,
        specs: Sequence[ImageSpec],
        should_stop: Callable[[], bool],
        on_preview: OnPreview | None = None,
    ) -> list[Image.Image]:
        shape = common_shape(specs)
        gen_width, gen_height = self.generation_size(shape.width, shape.height)
        # A CPU generator per image gives the same noise on every device and in every batch,
        # so a seed means one picture.
        generators = [torch.Generator(device="cpu").manual_seed(spec.seed) for spec in specs]
        monitor = StepMonitor(self._on_step, should_stop)

        scheduler = self.pipe.scheduler
        predicting = isinstance(scheduler, PredictingScheduler) and scheduler.predicts
        plans = [
            preview_steps(spec.num_inference_steps, spec.partial_images)
            if on_preview and predicting
            else []
            for spec in specs
        ]

        def on_step_end(
            _pipe: QwenImagePipeline, i: int, _t: torch.Tensor, kwargs: dict[str, torch.Tensor]
        ) -> dict[str, torch.Tensor]:
            wanted = [position for position, plan in enumerate(plans) if i in plan]
            if wanted and on_preview is not None:
                previews = self._preview(kwargs["latents"], wanted, shape)
                for position, image in zip(wanted, previews, strict=True):
                    on_preview(position, plans[position].index(i), image)
            monitor.step_done()
            return kwargs

        try:
            result = self.pipe(
                **self.inputs(specs),
                true_cfg_scale=shape.guidance_scale,
                width=gen_width,
                height=gen_height,
                num_inference_steps=shape.num_inference_steps,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
            )
        except BaseException:
            # A call cut short skips the pipeline's end-of-call reset of stateful hooks (the
            # step cache's per-branch state): reset here, so the next image starts clean.
            self.pipe.maybe_free_model_hooks()
            raise
        return [center_crop(image, shape.width, shape.height) for image in result.images]

    def _preview(
        self, latents: torch.Tensor, positions: list[int], shape: ImageSpec
    ) -> list[Image.Image]:
        """The predicted pictures of the batch's images at `positions`, cropped as results."""
        scheduler = self.pipe.scheduler
        assert isinstance(scheduler, PredictingScheduler)
        predicted = scheduler.predicted_clean(latents)[positions]
        gen_width, gen_height = self.generation_size(shape.width, shape.height)
        images = decode(self.pipe, predicted, gen_width, gen_height)
        return [center_crop(image, shape.width, shape.height) for image in images]

    def inputs(self, specs: Sequence[ImageSpec]) -> dict[str, Any]:
        """The pipeline's arguments that differ per image: prompts (and an editor's pictures)."""
        return {
            "prompt": [spec.prompt for spec in specs],
            "negative_prompt": [negative_prompt(spec) for spec in specs],
        }

    def warm_up(self, spec: ImageSpec) -> list[tuple[int, int]]:
        """Make `spec`, then the same at each of `warmup_sizes`: a compiled engine prepares
        its kernels per shape, and no request should pay for that. Returns the sizes made."""
        made: list[tuple[int, int]] = []
        joined: list[tuple[int, int]] = []
        shapes: set[tuple[int, int]] = set()
        for width, height in [(spec.width, spec.height), *self.warmup_sizes]:
            if self.generation_size(width, height) in shapes:
                continue
            steps_joined = self._paired.joined if self._paired else 0
            self.generate(replace(spec, width=width, height=height), lambda: False)
            shapes.add(self.generation_size(width, height))
            made.append((width, height))
            if self._paired and self._paired.joined > steps_joined:
                joined.append((width, height))
        if self.warmup_sizes:
            self._warm_up_variants(spec, made, joined)
        return made

    def _warm_up_variants(
        self, spec: ImageSpec, made: list[tuple[int, int]], joined: list[tuple[int, int]]
    ) -> None:
        """Compiled blocks keep a variant per kind of forward (a batch above one, a text
        mask or none); the warm-up images above bring one or two kinds, requests can bring
        the others:
        - with batching, a batch of two prompts of different lengths, at the first size that
          batches, preferably one where CFG's two forwards are not joined (a joined forward
          is a masked batch already);
        - where they were joined (`joined`: what the calls did, an edit's pictures counted),
          an image whose negative prompt is as long as its prompt, joined without a mask."""
        batchable = [
            size
            for size in made
            if self.batch_size(replace(spec, width=size[0], height=size[1])) > 1
        ]
        batchable.sort(key=lambda size: size in joined)
        if batchable:
            first = replace(spec, width=batchable[0][0], height=batchable[0][1])
            longer = replace(first, prompt=f"{first.prompt}, once more and longer", seed=1)
            self.generate_batch([first, longer], lambda: False)
            logger.info("warm-up: a batch of 2 at %dx%d", *batchable[0])
        if joined:
            width, height = joined[0]
            same = replace(spec, width=width, height=height, negative_prompt=spec.prompt)
            self.generate(same, lambda: False)
            logger.info("warm-up: CFG joined without a text mask at %dx%d", width, height)

    def release_memory(self) -> None:
        """After a failure (say, CUDA out of memory) give back what the failed call held."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def negative_prompt(spec: ImageSpec) -> str:
    return spec.negative_prompt.strip() or _EMPTY_NEGATIVE_PROMPT


def center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
