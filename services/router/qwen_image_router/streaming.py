"""A streamed answer: a worker's job events as OpenAI's server-sent image events.

The events are openai-python's `image_generation.partial_image` and
`image_generation.completed` (types/image_gen_*_event.py), each with `image_index` beside
OpenAI's fields so that n > 1 can be told apart. Nothing is sent before the job's first
event, so every error up to then is the spec's JSON answer; after it, an error is one
`error` event in OpenAI's shape (the SDK raises it as an APIError), then the stream ends.
Each event is sent as it comes: no buffering here, and `x-accel-buffering: no` asks
nginx-like proxies for the same.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from qwen_image_common.contract import PIXELS_PER_TOKEN, JobResult, PartialImage
from qwen_image_router.errors import RouterError, TaskTimeout
from qwen_image_router.generator import OpenedStream

EVENT_STREAM = "text/event-stream"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
PARTIAL_IMAGE = "image_generation.partial_image"
COMPLETED = "image_generation.completed"


@dataclass(frozen=True)
class Echo:
    """What every event repeats of the request."""

    size: str
    quality: str
    output_format: str
    background: str = "opaque"

    def fields(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "quality": self.quality,
            "output_format": self.output_format,
            "background": self.background,
            "created_at": int(time.time()),
        }

    def usage(self) -> dict[str, Any]:
        """Qwen-Image's counts: no input tokens are counted (the prompt is encoded by the
        worker's text encoder, not metered), output tokens are the image's latent tokens."""
        width, height = (int(side) for side in self.size.split("x"))
        tokens = width * height // PIXELS_PER_TOKEN
        return {
            "input_tokens": 0,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": tokens,
            "total_tokens": tokens,
        }


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def partial_event(echo: Echo, preview: PartialImage) -> str:
    return _sse(
        PARTIAL_IMAGE,
        {
            "type": PARTIAL_IMAGE,
            "b64_json": preview.b64,
            "partial_image_index": preview.partial_image_index,
            "image_index": preview.image_index,
            **echo.fields(),
        },
    )


def completed_events(echo: Echo, result: JobResult) -> list[str]:
    return [
        _sse(
            COMPLETED,
            {
                "type": COMPLETED,
                "b64_json": image.b64,
                "image_index": index,
                "usage": echo.usage(),
                **echo.fields(),
            },
        )
        for index, image in enumerate(result.images)
    ]


def error_event(error: RouterError) -> str:
    body = {"type": "server_error", "code": error.reason, "message": error.detail, "param": None}
    return _sse("error", {"type": "error", "error": body})


async def first_event(opened: OpenedStream) -> PartialImage | JobResult:
    """The job's first event, before anything is sent; raises the route's JSON errors."""
    try:
        async with asyncio.timeout_at(opened.deadline):
            return await opened.stream.next_event()
    except TimeoutError:
        await _close(opened)
        raise TaskTimeout() from None
    except BaseException:
        await _close(opened)
        raise


async def events(
    opened: OpenedStream,
    first: PartialImage | JobResult,
    echo: Echo,
    on_end: Callable[[str], None],
) -> AsyncIterator[str]:
    """The response body: `first` and every later event. A client gone cancels this where
    it waits (Starlette does); the worker's stream is closed then, which cancels the job.
    `on_end(outcome)` is called once, with "ok", an error's reason, or "cancelled"."""
    outcome = "cancelled"
    event = first
    try:
        while isinstance(event, PartialImage):
            yield partial_event(echo, event)
            try:
                async with asyncio.timeout_at(opened.deadline):
                    event = await opened.stream.next_event()
            except TimeoutError:
                outcome = TaskTimeout.reason
                yield error_event(TaskTimeout())
                return
            except RouterError as error:
                outcome = error.reason
                yield error_event(error)
                return
        for line in completed_events(echo, event):
            yield line
        outcome = "ok"
    finally:
        await _close(opened)
        on_end(outcome)


async def _close(opened: OpenedStream) -> None:
    # Starlette cancels through an anyio scope, which cancels every await inside it again:
    # shield the close, or the worker's connection stays open and its job runs on.
    with anyio.CancelScope(shield=True):
        await opened.stream.aclose()
