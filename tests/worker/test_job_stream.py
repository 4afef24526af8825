"""A streamed job on the real `qwen-image worker` process: previews as lines, then the
result or the error; a caller that goes away cancels the job."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from qwen_image_common.contract import (
    EVENTS_MEDIA_TYPE,
    JOB_EVENT,
    JOBS_PATH,
    JobCompleted,
    JobFailed,
    JobResult,
    PartialImage,
)
from support.processes import start_worker, wait_until
from worker.test_api import body, failures, load


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service, url = start_worker(tmp_path_factory.mktemp("worker"), TASK_QUEUE_SIZE="0")
    yield url
    service.stop()


def streamed(url: str, payload: dict) -> list[PartialImage | JobCompleted | JobFailed]:
    with httpx.stream("POST", url + JOBS_PATH, json=payload, timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == EVENTS_MEDIA_TYPE
        return [JOB_EVENT.validate_json(line) for line in answer.iter_lines() if line]


def test_previews_come_in_order_then_the_same_images_as_unstreamed(worker: str) -> None:
    job = body(steps=6, seeds=(3, 4)) | {"output_format": "webp"}
    events = streamed(worker, job | {"stream": True, "partial_images": 2})
    previews, last = events[:-1], events[-1]
    assert all(isinstance(event, PartialImage) for event in previews)
    assert sorted((e.image_index, e.partial_image_index) for e in previews) == [  # type: ignore[union-attr]
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    for event in previews:
        assert isinstance(event, PartialImage)
        image = Image.open(io.BytesIO(base64.b64decode(event.b64)))
        assert (image.format, image.size) == ("WEBP", (64, 64))
    assert isinstance(last, JobCompleted)
    plain = JobResult.model_validate(httpx.post(worker + JOBS_PATH, json=job, timeout=60).json())
    assert [i.b64 for i in last.result.images] == [i.b64 for i in plain.images]


def test_without_previews_the_result_is_the_only_line(worker: str) -> None:
    events = streamed(worker, body(steps=2) | {"stream": True})
    assert [type(event) for event in events] == [JobCompleted]


def test_a_streamed_job_past_its_deadline_ends_with_a_timeout_line(worker: str) -> None:
    events = streamed(worker, body(steps=50, size=1024, timeout=0.5) | {"stream": True})
    assert events == [JobFailed(status=504, detail="Task timeout")]
    wait_until(lambda: load(worker).running == 0, 2, "the worker to be free")


def test_a_stream_whose_caller_goes_away_cancels_its_job(worker: str) -> None:
    before = failures(worker, "cancelled")
    payload = body(steps=50, size=1024) | {"stream": True, "partial_images": 3}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(worker + JOBS_PATH, json=payload, timeout=0.5)
    wait_until(lambda: failures(worker, "cancelled") == before + 1, 3, "the job to be cancelled")
    assert load(worker).running == 0
