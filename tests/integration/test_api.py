"""The spec's API end to end: the official openai client and raw HTTP against `qwen-image up`."""

from __future__ import annotations

import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from support.stack import Stack, png

pytestmark = pytest.mark.integration

FAST = {"num_inference_steps": 2}


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def generate(stack: Stack, **body: object) -> httpx.Response:
    return httpx.post(stack.url + "/v1/images/generations", json=body, timeout=120)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_health_models_and_ready(stack: Stack) -> None:
    assert httpx.get(stack.url + "/healthz").json() == {"status": "ok", "model": "Qwen-Image"}
    models = httpx.get(stack.url + "/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"]) for m in models["data"]] == [("Qwen-Image", "model")]
    assert isinstance(models["data"][0]["created"], int)
    assert isinstance(models["data"][0]["owned_by"], str)
    assert httpx.get(stack.url + "/readyz").status_code == 200


def test_openai_client_b64_with_the_spec_extensions(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="Qwen-Image",
        prompt="一只可爱的小猫坐在花园里",
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={
            "negative_prompt": "模糊的，低质量的，水印",
            "seed": 42,
            "guidance_scale": 5.0,
            "num_inference_steps": 2,
        },
    )
    assert result.created > 0
    assert result.data is not None and len(result.data) == 2
    images = [png(item.b64_json or "") for item in result.data]
    assert all(image.size == (256, 256) for image in images)
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_openai_client_url_format_serves_the_same_image(
    client: openai.OpenAI, stack: Stack
) -> None:
    common = {"prompt": "a lighthouse at dusk", "size": "512x512"}
    extra = {"seed": 9, **FAST}
    by_url = client.images.generate(**common, response_format="url", extra_body=extra)
    inline = client.images.generate(**common, response_format="b64_json", extra_body=extra)
    assert by_url.data and inline.data
    url = by_url.data[0].url or ""
    assert url.startswith(stack.url + "/images/") and url.endswith(".png")
    served = httpx.get(url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    from_url = Image.open(io.BytesIO(served.content))
    assert from_url.size == (512, 512)
    assert np.array_equal(pixels(from_url), pixels(png(inline.data[0].b64_json or "")))
    assert len(list(stack.images_dir.glob("*.png"))) >= 1
    assert not list(stack.images_dir.glob("*.tmp*"))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_n_images(stack: Stack, n: int) -> None:
    answer = generate(stack, prompt="a kite", n=n, size="256x256", seed=1, **FAST)
    assert answer.status_code == 200
    assert len(answer.json()["data"]) == n


def test_seeds_reproduce_and_image_i_uses_seed_plus_i(stack: Stack) -> None:
    def images(seed: int, n: int) -> list[np.ndarray]:
        answer = generate(stack, prompt="a red bicycle", n=n, size="256x256", seed=seed, **FAST)
        assert answer.status_code == 200
        return [pixels(png(item["b64_json"])) for item in answer.json()["data"]]

    pair = images(1234, 2)
    assert np.array_equal(images(1234, 2)[0], pair[0])
    # The pair is one batched call, seed 1235 alone another: the same picture up to the
    # order of float rounding (a level on a few pixels); another seed is another picture.
    alone = images(1235, 1)[0].astype(np.int16)
    moved = np.abs(alone - pair[1].astype(np.int16))
    assert moved.max() <= 2 and moved.mean() < 0.01
    assert np.abs(pair[0].astype(np.int16) - pair[1].astype(np.int16)).mean() > 1


def test_without_a_seed_each_request_differs(stack: Stack) -> None:
    a = generate(stack, prompt="a red bicycle", size="256x256", **FAST).json()["data"][0]
    b = generate(stack, prompt="a red bicycle", size="256x256", **FAST).json()["data"][0]
    assert not np.array_equal(pixels(png(a["b64_json"])), pixels(png(b["b64_json"])))


@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024"])
def test_sizes(stack: Stack, size: str) -> None:
    answer = generate(stack, prompt="a field", size=size, num_inference_steps=1)
    width, height = (int(v) for v in size.split("x"))
    assert png(answer.json()["data"][0]["b64_json"]).size == (width, height)


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        ("1:1", (1328, 1328)),
        ("16:9", (1664, 928)),
        ("9:16", (928, 1664)),
        ("4:3", (1472, 1140)),
        ("3:4", (1140, 1472)),
    ],
)
def test_aspect_ratio_wins_over_size_and_gives_exact_dimensions(
    stack: Stack, ratio: str, expected: tuple[int, int]
) -> None:
    answer = generate(
        stack, prompt="a harbour", size="256x256", aspect_ratio=ratio, num_inference_steps=1
    )
    assert answer.status_code == 200
    assert png(answer.json()["data"][0]["b64_json"]).size == expected


def test_model_name_matches_case_insensitively(stack: Stack) -> None:
    assert (
        generate(stack, model="qwen-image", prompt="a cat", size="256x256", **FAST).status_code
        == 200
    )


def test_another_model_is_not_available(stack: Stack, client: openai.OpenAI) -> None:
    answer = generate(stack, model="dall-e-3", prompt="a cat")
    assert answer.status_code == 400
    assert answer.json() == {"detail": "Model not available: dall-e-3"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert raised.value.status_code == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "size": "300x300"}, "size"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
        ({"prompt": "x", "guidance_scale": 2.9}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": 6.1}, "guidance_scale"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_inference_steps": 51}, "num_inference_steps"),
        ({"prompt": "x", "aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"prompt": "x", "seed": "abc"}, "seed"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_bad_fields_get_400_naming_the_field(stack: Stack, body: dict, field: str) -> None:
    answer = generate(stack, **body)
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert detail.startswith("Validation error") and field in detail


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"", "application/json"),
    ],
)
def test_bad_json_gets_400_not_422(stack: Stack, content: bytes, content_type: str) -> None:
    answer = httpx.post(
        stack.url + "/v1/images/generations",
        content=content,
        headers={"content-type": content_type},
    )
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("Validation error")


def test_images_route_refuses_unknown_files_and_path_tricks(stack: Stack) -> None:
    for path in [
        "/images/nothing.png",
        "/images/..%2f..%2fetc%2fpasswd",
        "/images/../pyproject.toml",
    ]:
        assert httpx.get(stack.url + path).status_code == 404
