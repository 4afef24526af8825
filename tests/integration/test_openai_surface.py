"""The rest of OpenAI's Images API through the official SDK: file formats, the echoed
settings, and what Qwen-Image cannot honour (transparent backgrounds)."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from qwen_image_common.contract import LOAD_PATH
from support.processes import wait_until
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


def b64_image(b64: str | None) -> Image.Image:
    return decoded(base64.b64decode(b64 or ""))


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


STREAMED = {"num_inference_steps": 6, "seed": 11}


def test_a_stream_iterates_previews_then_the_unstreamed_image(client: openai.OpenAI) -> None:
    common = {"prompt": "a harbour", "size": "256x256", "output_format": "jpeg"}
    events = list(
        client.images.generate(**common, stream=True, partial_images=2, extra_body=STREAMED)
    )
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [getattr(event, "partial_image_index", None) for event in events] == [0, 1, None]
    pictures = [decoded(base64.b64decode(event.b64_json)) for event in events]
    assert all((p.format, p.size) == ("JPEG", (256, 256)) for p in pictures)
    # Previews are the picture being made: each nearer the result than the one before.
    distances = [np.abs(rgb(p) - rgb(pictures[-1])).mean() for p in pictures]
    assert distances[0] > distances[1] > distances[2] == 0
    last = events[-1]
    assert (last.size, last.output_format, last.background) == ("256x256", "jpeg", "opaque")
    assert last.usage.output_tokens == 256 * 256 // 256
    plain = client.images.generate(**common, extra_body=STREAMED)
    assert plain.data and last.b64_json == plain.data[0].b64_json


def test_a_stream_of_two_images_tells_them_apart(client: openai.OpenAI) -> None:
    common = {"prompt": "a harbour", "size": "256x256", "n": 2}
    events = list(
        client.images.generate(**common, stream=True, partial_images=1, extra_body=STREAMED)
    )
    seen = [(event.type.rsplit(".", 1)[1], event.model_extra["image_index"]) for event in events]
    assert sorted(seen) == [
        ("completed", 0),
        ("completed", 1),
        ("partial_image", 0),
        ("partial_image", 1),
    ]
    assert [kind for kind, _ in seen[-2:]] == ["completed", "completed"]
    plain = client.images.generate(**common, extra_body=STREAMED)
    assert plain.data
    completed = [event.b64_json for event in events if event.type.endswith("completed")]
    # Made together in one batch or apart on two workers (as the workers' load had it):
    # the same pictures up to the order of float rounding.
    for streamed, made in zip(completed, plain.data, strict=True):
        moved = np.abs(rgb(decoded(base64.b64decode(streamed))) - rgb(b64_image(made.b64_json)))
        assert moved.max() <= 2 and moved.mean() < 0.01


def test_a_stream_without_previews_sends_the_completed_event_alone(client: openai.OpenAI) -> None:
    events = list(
        client.images.generate(prompt="a harbour", size="256x256", stream=True, extra_body=FAST)
    )
    assert [event.type for event in events] == ["image_generation.completed"]


def test_bad_input_to_a_stream_is_a_json_400(stack: Stack) -> None:
    body = {"prompt": "a harbour", "stream": True, "partial_images": 4}
    answer = httpx.post(stack.url + "/v1/images/generations", json=body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["detail"].startswith("Validation error: partial_images")


def batch_images(worker_url: str) -> tuple[int, int]:
    """(pipeline calls, images) from the worker's batch-size histogram."""
    values = {}
    for line in httpx.get(worker_url + "/metrics").text.splitlines():
        if line.startswith("qwen_image_worker_batch_images_"):
            name, value = line.split()
            values[name.rsplit("_", 1)[1]] = int(float(value))
    return values["count"], values["sum"]


def router_sees_every_worker_idle(stack: Stack) -> bool:
    lines = httpx.get(stack.url + "/metrics").text.splitlines()
    ratios = [line for line in lines if line.startswith("qwen_image_router_worker_load_ratio{")]
    return len(ratios) == len(stack.worker_urls) and all(
        float(line.split()[-1]) == 0 for line in ratios
    )


def test_two_images_are_made_side_by_side_on_two_idle_workers(
    client: openai.OpenAI, stack: Stack
) -> None:
    body = {"prompt": "a harbour", "size": "512x512"}
    extra = {"num_inference_steps": 8, "seed": 21}
    # The earlier tests' jobs are over once the router's load reports say so.
    wait_until(lambda: router_sees_every_worker_idle(stack), 10, "both workers idle")
    before = [batch_images(url) for url in stack.worker_urls]
    both_running = threading.Event()

    def watch() -> None:
        while not both_running.is_set() and not done.is_set():
            loads = [httpx.get(url + LOAD_PATH).json() for url in stack.worker_urls]
            if all(load["running"] for load in loads):
                both_running.set()

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        pair = client.images.generate(**body, n=2, extra_body=extra)
    finally:
        done.set()
        watcher.join()
    # Each worker made one image in one call, and both were at work at the same time.
    after = [batch_images(url) for url in stack.worker_urls]
    assert [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)] == [(1, 1)] * 2
    assert both_running.is_set()
    # Image i is seed + i's picture, as a request for it alone makes it.
    alone = [
        client.images.generate(**body, extra_body={**extra, "seed": seed}) for seed in (21, 22)
    ]
    assert pair.data and all(answer.data for answer in alone)
    assert [item.b64_json for item in pair.data] == [a.data[0].b64_json for a in alone]
