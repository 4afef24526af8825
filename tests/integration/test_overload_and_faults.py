"""Saturation, timeouts, a killed worker and a graceful stop, each on a stack of its own."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from support.processes import answers, wait_until
from support.stack import Stack, png

pytestmark = pytest.mark.integration

SLOW = {"size": "1024x1024", "num_inference_steps": 50}


def post(stack: Stack, timeout: float = 120, **body: object) -> httpx.Response:
    return httpx.post(stack.url + "/v1/images/generations", json=body, timeout=timeout)


def test_queue_full_under_concurrent_load(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=2, TASK_QUEUE_SIZE="1").start()
    try:
        finished: list[tuple[float, httpx.Response]] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            answer = post(stack, prompt=f"request {i}", seed=i, **SLOW)
            with lock:
                finished.append((time.monotonic(), answer))

        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(one, range(10)))
        statuses = [(a.status_code, a.json().get("detail")) for _, a in finished]
        ok = [s for s in statuses if s[0] == 200]
        full = [s for s in statuses if s == (500, "Task queue is full")]
        # Two workers hold one running and one waiting job each: four are served, the rest
        # are refused, and every request got exactly one of those two answers.
        assert len(finished) == 10
        assert len(ok) >= 4 and len(full) >= 1 and len(ok) + len(full) == 10, statuses
        refused = [(t, a) for t, a in finished if a.status_code == 500]
        served = [(t, a) for t, a in finished if a.status_code == 200]
        assert all(a.headers.get("retry-after") for _, a in refused)
        # Refusals come at once, before any image is done.
        assert max(t for t, _ in refused) < min(t for t, _ in served)
    finally:
        stack.stop()


def test_timeout_answers_task_timeout_and_frees_the_worker(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=1, TASK_TIMEOUT="1.5").start()
    try:
        answer = post(stack, prompt="too slow", n=4, **SLOW)
        assert answer.status_code == 500
        assert answer.json() == {"detail": "Task timeout"}
        worker = stack.worker_urls[0]
        # The job (4 images of 50 steps) needs over 10 s; it stops within a step instead.
        # 5 s leaves room for a loaded CI machine.
        wait_until(
            lambda: httpx.get(worker + "/internal/v1/load").json()["running"] == 0,
            5,
            "the worker to drop the timed-out job",
        )
        quick = post(stack, prompt="quick", size="256x256", num_inference_steps=2)
        assert quick.status_code == 200
    finally:
        stack.stop()


def test_a_worker_killed_mid_request_gives_an_answer_not_a_hang(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=2, TASK_TIMEOUT="60").start()
    try:
        answers_: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: answers_.append(post(stack, prompt="doomed", seed=5, **SLOW))
        )
        request.start()
        wait_until(lambda: stack.busy_worker() is not None, 10, "a worker to start the job")
        busy = stack.busy_worker()
        assert busy is not None
        stack.worker_process(busy).send_signal(signal.SIGKILL)
        request.join(timeout=60)
        assert not request.is_alive(), "the request hung after its worker died"
        answer = answers_[0]
        # Either another worker made the image (jobs are deterministic, so a resend is
        # safe), or the client got one of the spec's errors.
        if answer.status_code == 200:
            assert png(answer.json()["data"][0]["b64_json"]).size == (1024, 1024)
        else:
            assert answer.status_code == 500
            assert answer.json()["detail"].split(":")[0] in {
                "Inference failed",
                "Task queue is full",
            }
        # `up` restarts the dead worker, and the router uses it again.
        wait_until(lambda: answers(busy + "/readyz"), 60, "the killed worker to come back")
        wait_until(lambda: stack.ready_workers() == 2, 10, "the router to see it ready")
    finally:
        stack.stop()


def test_sigterm_finishes_in_flight_requests_and_stops_cleanly(tmp_path: Path) -> None:
    stack = Stack(tmp_path, workers=1).start()
    answers_: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers_.append(post(stack, prompt="last one", **SLOW))
    )
    request.start()
    wait_until(lambda: stack.busy_worker() is not None, 10, "the job to start")
    children = stack.worker_process(stack.worker_urls[0]).parent().children()
    stack.service.signal(signal.SIGTERM)
    assert stack.service.wait(timeout=60) == 0
    request.join(timeout=10)
    assert answers_ and answers_[0].status_code == 200
    assert not any(child.is_running() and child.status() != "zombie" for child in children)
