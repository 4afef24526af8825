"""POST /v1/images/generations: the OpenAI Images API with the spec's extensions."""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from qwen_image_common.contract import GeneratedImage, JobResult, PartialImage
from qwen_image_router.api.deps import MetricsDep, RuntimeDep, SettingsDep
from qwen_image_router.api.disconnect import run_until_disconnected
from qwen_image_router.api.routes.files import IMAGE_ROUTE_NAME
from qwen_image_router.errors import (
    InferenceFailed,
    RouterError,
    StorageFailed,
    error_doc,
)
from qwen_image_router.generator import Generation, OpenedStream
from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.runtime import RouterRuntime
from qwen_image_router.schemas import ImageData, ImageGenerationRequest, ImagesResponse
from qwen_image_router.settings import RouterSettings
from qwen_image_router.storage import ImageStorage
from qwen_image_router.streaming import (
    EVENT_STREAM,
    GENERATION_EVENTS,
    HEADERS,
    Echo,
    events,
    first_event,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["images"])

GENERATIONS_PATH = "/v1/images/generations"
# Of the `user` field, logged with each request: enough for an id, not a flood.
_LOGGED_USER_CHARS = 128


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses={
        200: {
            "content": {
                EVENT_STREAM: {
                    "description": "With stream: image_generation.partial_image events, then "
                    "an image_generation.completed event per image"
                }
            }
        },
        400: error_doc("Validation error: <field>: <what>, or Model not available: <name>"),
        401: error_doc("Invalid or missing API key (only when API_KEYS is set)"),
        413: error_doc("Request body too large"),
        500: error_doc("Task queue is full, Task timeout, or Inference failed: <reason>"),
    },
)
async def create_images(
    body: ImageGenerationRequest,
    request: Request,
    settings: SettingsDep,
    metrics: MetricsDep,
    runtime: RuntimeDep,
) -> ImagesResponse | StreamingResponse:
    model = runtime.pools.resolve(body.model, "generate")

    started = time.monotonic()
    request.state.answer_started = started
    job_id = uuid.uuid4().hex
    width, height = body.dimensions()
    log = job_log("request", job_id, body, model, (width, height), 0, started)

    if body.stream:
        echo = Echo(GENERATION_EVENTS, f"{width}x{height}", body.quality, body.output_format)
        return await stream_job(job_id, body, model, (), echo, request, metrics, runtime, log)
    _, data = await run_job(job_id, body, model, (), request, settings, metrics, runtime, log)
    return images_response(body, data, width, height)


def job_log(
    kind: str,
    job_id: str,
    body: ImageGenerationRequest,
    model: str,
    size: tuple[int, int] | None,
    pictures: int,
    started: float,
) -> Callable[[str, str], None]:
    """The one line a generation or an edit logs when it ends, given its worker and outcome
    (`size` None: an edit pipeline chooses it)."""

    def log(worker: str, outcome: str) -> None:
        logger.info(
            "%s %s: model=%s user=%r pictures=%d n=%d size=%s steps=%d partial_images=%s "
            "worker=%s outcome=%s duration=%.2fs",
            kind,
            job_id,
            model,
            # As Python writes it, and cut short: no newline or odd character of a client's
            # string can split or break the line.
            None if body.user is None else body.user[:_LOGGED_USER_CHARS],
            pictures,
            body.n,
            "auto" if size is None else "{}x{}".format(*size),
            body.num_inference_steps,
            body.partial_images if body.stream else "-",
            worker,
            outcome,
            time.monotonic() - started,
        )

    return log


async def run_job(
    job_id: str,
    body: ImageGenerationRequest,
    model: str,
    pictures: Sequence[str],
    request: Request,
    settings: RouterSettings,
    metrics: RouterMetrics,
    runtime: RouterRuntime,
    log: Callable[[str, str], None],
) -> tuple[Generation, list[ImageData]]:
    """A generation's or an edit's job and its images as the answer carries them;
    `log(worker, outcome)` writes the request's log line once, however it ended."""
    outcome, worker = "cancelled", "-"
    metrics.in_flight.inc()
    try:
        generation = await run_until_disconnected(
            request, runtime.generator.generate(job_id, body, model, pictures)
        )
        worker = generation.worker
        data = await _image_data(generation, body, runtime.storage, settings, request)
        outcome = "ok"
    except RouterError as error:
        outcome = error.reason
        raise
    except Exception:
        outcome = "internal"
        raise
    finally:
        metrics.in_flight.dec()
        log(worker, outcome)
    return generation, data


def images_response(
    body: ImageGenerationRequest, data: list[ImageData], width: int, height: int
) -> ImagesResponse:
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        output_format=body.output_format,
        size=f"{width}x{height}",
        quality=body.quality,
        background="opaque",
    )


async def stream_job(
    job_id: str,
    body: ImageGenerationRequest,
    model: str,
    pictures: Sequence[str],
    echo: Echo,
    request: Request,
    metrics: RouterMetrics,
    runtime: RouterRuntime,
    log: Callable[[str, str], None],
) -> StreamingResponse:
    """A generation's or an edit's streamed answer. Errors up to the job's first event are
    JSON answers; the events follow as they come. `log` as for `run_job` (the worker is
    not named: a stream may come from several)."""
    metrics.in_flight.inc()

    async def start() -> tuple[OpenedStream, PartialImage | JobResult]:
        opened = await runtime.generator.open_stream(job_id, body, model, pictures)
        return opened, await first_event(opened)

    def on_end(outcome: str) -> None:
        metrics.in_flight.dec()
        log("-", outcome)

    try:
        opened, first = await run_until_disconnected(request, start())
    except RouterError as error:
        on_end(error.reason)
        raise
    except BaseException:
        on_end("internal")
        raise
    return StreamingResponse(
        events(opened, first, echo, on_end), media_type=EVENT_STREAM, headers=HEADERS
    )


async def _image_data(
    generation: Generation,
    body: ImageGenerationRequest,
    storage: ImageStorage,
    settings: RouterSettings,
    request: Request,
) -> list[ImageData]:
    revised = generation.revised_prompt
    if body.response_format == "b64_json":
        return [
            ImageData(b64_json=image.b64, revised_prompt=revised) for image in generation.images
        ]
    names = await _store(storage, generation.images, body.output_format)
    return [
        ImageData(url=_image_url(name, settings, request), revised_prompt=revised) for name in names
    ]


async def _store(storage: ImageStorage, images: list[GeneratedImage], extension: str) -> list[str]:
    try:
        files = [base64.b64decode(image.b64, validate=True) for image in images]
    except binascii.Error:
        raise InferenceFailed("the worker sent an image that is not base64") from None
    try:
        return await storage.save_all_async(files, extension)
    except OSError:
        logger.exception("could not store an image in %s", storage.directory)
        raise StorageFailed() from None


def _image_url(name: str, settings: RouterSettings, request: Request) -> str:
    if settings.image_download_url_prefix is not None:
        return f"{settings.image_download_url_prefix}/{name}"
    return str(request.url_for(IMAGE_ROUTE_NAME, file=name))
