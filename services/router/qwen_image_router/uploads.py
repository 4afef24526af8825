"""An edit's uploaded pictures, checked and made plain before any worker sees them.

Each file must be a whole PNG, JPEG or WebP picture of at most MAX_PICTURE_PIXELS, judged
from its header before its pixels are decoded, so a small file that claims a huge picture
(a decompression bomb) costs nothing. EXIF orientation is applied, and palette, RGBA, CMYK
and other modes become RGB; the worker gets a PNG of exactly what the edit should see.
"""

from __future__ import annotations

import base64
import io
import warnings

from PIL import Image, ImageOps

from qwen_image_router.errors import ValidationFailed

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# 4096x4096: more than any phone camera's picture needs after the pipeline scales it to
# about one megapixel; decoded as RGBA it is 64 MiB, the most one picture may hold.
MAX_PICTURE_PIXELS = 4096 * 4096
# What PIL's format plugins raise on damaged data (UnidentifiedImageError is an OSError;
# others raise SyntaxError, struct.error, IndexError, ...): any of them means unreadable.
_CORRUPT = Exception


def plain_picture(data: bytes, field: str) -> str:
    """The picture in `data` as a base64 RGB PNG; ValidationFailed naming `field` if it is
    not an accepted, whole picture of a sane size. Runs off the event loop (it decodes)."""
    try:
        with warnings.catch_warnings():
            # PIL warns (and past twice the limit raises) on large pictures; ours is checked
            # below, from the header, before anything is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)
    except Image.DecompressionBombError:
        raise ValidationFailed(f"{field}: at most {MAX_PICTURE_PIXELS} pixels") from None
    except _CORRUPT:
        raise ValidationFailed(f"{field}: not a picture PIL can read") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise ValidationFailed(
                f"{field}: unsupported format {image.format}; use {', '.join(ACCEPTED_FORMATS)}"
            )
        width, height = image.size
        if width * height > MAX_PICTURE_PIXELS or width < 1 or height < 1:
            raise ValidationFailed(
                f"{field}: {width}x{height} pixels; at most {MAX_PICTURE_PIXELS} pixels"
            )
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = upright.convert("RGB")
        except _CORRUPT:
            raise ValidationFailed(f"{field}: truncated or corrupt picture") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
