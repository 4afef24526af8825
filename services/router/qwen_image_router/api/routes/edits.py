"""POST /v1/images/edits: OpenAI's multipart edit request, run by an edit model's pool.

The form is read here, not by FastAPI's parameters, so every problem is the spec's 400
naming the field: `image` (or `image[]`) one to three pictures, the other fields as
/v1/images/generations takes them in JSON. `mask` is refused: Qwen-Image-Edit takes none.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
import uuid

from fastapi import APIRouter, HTTPException, Request
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from qwen_image_common.contract import MAX_EDIT_PICTURES, GeneratedImage
from qwen_image_router.api.deps import MetricsDep, RuntimeDep, SettingsDep
from qwen_image_router.api.routes.images import images_response, run_job
from qwen_image_router.errors import (
    InferenceFailed,
    ValidationFailed,
    describe_validation_errors,
    error_doc,
)
from qwen_image_router.schemas import ImageEditRequest, ImagesResponse
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
        400: error_doc("Validation error: <field>: <what>, or Model not available: <name>"),
        401: error_doc("Invalid or missing API key (only when API_KEYS is set)"),
        413: error_doc("Request body too large"),
        500: error_doc("Task queue is full, Task timeout, or Inference failed: <reason>"),
    },
)
async def edit_images(
    request: Request, settings: SettingsDep, metrics: MetricsDep, runtime: RuntimeDep
) -> ImagesResponse:
    try:
        # Leaving the block closes the uploads' spooled files: nothing stays on disk.
        async with request.form(max_files=MAX_EDIT_PICTURES + 1, max_fields=_MAX_FIELDS) as form:
            body, uploads = _read_form(form)
            model = runtime.pools.resolve(body.model, "edit")
            files = [(field, await upload.read()) for field, upload in uploads]
    except HTTPException as exc:
        raise ValidationFailed(f"multipart form: {exc.detail}") from None
    pictures = await asyncio.gather(
        *(asyncio.to_thread(plain_picture, data, field) for field, data in files)
    )

    started = time.monotonic()
    request.state.answer_started = started
    job_id = uuid.uuid4().hex

    def log(worker: str, outcome: str) -> None:
        logger.info(
            "edit %s: model=%s pictures=%d n=%d size=%s steps=%d worker=%s outcome=%s "
            "duration=%.2fs",
            job_id,
            model,
            len(pictures),
            body.n,
            "x".join(map(str, body.job_size() or ("auto",))),
            body.num_inference_steps,
            worker,
            outcome,
            time.monotonic() - started,
        )

    generation, data = await run_job(
        job_id, body, model, pictures, request, settings, metrics, runtime, log
    )
    width, height = body.job_size() or _made_size(generation.images[0])
    return images_response(body, data, width, height)


def _made_size(image: GeneratedImage) -> tuple[int, int]:
    """The size the edit pipeline chose, from the file's header."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(image.b64, validate=True))) as picture:
            return picture.size
    except (OSError, ValueError) as exc:
        raise InferenceFailed(f"the worker sent an image that is not a picture ({exc})") from None


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
