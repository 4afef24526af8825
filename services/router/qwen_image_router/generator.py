"""One generation request from validated input to images: rewrite, seed, dispatch.

TASK_TIMEOUT bounds all of it. When it passes, the dispatch is cancelled, which abandons
the HTTP request to the worker and so closes its connection: the worker cancels the job.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

from qwen_image_common.contract import GeneratedImage, JobRequest
from qwen_image_router.errors import TaskTimeout
from qwen_image_router.outbound.dispatch import Dispatcher
from qwen_image_router.outbound.spread import EventStream
from qwen_image_router.prompt_rewrite import PromptRewriter
from qwen_image_router.schemas import MAX_SEED, ImageGenerationRequest


@dataclass(frozen=True)
class Generation:
    images: list[GeneratedImage]
    worker: str
    revised_prompt: str | None


@dataclass(frozen=True)
class OpenedStream:
    stream: EventStream
    revised_prompt: str | None
    deadline: float  # TASK_TIMEOUT's end, on the event loop's clock


class ImageGenerator:
    """Turns a request into one job (all n images together) and runs it in time."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        rewriter: PromptRewriter | None,
        timeout_seconds: float,
        rng: random.Random | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._rewriter = rewriter
        self._timeout_seconds = timeout_seconds
        self._rng = rng or random.Random()

    def choose_seed(self, request: ImageGenerationRequest) -> int:
        """The request's seed, or a random one whose last image's seed still fits."""
        if request.seed is not None:
            return request.seed
        return self._rng.randint(0, MAX_SEED - request.n + 1)

    async def generate(
        self,
        job_id: str,
        request: ImageGenerationRequest,
        model: str,
        pictures: Sequence[str] = (),
    ) -> Generation:
        """Runs on the pool of `model`, editing `pictures` (base64 PNGs) if any; raises
        QueueFull, TaskTimeout or InferenceFailed."""
        try:
            async with asyncio.timeout(self._timeout_seconds) as deadline:
                job, revised = await self._job(job_id, request, pictures)
                dispatched = await self._dispatcher.run_spread(job, _when(deadline), model)
        except TimeoutError:
            raise TaskTimeout() from None
        return Generation(dispatched.result.images, dispatched.worker, revised)

    async def open_stream(
        self,
        job_id: str,
        request: ImageGenerationRequest,
        model: str,
        pictures: Sequence[str] = (),
    ) -> OpenedStream:
        """A streamed job, taken by a worker; raises as `generate`. TASK_TIMEOUT bounds the
        whole stream: its reader keeps to `deadline`."""
        try:
            async with asyncio.timeout(self._timeout_seconds) as deadline:
                job, revised = await self._job(job_id, request, pictures)
                stream = await self._dispatcher.open_stream(job, _when(deadline), model)
        except TimeoutError:
            raise TaskTimeout() from None
        return OpenedStream(stream, revised, _when(deadline))

    async def _job(
        self, job_id: str, request: ImageGenerationRequest, pictures: Sequence[str] = ()
    ) -> tuple[JobRequest, str | None]:
        """The job for a request (all n images together), after the prompt's rewrite."""
        seed = self.choose_seed(request)
        width, height = request.job_size() or (None, None)
        revised = None
        if self._rewriter is not None:
            revised = await self._rewriter.rewrite(request.prompt)
        job = JobRequest(
            job_id=job_id,
            prompt=revised or request.prompt,
            negative_prompt=request.negative_prompt,
            width=width,
            height=height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seeds=[seed + i for i in range(request.n)],
            timeout_seconds=self._timeout_seconds,
            output_format=request.output_format,
            output_compression=request.output_compression,
            stream=request.stream,
            partial_images=request.partial_images if request.stream else 0,
            pictures=list(pictures),
        )
        return job, revised


def _when(deadline: asyncio.Timeout) -> float:
    when = deadline.when()
    assert when is not None
    return when
