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


def decoded(b64: str) -> Image.Image:
    picture = Image.open(io.BytesIO(base64.b64decode(b64)))
    picture.load()
    return picture


# Two previews (after steps 3 and 4 of 5) or one (after step 3 of 4), never at the last step.
TWO_PREVIEWS = {"num_inference_steps": 5, "seed": 11}
ONE_PREVIEW = {"num_inference_steps": 4, "seed": 11}


def test_an_edit_streams_previews_then_the_unstreamed_image(client: openai.OpenAI) -> None:
    common = {"model": EDITOR, "prompt": "make it blue", "extra_body": TWO_PREVIEWS}
    # No size: the pipeline's own choice for a 2:1 picture, told by every event.
    events = list(
        client.images.edit(
            image=png_file(128, 64, (200, 30, 30)), stream=True, partial_images=2, **common
        )
    )
    assert [event.type for event in events] == [
        "image_edit.partial_image",
        "image_edit.partial_image",
        "image_edit.completed",
    ]
    assert [getattr(event, "partial_image_index", None) for event in events] == [0, 1, None]
    pictures = [np.asarray(decoded(event.b64_json), dtype=np.float64) for event in events]
    assert all(picture.shape == (736, 1440, 3) for picture in pictures)
    assert {event.size for event in events} == {"1440x736"}
    assert events[-1].usage.output_tokens == 1440 * 736 // 256
    # Previews are the edit being made: each nearer the result than the one before.
    distances = [np.abs(picture - pictures[-1]).mean() for picture in pictures]
    assert distances[0] > distances[1] > distances[2] == 0
    plain = client.images.edit(image=png_file(128, 64, (200, 30, 30)), **common)
    assert plain.data and events[-1].b64_json == plain.data[0].b64_json
    assert plain.size == events[-1].size


def test_a_streamed_edit_of_two_pictures_and_two_images_tells_them_apart(
    client: openai.OpenAI,
) -> None:
    pictures = [png_file(64, 64, (10, 10, 10)), png_file(48, 96, (250, 250, 0))]
    common = {"model": EDITOR, "prompt": "put picture 1 on picture 2", "size": "256x256", "n": 2}
    events = list(
        client.images.edit(
            image=pictures,
            stream=True,
            partial_images=1,
            output_format="webp",
            **common,
            extra_body=ONE_PREVIEW,
        )
    )
    seen = [(event.type, event.model_extra["image_index"]) for event in events]
    assert sorted(seen) == [
        ("image_edit.completed", 0),
        ("image_edit.completed", 1),
        ("image_edit.partial_image", 0),
        ("image_edit.partial_image", 1),
    ]
    assert all(decoded(event.b64_json).format == "WEBP" for event in events)
    plain = client.images.edit(
        image=pictures, output_format="webp", **common, extra_body=ONE_PREVIEW
    )
    assert plain.data
    completed = [event.b64_json for event in events if event.type == "image_edit.completed"]
    # One edit worker makes one image a call: the same files exactly.
    assert completed == [image.b64_json for image in plain.data]


def test_a_bad_field_of_a_streamed_edit_is_a_json_400(both: Stack) -> None:
    answer = httpx.post(
        both.url + "/v1/images/edits",
        data={"prompt": "make it blue", "stream": "true", "partial_images": "4"},
        files={"image": png_file(32, 32, (0, 0, 0))},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["detail"].startswith("Validation error: partial_images")
