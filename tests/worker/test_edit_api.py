"""An edit worker: the real `qwen-image worker` process with the demo editor loaded from a
saved folder through MODEL_PATH."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from qwen_image_common.contract import JOBS_PATH, LOAD_PATH, JobResult, WorkerLoad
from qwen_image_worker.engine.demo_edit_model import build_demo_edit_pipeline
from support.processes import start_worker


def png_b64(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def edit(pictures: list[str], **size: int) -> dict:
    return {
        "job_id": "edit-test",
        "prompt": "make it blue",
        "num_inference_steps": 2,
        "guidance_scale": 4.0,
        "seeds": [1],
        "timeout_seconds": 120.0,
        "pictures": pictures,
        **size,
    }


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("editor")
    build_demo_edit_pipeline().save_pretrained(folder / "model")
    service, url = start_worker(
        folder,
        MODEL_PATH=str(folder / "model"),
        MODEL_NAME="Qwen-Image-Edit-2509",
        WARMUP_SIZE_PIXELS="64",
        TASK_QUEUE_SIZE="1",
    )
    yield url
    service.stop()


def made_size(answer: httpx.Response) -> tuple[int, int]:
    assert answer.status_code == 200, answer.text
    image = JobResult.model_validate(answer.json()).images[0]
    return Image.open(io.BytesIO(base64.b64decode(image.b64))).size


def test_the_load_answer_names_the_model_and_its_task(editor: str) -> None:
    load = WorkerLoad.model_validate(httpx.get(editor + LOAD_PATH).json())
    assert (load.model, load.task, load.max_pictures, load.ready) == (
        "Qwen-Image-Edit-2509",
        "edit",
        3,
        True,
    )


def test_two_pictures_make_the_asked_size(editor: str) -> None:
    job = edit([png_b64(64, 48), png_b64(48, 64)], width=80, height=48)
    assert made_size(httpx.post(editor + JOBS_PATH, json=job, timeout=120)) == (80, 48)


def test_without_a_size_the_last_pictures_aspect_wins(editor: str) -> None:
    job = edit([png_b64(32, 32), png_b64(96, 64)])
    assert made_size(httpx.post(editor + JOBS_PATH, json=job, timeout=120)) == (1248, 832)


@pytest.mark.parametrize(
    ("pictures", "problem"),
    [([], "edits 1 to 3 pictures, got 0"), (["bm90IGEgcGljdHVyZQ=="], "not a readable picture")],
)
def test_a_job_the_editor_cannot_run_is_a_400(editor: str, pictures: list, problem: str) -> None:
    answer = httpx.post(editor + JOBS_PATH, json=edit(pictures, width=64, height=64))
    assert answer.status_code == 400
    assert problem in answer.json()["detail"]
