"""Request validation: every field's rule and message, 400 and never 422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from router_fakes import FakeWorker, router_client, router_settings, serve

from qwen_image_router.schemas import MAX_SEED, ImageGenerationRequest

GENERATE = "/v1/images/generations"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A router whose only worker does not exist: valid requests end as queue full."""
    settings = router_settings(tmp_path, ["http://127.0.0.1:9"], max_request_body_bytes=20000)
    async with router_client(settings) as client:
        yield client


def bad(field: str, message: str) -> str:
    return f"Validation error: {field}: {message}"


INVALID: list[tuple[Any, str]] = [
    ({}, bad("prompt", "Field required")),
    ({"prompt": None}, bad("prompt", "Input should be a valid string")),
    ({"prompt": ""}, bad("prompt", "must not be empty")),
    ({"prompt": "  \n "}, bad("prompt", "must not be empty")),
    ({"prompt": 5}, bad("prompt", "Input should be a valid string")),
    ({"prompt": "x" * 8193}, bad("prompt", "String should have at most 8192 characters")),
    ({"prompt": "cat", "n": 0}, bad("n", "Input should be greater than or equal to 1")),
    ({"prompt": "cat", "n": 5}, bad("n", "Input should be less than or equal to 4")),
    ({"prompt": "cat", "n": "2"}, bad("n", "Input should be a valid integer")),
    ({"prompt": "cat", "n": True}, bad("n", "Input should be a valid integer")),
    ({"prompt": "cat", "n": 2.0}, bad("n", "Input should be a valid integer")),
    (
        {"prompt": "cat", "size": "300x300"},
        bad("size", "Input should be '256x256', '512x512' or '1024x1024'"),
    ),
    (
        {"prompt": "cat", "size": "auto"},
        bad("size", "Input should be '256x256', '512x512' or '1024x1024'"),
    ),
    (
        {"prompt": "cat", "response_format": "png"},
        bad("response_format", "Input should be 'b64_json' or 'url'"),
    ),
    ({"prompt": "cat", "user": 7}, bad("user", "Input should be a valid string")),
    ({"prompt": "cat", "negative_prompt": []}, bad("negative_prompt", "Input should be a valid")),
    ({"prompt": "cat", "seed": -1}, bad("seed", "Input should be greater than or equal to 0")),
    ({"prompt": "cat", "seed": MAX_SEED + 1}, bad("seed", "Input should be less than or equal")),
    ({"prompt": "cat", "seed": "42"}, bad("seed", "Input should be a valid integer")),
    ({"prompt": "cat", "seed": 4.0}, bad("seed", "Input should be a valid integer")),
    (
        {"prompt": "cat", "seed": MAX_SEED, "n": 2},
        bad("seed", f"seed + n - 1 must be at most {MAX_SEED}"),
    ),
    (
        {"prompt": "cat", "guidance_scale": 2.9},
        bad("guidance_scale", "Input should be greater than or equal to 3"),
    ),
    (
        {"prompt": "cat", "guidance_scale": 6.01},
        bad("guidance_scale", "Input should be less than or equal to 6"),
    ),
    ({"prompt": "cat", "guidance_scale": "4"}, bad("guidance_scale", "Input should be a valid")),
    ({"prompt": "cat", "guidance_scale": True}, bad("guidance_scale", "Input should be a valid")),
    (
        {"prompt": "cat", "num_inference_steps": 0},
        bad("num_inference_steps", "Input should be greater than or equal to 1"),
    ),
    (
        {"prompt": "cat", "num_inference_steps": 51},
        bad("num_inference_steps", "Input should be less than or equal to 50"),
    ),
    (
        {"prompt": "cat", "num_inference_steps": 10.5},
        bad("num_inference_steps", "Input should be a valid integer"),
    ),
    (
        {"prompt": "cat", "aspect_ratio": "2:1"},
        bad("aspect_ratio", "Input should be '1:1', '16:9', '9:16', '4:3' or '3:4'"),
    ),
    ({"prompt": "cat", "stream": "yes"}, bad("stream", "Input should be a valid boolean")),
    (
        {"prompt": "cat", "stream": True, "partial_images": 4},
        bad("partial_images", "Input should be less than or equal to 3"),
    ),
    (
        {"prompt": "cat", "output_format": "gif"},
        bad("output_format", "Input should be 'png', 'jpeg' or 'webp'"),
    ),
    (
        {"prompt": "cat", "output_compression": 101},
        bad("output_compression", "Input should be less than or equal to 100"),
    ),
    (
        {"prompt": "cat", "output_compression": -1},
        bad("output_compression", "Input should be greater than or equal to 0"),
    ),
    (
        {"prompt": "cat", "background": "transparent"},
        bad("background", "Qwen-Image makes opaque pictures"),
    ),
    ({"prompt": "cat", "quality": "ultra"}, bad("quality", "Input should be 'auto'")),
    ({"prompt": "cat", "model": 3}, bad("model", "Input should be a valid string")),
    ([{"prompt": "cat"}], "Validation error: request body must be a JSON object"),
    ("a cat", "Validation error: request body must be a JSON object"),
]


