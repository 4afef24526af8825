"""POST /v1/images/edits: OpenAI's multipart edit request, run by an edit model's pool.

The form is read here, not by FastAPI's parameters, so every problem is the spec's 400
naming the field: `image` (or `image[]`) one to three pictures, the other fields as
/v1/images/generations takes them in JSON, `stream` included (`image_edit.*` events).
`mask` is refused: Qwen-Image-Edit takes none.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from qwen_image_common.contract import MAX_EDIT_PICTURES
from qwen_image_router.api.deps import MetricsDep, RuntimeDep, SettingsDep
from qwen_image_router.api.routes.images import (
    images_response,
    job_log,
    run_job,
    stream_job,
)
from qwen_image_router.errors import ValidationFailed, describe_validation_errors, error_doc
from qwen_image_router.schemas import ImageEditRequest, ImagesResponse
from qwen_image_router.streaming import EDIT_EVENTS, EVENT_STREAM, Echo, made_size
from qwen_image_router.uploads import plain_picture

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["images"])

EDITS_PATH = "/v1/images/edits"
_PICTURE_FIELDS = ("image", "image[]")
# Form fields beyond the pictures: OpenAI's and the spec's, with room for unknown ones.
_MAX_FIELDS = 64


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses={
        200: {
            "content": {
                EVENT_STREAM: {
                    "description": "With stream: image_edit.partial_image events, then an "
                    "image_edit.completed event per image"
                }
            }
        },
        400: error_doc("Validation error: <field>: <what>, or Model not available: <name>"),
        401: error_doc("Invalid or missing API key (only when API_KEYS is set)"),
        413: error_doc("Request body too large"),
        500: error_doc("Task queue is full, Task timeout, or Inference failed: <reason>"),
    },
)
async def edit_images(
    request: Request, settings: SettingsDep, metrics: MetricsDep, runtime: RuntimeDep
) -> ImagesResponse | StreamingResponse:
    try:
        # Leaving the block closes the uploads' spooled files: nothing stays on disk.
        async with request.form(max_files=MAX_EDIT_PICTURES + 1, max_fields=_MAX_FIELDS) as form:
            body, uploads = _read_form(form)
            model = runtime.pools.resolve(body.model, "edit")
            most = runtime.pools.max_pictures(model)
            if len(uploads) > most:
                raise ValidationFailed(
                    f"image: {model} edits at most {most} picture(s), got {len(uploads)}"
                )
            files = [(field, await upload.read()) for field, upload in uploads]
    except HTTPException as exc:
        raise ValidationFailed(f"multipart form: {exc.detail}") from None
    pictures = await asyncio.gather(
        *(asyncio.to_thread(plain_picture, data, field) for field, data in files)
    )

    started = time.monotonic()
    request.state.answer_started = started
    job_id = uuid.uuid4().hex
    size = body.job_size()
    log = job_log("edit", job_id, body, model, size, len(pictures), started)

    if body.stream:
        asked = None if size is None else "{}x{}".format(*size)
        echo = Echo(EDIT_EVENTS, asked, body.quality, body.output_format)
        return await stream_job(job_id, body, model, pictures, echo, request, metrics, runtime, log)
    generation, data = await run_job(
        job_id, body, model, pictures, request, settings, metrics, runtime, log
    )
    width, height = size or made_size(generation.images[0].b64)
    return images_response(body, data, width, height)


def _read_form(form: FormData) -> tuple[ImageEditRequest, list[tuple[str, UploadFile]]]:
    """The request's fields, and its pictures named as the error messages name them."""
    if "mask" in form:
        raise ValidationFailed("mask: Qwen-Image-Edit takes no mask; describe the change")
    uploads: list[tuple[str, UploadFile]] = []
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in _PICTURE_FIELDS:
            if not isinstance(value, UploadFile):
                raise ValidationFailed(f"{key}: must be a file")
            uploads.append((f"{key} {len(uploads) + 1}", value))
        elif isinstance(value, str):
            fields[key] = value
    if not uploads:
        raise ValidationFailed("image: at least one picture is required")
    if len(uploads) > MAX_EDIT_PICTURES:
        raise ValidationFailed(f"image: at most {MAX_EDIT_PICTURES} pictures, got {len(uploads)}")
    try:
        return ImageEditRequest.model_validate(fields), uploads
    except ValidationError as exc:
        raise ValidationFailed(describe_validation_errors(exc.errors())) from None
