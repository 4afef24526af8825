"""Generation and editing from one router: `qwen-image up --edit-workers 1`, the demo
editor's real pipeline, and the official openai client."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from support.stack import Stack

pytestmark = pytest.mark.integration

EDITOR = "Qwen-Image-Edit-2509"
FAST = {"num_inference_steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("both"), workers=1, edit_workers=1, WARMUP_SIZE_PIXELS="64"
    ).start()
    yield running
    running.stop()


@pytest.fixture
def client(both: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=both.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def png_file(width: int, height: int, colour: tuple[int, int, int]) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return ("picture.png", buffer.getvalue(), "image/png")


def test_one_router_serves_both_models(both: Stack, client: openai.OpenAI) -> None:
    assert sorted(model.id for model in client.models.list()) == ["Qwen-Image", EDITOR]
    made = client.images.generate(
        model="Qwen-Image", prompt="a cat", size="256x256", extra_body=FAST
    )
    assert made.data is not None and made.data[0].b64_json


def test_an_edit_of_one_picture_comes_back_as_b64(client: openai.OpenAI) -> None:
    def edit(colour: tuple[int, int, int]) -> np.ndarray:
        result = client.images.edit(
            model=EDITOR,
            image=png_file(96, 64, colour),
            prompt="make it blue",
            size="256x256",
            extra_body=FAST,
        )
        assert result.data is not None
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
        assert image.size == (256, 256)
        return np.asarray(image)

    # The same seed and prompt: only the picture differs, and so does the edit.
    assert not np.array_equal(edit((200, 30, 30)), edit((30, 200, 30)))


def test_an_edit_of_two_pictures_comes_back_as_urls(client: openai.OpenAI) -> None:
    result = client.images.edit(
        model=EDITOR,
        image=[png_file(64, 64, (10, 10, 10)), png_file(48, 96, (250, 250, 0))],
        prompt="put picture 1 on picture 2",
        response_format="url",
        extra_body=FAST,
    )
    assert result.data is not None
    stored = httpx.get(result.data[0].url or "", timeout=10)
    # No size asked: the last picture's aspect (1:2) at about one megapixel.
    assert Image.open(io.BytesIO(stored.content)).size == (736, 1440)


def test_the_editor_is_not_a_generator(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model=EDITOR, prompt="a cat")
    assert refused.value.body == {"detail": f"Model not available: {EDITOR}"}