@pytest.mark.parametrize(("body", "detail"), INVALID)
async def test_invalid_fields_get_400_naming_the_field(
    client: httpx.AsyncClient, body: Any, detail: str
) -> None:
    response = await client.post(GENERATE, json=body)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(detail), response.json()
    assert response.headers["x-should-retry"] == "false"


async def test_several_bad_fields_are_all_named(client: httpx.AsyncClient) -> None:
    response = await client.post(GENERATE, json={"prompt": "cat", "n": 9, "size": "1x1"})
    detail = response.json()["detail"]
    assert response.status_code == 400
    assert "n: " in detail and "size: " in detail


@pytest.mark.parametrize(
    ("content", "headers", "detail"),
    [
        (b'{"prompt": "cat",', {"content-type": "application/json"}, "not valid JSON"),
        (b"", {"content-type": "application/json"}, "request body is required"),
        (b'{"prompt": "cat"}', {"content-type": "text/plain"}, "must be a JSON object"),
    ],
)
async def test_bad_json_and_wrong_content_get_400_not_422(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], detail: str
) -> None:
    response = await client.post(GENERATE, content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Validation error: ")
    assert detail in response.json()["detail"]


@pytest.mark.parametrize("model", ["dall-e-3", "gpt-image-1", "Qwen-Image-Edit", ""])
async def test_another_model_gets_model_not_available(
    client: httpx.AsyncClient, model: str
) -> None:
    response = await client.post(GENERATE, json={"prompt": "cat", "model": model})
    assert response.status_code == 400
    assert response.json() == {"detail": f"Model not available: {model}"}
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("model", ["Qwen-Image", "qwen-image", "QWEN-IMAGE", None])
async def test_the_served_model_matches_in_any_case(tmp_path: Path, model: str | None) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        body = {"prompt": "cat", "size": "256x256", "model": model}
        response = await client.post(GENERATE, json=body)
    assert response.status_code == 200, response.text


async def test_unknown_openai_fields_and_nulls_are_accepted(client: httpx.AsyncClient) -> None:
    body = {
        "prompt": "cat",
        "quality": "hd",
        "style": "vivid",
        "background": "auto",
        "moderation": "low",
        "output_compression": 80,
        "output_format": "webp",
        "stream": False,
        "n": None,
        "size": None,
        "seed": None,
        "user": "user-42",
    }
    response = await client.post(GENERATE, json=body)
    # Valid: it gets as far as scheduling, where the only worker is unreachable.
    assert response.status_code == 500
    assert response.json() == {"detail": "Task queue is full"}


async def test_an_oversized_body_gets_413_with_the_limit(client: httpx.AsyncClient) -> None:
    response = await client.post(GENERATE, json={"prompt": "x" * 30000})
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large: the limit is 20000 bytes"}


async def test_an_oversized_chunked_body_gets_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    response = await client.post(
        GENERATE, content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "20000 bytes" in response.json()["detail"]


def test_defaults_and_dimensions() -> None:
    request = ImageGenerationRequest.model_validate({"prompt": "cat"})
    assert (request.n, request.size, request.response_format) == (1, "1024x1024", "b64_json")
    assert (request.guidance_scale, request.num_inference_steps) == (4.0, 50)
    assert request.negative_prompt == "" and request.seed is None and request.model is None
    assert request.dimensions() == (1024, 1024)
    assert (
        ImageGenerationRequest.model_validate({"prompt": "c", "guidance_scale": 5}).guidance_scale
        == 5.0
    )


@pytest.mark.parametrize(
    ("size", "aspect_ratio", "dimensions"),
    [
        ("256x256", None, (256, 256)),
        ("512x512", None, (512, 512)),
        ("1024x1024", None, (1024, 1024)),
        ("256x256", "1:1", (1328, 1328)),
        ("512x512", "16:9", (1664, 928)),
        ("1024x1024", "9:16", (928, 1664)),
        ("256x256", "4:3", (1472, 1140)),
        ("256x256", "3:4", (1140, 1472)),
    ],
)
def test_aspect_ratio_wins_over_size(
    size: str, aspect_ratio: str | None, dimensions: tuple[int, int]
) -> None:
    body: dict[str, Any] = {"prompt": "cat", "size": size}
    if aspect_ratio is not None:
        body["aspect_ratio"] = aspect_ratio
    assert ImageGenerationRequest.model_validate(body).dimensions() == dimensions


def test_the_highest_seed_fits_for_one_image() -> None:
    request = ImageGenerationRequest.model_validate({"prompt": "cat", "seed": MAX_SEED})
    assert request.seed == MAX_SEED
    request = ImageGenerationRequest.model_validate({"prompt": "c", "seed": MAX_SEED - 3, "n": 4})
    assert request.seed == MAX_SEED - 3
