"""The worker's internal API, served by the real `qwen-image-worker` process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qwen_image_common.contract import JOBS_PATH, LOAD_PATH, JobResult, WorkerLoad
from support.processes import Service, start_worker, wait_until

from .test_edit_api import png_b64


def body(
    steps: int = 2, size: int = 64, timeout: float = 60.0, seeds: tuple[int, ...] = (1,)
) -> dict:
    return {
        "job_id": "api-test",
        "prompt": "a tram in Lisbon",
        "width": size,
        "height": size,
        "num_inference_steps": steps,
        "guidance_scale": 4.0,
        "seeds": list(seeds),
        "timeout_seconds": timeout,
    }


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service, url = start_worker(tmp_path_factory.mktemp("worker"), TASK_QUEUE_SIZE="0")
    yield url
    service.stop()


def load(url: str) -> WorkerLoad:
    return WorkerLoad.model_validate(httpx.get(url + LOAD_PATH).json())


def failures(url: str, reason: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(f'qwen_image_worker_job_failures_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def in_background(url: str, payload: dict) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(httpx.post(url + JOBS_PATH, json=payload, timeout=60))
    )
    thread.start()
    wait_until(lambda: load(url).running == 1, 10, "the job to start")
    return thread, answers


def test_health_ready_and_load(worker: str) -> None:
    assert httpx.get(worker + "/healthz").json() == {"status": "ok"}
    assert httpx.get(worker + "/readyz").status_code == 200
    assert load(worker) == WorkerLoad(ready=True, running=0, waiting=0, capacity=1)


def test_a_job_returns_one_png_per_seed(worker: str) -> None:
    answer = httpx.post(worker + JOBS_PATH, json=body(seeds=(3, 4)), timeout=60)
    assert answer.status_code == 200
    result = JobResult.model_validate(answer.json())
    assert [image.seed for image in result.images] == [3, 4]
    assert "qwen_image_worker_images_generated_total" in httpx.get(worker + "/metrics").text


def test_bad_job_gets_400_naming_the_field(worker: str) -> None:
    answer = httpx.post(worker + JOBS_PATH, json=body(steps=0))
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("Validation error: num_inference_steps")


def test_full_worker_refuses_at_once_with_429(worker: str) -> None:
    thread, answers = in_background(worker, body(steps=50, size=768))
    refused = httpx.post(worker + JOBS_PATH, json=body(), timeout=2)
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Task queue is full"}
    thread.join()
    assert answers[0].status_code == 200


def test_deadline_stops_the_job_and_frees_the_worker(worker: str) -> None:
    before = failures(worker, "timeout")
    answer = httpx.post(worker + JOBS_PATH, json=body(steps=50, size=1024, timeout=0.5), timeout=10)
    assert answer.status_code == 504
    assert answer.json() == {"detail": "Task timeout"}
    wait_until(lambda: load(worker).running == 0, 2, "the worker to be free")
    assert failures(worker, "timeout") == before + 1


def test_a_caller_that_goes_away_cancels_its_job(worker: str) -> None:
    before = failures(worker, "cancelled")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(worker + JOBS_PATH, json=body(steps=50, size=1024), timeout=0.5)
    wait_until(lambda: failures(worker, "cancelled") == before + 1, 3, "the job to be cancelled")
    assert load(worker).running == 0
    assert httpx.post(worker + JOBS_PATH, json=body(), timeout=60).status_code == 200


def test_sigterm_drains_running_and_waiting_jobs_then_exits_zero(tmp_path: Path) -> None:
    service: Service
    service, url = start_worker(tmp_path, TASK_QUEUE_SIZE="1", DRAIN_TIMEOUT_SECONDS="60")
    thread, answers = in_background(url, body(steps=40, size=768))
    waiting: list[httpx.Response] = []
    second = threading.Thread(
        target=lambda: waiting.append(httpx.post(url + JOBS_PATH, json=body(), timeout=60))
    )
    second.start()
    wait_until(lambda: load(url).waiting == 1, 5, "the second job to wait")
    service.signal(signal.SIGTERM)
    assert service.wait(timeout=60) == 0
    thread.join()
    second.join()
    assert answers[0].status_code == 200 and waiting[0].status_code == 200
    assert "draining: not ready any more; 1 running, 1 waiting" in service.log()


def test_a_text_to_image_worker_refuses_pictures_and_names_its_task(worker: str) -> None:
    assert (load(worker).model, load(worker).task) == ("Qwen-Image", "generate")
    answer = httpx.post(worker + JOBS_PATH, json=body() | {"pictures": [png_b64(32, 32)]})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("Validation error: pictures")
