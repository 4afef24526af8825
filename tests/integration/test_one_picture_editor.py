"""The one-picture editor, `QwenImageEditPipeline`: the demo editor's parts saved as that
pipeline, loaded by a real worker through MODEL_PATH's model_index.json, behind a real router
that learns the pool's picture limit from the worker's load report."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from diffusers import QwenImageEditPipeline
from faults.fault_stack import start_router
from PIL import Image

from qwen_image_common.contract import LOAD_PATH, WorkerLoad
from qwen_image_worker.engine.demo_edit_model import build_demo_edit_pipeline
from support.processes import start_worker

pytestmark = pytest.mark.integration

EDITOR = "Qwen-Image-Edit"
FAST = {"num_inference_steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def worker_and_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp("one-picture-editor")
    build_demo_edit_pipeline(pipeline_class=QwenImageEditPipeline).save_pretrained(folder / "model")
    worker, worker_url = start_worker(
        folder, MODEL_PATH=str(folder / "model"), MODEL_NAME=EDITOR, WARMUP_SIZE_PIXELS="64"
    )
    try:
        router = start_router(folder, [worker_url])
        try:
            yield worker_url, router.url
        finally:
            router.stop()
    finally:
        worker.stop()


@pytest.fixture
def client(worker_and_router: tuple[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=worker_and_router[1] + "/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


def png_file(colour: tuple[int, int, int]) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 48), colour).save(buffer, format="PNG")
    return ("picture.png", buffer.getvalue(), "image/png")


def test_the_worker_reports_an_editor_of_one_picture(worker_and_router: tuple[str, str]) -> None:
    load = WorkerLoad.model_validate(httpx.get(worker_and_router[0] + LOAD_PATH).json())
    assert (load.model, load.task, load.max_pictures, load.ready) == (EDITOR, "edit", 1, True)


def test_an_edit_of_one_picture_works_through_the_router(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["Qwen-Image", EDITOR]
    result = client.images.edit(
        model=EDITOR, image=png_file((200, 30, 30)), prompt="make it blue", extra_body=FAST
    )
    assert result.data is not None
    made = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    # No size asked: the picture's aspect (5:3) at about one megapixel, as the pipeline chooses.
    assert made.size == (1312, 800)


def test_two_pictures_are_a_400_naming_image(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(
            model=EDITOR,
            image=[png_file((1, 2, 3)), png_file((4, 5, 6))],
            prompt="put picture 1 on picture 2",
            extra_body=FAST,
        )
    assert refused.value.body == {
        "detail": f"Validation error: image: {EDITOR} edits at most 1 picture(s), got 2"
    }
