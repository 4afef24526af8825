"""GET /images/<file>: the url-format images, only under names the router writes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from qwen_image_common.encoding import CONTENT_TYPES
from qwen_image_router.api.deps import RuntimeDep, SettingsDep
from qwen_image_router.errors import error_doc

router = APIRouter(tags=["images"])

IMAGE_ROUTE_NAME = "get_image"


@router.head("/images/{file}", include_in_schema=False)
@router.get(
    "/images/{file}",
    name=IMAGE_ROUTE_NAME,
    response_class=FileResponse,
    responses={
        200: {"content": {kind: {} for kind in CONTENT_TYPES.values()}},
        404: error_doc("Image not found"),
    },
)
async def get_image(file: str, settings: SettingsDep, runtime: RuntimeDep) -> FileResponse:
    path = await asyncio.to_thread(runtime.storage.path_for, file)
    if path is None:
        raise HTTPException(status_code=404, detail="Image not found")
    return FileResponse(
        path,
        media_type=CONTENT_TYPES[path.suffix.removeprefix(".")],
        headers={
            # The name is the capability; shared caches must not keep the image.
            "cache-control": f"private, max-age={int(settings.image_retention_seconds)}",
            "x-content-type-options": "nosniff",
        },
    )
