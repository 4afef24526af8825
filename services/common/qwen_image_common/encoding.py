"""Image files in the formats OpenAI's Images API names: png, jpeg, webp.

Both services read the names and content types; the worker encodes (off its GPU thread).
Qwen-Image makes opaque RGB pictures, so no format here carries an alpha channel.
"""

from __future__ import annotations

import io
from typing import Literal, get_args

from PIL import Image

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
CONTENT_TYPES: dict[str, str] = {fmt: f"image/{fmt}" for fmt in IMAGE_FORMATS}

# OpenAI's default: the best quality a lossy format has.
DEFAULT_COMPRESSION = 100


def encode_image(image: Image.Image, fmt: ImageFormat, compression: int) -> bytes:
    """The file bytes. `compression` (0..100) is the lossy formats' quality, as OpenAI's
    `output_compression`; PNG is lossless and ignores it."""
    buffer = io.BytesIO()
    rgb = image.convert("RGB")
    if fmt == "png":
        rgb.save(buffer, format="PNG")
    elif fmt == "jpeg":
        rgb.save(buffer, format="JPEG", quality=compression)
    else:
        rgb.save(buffer, format="WEBP", quality=compression)
    return buffer.getvalue()
