"""The rest of OpenAI's Images API through the official SDK: file formats, the echoed
settings, and what Qwen-Image cannot honour (transparent backgrounds)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from support.stack import Stack

pytestmark = pytest.mark.integration

FAST = {"num_inference_steps": 2, "seed": 7}


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(("fmt", "pillow_name"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_decode_and_compression_trades_bytes(
    client: openai.OpenAI, fmt: str, pillow_name: str
) -> None:
    common = {"prompt": "a harbour", "size": "256x256", "extra_body": FAST}
    png = client.images.generate(**common)
    best = client.images.generate(**common, output_format=fmt)
    small = client.images.generate(
        **common,
        output_format=fmt,
        output_compression=10,
    )
    assert png.data and best.data and small.data
    files = [base64.b64decode(answer.data[0].b64_json or "") for answer in (png, best, small)]
    images = [decoded(data) for data in files]
    assert [image.format for image in images] == ["PNG", pillow_name, pillow_name]
    assert all(image.size == (256, 256) for image in images)
    assert best.output_format == fmt and png.output_format == "png"
    # The same picture: lossy at quality 100 stays near the PNG, and quality 10 is smaller.
    assert np.abs(rgb(images[1]) - rgb(images[0])).mean() < 12
    assert len(files[2]) < len(files[1])


@pytest.mark.parametrize(("fmt", "content_type"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_url_format_serves_the_file_with_its_type(
    client: openai.OpenAI, stack: Stack, fmt: str, content_type: str
) -> None:
    answer = client.images.generate(
        prompt="a harbour",
        size="256x256",
        response_format="url",
        output_format=fmt,
        extra_body=FAST,
    )
    assert answer.data
    url = answer.data[0].url or ""
    assert url.endswith(f".{fmt}")
    served = httpx.get(url)
    assert served.status_code == 200
    assert served.headers["content-type"] == content_type
    assert decoded(served.content).size == (256, 256)


def test_the_answer_echoes_the_settings(client: openai.OpenAI) -> None:
    answer = client.images.generate(
        prompt="a harbour",
        quality="high",
        background="opaque",
        output_format="webp",
        extra_body={**FAST, "aspect_ratio": "16:9"},
    )
    assert (answer.output_format, answer.size, answer.quality, answer.background) == (
        "webp",
        "1664x928",
        "high",
        "opaque",
    )


def test_quality_does_not_change_the_picture(client: openai.OpenAI) -> None:
    low, high = (
        client.images.generate(prompt="a harbour", size="256x256", quality=q, extra_body=FAST)
        for q in ("low", "high")
    )
    assert low.data and high.data
    assert low.data[0].b64_json == high.data[0].b64_json


def test_a_transparent_background_is_refused_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a logo", background="transparent")
    body = raised.value.body
    assert isinstance(body, dict) and "background" in body["detail"]
