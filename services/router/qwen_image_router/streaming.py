"""A streamed answer: a worker's job events as OpenAI's server-sent image events.

The events are openai-python's `<prefix>.partial_image` and `<prefix>.completed`, the prefix
`image_generation` for generations (types/image_gen_*_event.py) and `image_edit` for edits
(types/image_edit_*_event.py), each with `image_index` beside OpenAI's fields so that n > 1
can be told apart. Nothing is sent before the job's first event, so every error up to then
is the spec's JSON answer; after it, an error is one `error` event in OpenAI's shape (the
SDK raises it as an APIError), then the stream ends. Each event is sent as it comes: no
buffering here, and `x-accel-buffering: no` asks nginx-like proxies for the same.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from PIL import Image

from qwen_image_common.contract import PIXELS_PER_TOKEN, JobResult, PartialImage
from qwen_image_router.errors import InferenceFailed, RouterError, TaskTimeout
from qwen_image_router.generator import OpenedStream

EVENT_STREAM = "text/event-stream"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
GENERATION_EVENTS = "image_generation"
EDIT_EVENTS = "image_edit"


@dataclass(frozen=True)
class Echo:
    """What every event repeats of the request, and the events' type prefix."""

    prefix: str
    # WIDTHxHEIGHT, or None where an edit pipeline chose it: each event's picture tells.
    size: str | None
    quality: str
    output_format: str
    background: str = "opaque"

    def size_of(self, image_b64: str) -> str:
        """The size asked for, else the one of the event's picture (read once an event)."""
        return self.size or "{}x{}".format(*made_size(image_b64))

    def fields(self, size: str) -> dict[str, Any]:
        return {
            "size": size,
            "quality": self.quality,
            "output_format": self.output_format,
            "background": self.background,
            "created_at": int(time.time()),
        }

    @staticmethod
    def usage(size: str) -> dict[str, Any]:
        """Qwen-Image's counts: no input tokens are counted (the prompt is encoded by the
        worker's text encoder, not metered), output tokens are the image's latent tokens."""
        width, height = (int(side) for side in size.split("x"))
        tokens = width * height // PIXELS_PER_TOKEN
        return {
            "input_tokens": 0,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": tokens,
            "total_tokens": tokens,
        }


def made_size(image_b64: str) -> tuple[int, int]:
    """A worker's picture's width and height, from the file's header."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(image_b64, validate=True))) as picture:
            return picture.size
    except (OSError, ValueError) as exc:
        raise InferenceFailed(f"the worker sent an image that is not a picture ({exc})") from None


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def partial_event(echo: Echo, preview: PartialImage) -> str:
    event = f"{echo.prefix}.partial_image"
    return _sse(
        event,
        {
            "type": event,
            "b64_json": preview.b64,
            "partial_image_index": preview.partial_image_index,
            "image_index": preview.image_index,
            **echo.fields(echo.size_of(preview.b64)),
        },
    )


def completed_event(echo: Echo, index: int, image_b64: str) -> str:
    event = f"{echo.prefix}.completed"
    size = echo.size_of(image_b64)
    return _sse(
        event,
        {
            "type": event,
            "b64_json": image_b64,
            "image_index": index,
            "usage": echo.usage(size),
            **echo.fields(size),
        },
    )


def error_event(error: RouterError) -> str:
    body = {"type": "server_error", "code": error.reason, "message": error.detail, "param": None}
    return _sse("error", {"type": "error", "error": body})


async def first_event(opened: OpenedStream) -> PartialImage | JobResult:
    """The job's first event, before anything is sent; raises the route's JSON errors."""
    try:
        return await _next_event(opened)
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
            event = await _next_event(opened)
        for index, image in enumerate(event.images):
            yield completed_event(echo, index, image.b64)
        outcome = "ok"
    except RouterError as error:
        outcome = error.reason
        yield error_event(error)
    finally:
        await _close(opened)
        on_end(outcome)


async def _next_event(opened: OpenedStream) -> PartialImage | JobResult:
    try:
        async with asyncio.timeout_at(opened.deadline):
            return await opened.stream.next_event()
    except TimeoutError:
        raise TaskTimeout() from None


async def _close(opened: OpenedStream) -> None:
    # Starlette cancels through an anyio scope, which cancels every await inside it again:
    # shield the close, or the worker's connection stays open and its job runs on.
    with anyio.CancelScope(shield=True):
        await opened.stream.aclose()
