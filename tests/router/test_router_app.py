"""The router app end to end against small real workers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from router_fakes import (
    UNREACHABLE_URL,
    DroppingWorker,
    FakeWorker,
    metric_value,
    png_bytes,
    router_client,
    router_settings,
    serve,
)

from qwen_image_router.app import create_app
from qwen_image_router.schemas import MAX_SEED

GENERATE = "/v1/images/generations"


def png_size(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


async def test_b64_images_come_back_with_the_requested_settings(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        before = int(time.time())
        response = await client.post(
            GENERATE,
            json={
                "prompt": "一只可爱的小猫坐在花园里",
                "negative_prompt": "模糊的",
                "n": 3,
                "aspect_ratio": "4:3",
                "size": "256x256",
                "guidance_scale": 5.0,
                "num_inference_steps": 12,
                "seed": 42,
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] >= before
    assert len(body["data"]) == 3
    assert all(set(item) == {"b64_json"} for item in body["data"])
    assert [png_size(item["b64_json"]) for item in body["data"]] == [(1472, 1140)] * 3
    (job,) = worker.jobs
    assert job.seeds == [42, 43, 44]
    assert (job.width, job.height) == (1472, 1140)
    assert job.prompt == "一只可爱的小猫坐在花园里" and job.negative_prompt == "模糊的"
    assert (job.num_inference_steps, job.guidance_scale) == (12, 5.0)
    assert 0 < job.timeout_seconds <= 30.0


async def test_defaults_reach_the_worker_and_the_seed_is_random(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        for _ in range(2):
            response = await client.post(GENERATE, json={"prompt": "a cat", "n": 4})
            assert response.status_code == 200, response.text
    first, second = worker.jobs
    assert (first.width, first.height) == (1024, 1024)
    assert (first.num_inference_steps, first.guidance_scale) == (50, 4.0)
    assert first.negative_prompt == ""
    assert first.seeds == [first.seeds[0] + i for i in range(4)]
    assert first.seeds[0] >= 0 and first.seeds[-1] <= MAX_SEED
    assert first.seeds != second.seeds


async def test_url_images_are_stored_and_served_with_the_same_bytes(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url:
        settings = router_settings(tmp_path, [url])
        async with router_client(settings) as client:
            response = await client.post(
                GENERATE,
                json={
                    "prompt": "cat",
                    "n": 2,
                    "size": "256x256",
                    "seed": 5,
                    "response_format": "url",
                },
            )
            assert response.status_code == 200, response.text
            urls = [item["url"] for item in response.json()["data"]]
            assert all(u.startswith("http://router/images/") and u.endswith(".png") for u in urls)
            for seed, image_url in zip((5, 6), urls, strict=True):
                served = await client.get(image_url)
                assert served.status_code == 200
                assert served.headers["content-type"] == "image/png"
                assert served.content == png_bytes(256, 256, seed)
            head = await client.head(urls[0])
            assert head.status_code == 200
    stored = sorted(p.name for p in settings.image_output_dir.iterdir())
    assert stored == sorted(u.rsplit("/", 1)[1] for u in urls)


async def test_the_download_prefix_makes_the_urls(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url:
        settings = router_settings(
            tmp_path, [url], image_download_url_prefix="https://img.example.com/qwen/"
        )
        async with router_client(settings) as client:
            response = await client.post(
                GENERATE, json={"prompt": "cat", "size": "256x256", "response_format": "url"}
            )
    (item,) = response.json()["data"]
    name = item["url"].removeprefix("https://img.example.com/qwen/")
    assert "/" not in name and (settings.image_output_dir / name).is_file()


@pytest.mark.parametrize(
    "path",
    ["/images/" + "0" * 32 + ".png", "/images/..%2Fsecret.png", "/images/secret.png", "/images/x"],
)
async def test_unknown_or_foreign_image_files_are_404(tmp_path: Path, path: str) -> None:
    settings = router_settings(tmp_path, [UNREACHABLE_URL])
    (tmp_path / "secret.png").write_bytes(b"secret")
    async with router_client(settings) as client:
        (settings.image_output_dir / "secret.png").write_bytes(b"secret")
        response = await client.get(path)
    assert response.status_code == 404
    assert "detail" in response.json()  # never the file's bytes


async def test_a_full_worker_means_queue_full_at_once(tmp_path: Path) -> None:
    worker = FakeWorker(running=1, waiting=1, capacity=2)
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        response = await client.post(GENERATE, json={"prompt": "cat"})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 500
    assert response.json() == {"detail": "Task queue is full"}
    assert response.headers["retry-after"] == "2"
    assert response.headers["x-should-retry"] == "true"
    assert worker.jobs == []
    assert metric_value(metrics, "qwen_image_router_queue_full_total") == 1
    assert (
        metric_value(metrics, "qwen_image_router_requests_total", status="500", reason="queue_full")
        == 1
    )


async def test_not_ready_and_unreachable_workers_mean_queue_full(tmp_path: Path) -> None:
    worker = FakeWorker(ready=False)
    async with serve(worker.app) as url:
        settings = router_settings(tmp_path, [url, UNREACHABLE_URL])
        async with router_client(settings) as client:
            response = await client.post(GENERATE, json={"prompt": "cat"})
            ready = await client.get("/readyz")
    assert response.status_code == 500 and response.json()["detail"] == "Task queue is full"
    assert ready.status_code == 503
    assert worker.jobs == []


async def test_the_router_never_overfills_a_worker(tmp_path: Path) -> None:
    worker = FakeWorker(capacity=2)
    worker.hold = True
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        body = {"prompt": "cat", "size": "256x256"}
        held = [asyncio.create_task(client.post(GENERATE, json=body)) for _ in range(2)]
        while len(worker.jobs) < 2:
            await asyncio.sleep(0.01)
        third = await client.post(GENERATE, json=body)
        assert third.status_code == 500 and third.json()["detail"] == "Task queue is full"
        worker.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]


async def test_a_refusing_worker_is_skipped_for_the_next(tmp_path: Path) -> None:
    refusing = FakeWorker(capacity=4)
    refusing.job_status = 429
    refusing.detail = "Task queue is full"
    busy = FakeWorker(running=1, waiting=1, capacity=4)  # scores lower, so tried second
    async with (
        serve(refusing.app) as first,
        serve(busy.app) as second,
        router_client(router_settings(tmp_path, [first, second])) as client,
    ):
        response = await client.post(GENERATE, json={"prompt": "cat", "size": "256x256"})
    assert response.status_code == 200, response.text
    assert len(refusing.jobs) == 1 and len(busy.jobs) == 1


async def test_a_dropped_connection_is_retried_on_another_worker(tmp_path: Path) -> None:
    dropping = DroppingWorker()
    healthy = FakeWorker(running=1, capacity=4)  # the dropping worker looks idler
    async with (
        dropping.running() as first,
        serve(healthy.app) as second,
        router_client(router_settings(tmp_path, [first, second])) as client,
    ):
        response = await client.post(GENERATE, json={"prompt": "cat", "size": "256x256"})
    assert response.status_code == 200, response.text
    (dropped,) = dropping.jobs_dropped
    (resent,) = healthy.jobs
    assert (resent.job_id, resent.seeds, resent.prompt) == (
        dropped.job_id,
        dropped.seeds,
        dropped.prompt,
    )


async def test_every_worker_refusing_ends_as_queue_full(tmp_path: Path) -> None:
    workers = [FakeWorker(), FakeWorker()]
    for worker in workers:
        worker.job_status = 503
        worker.detail = "Worker is not ready"
    async with (
        serve(workers[0].app) as a,
        serve(workers[1].app) as b,
        router_client(router_settings(tmp_path, [a, b])) as client,
    ):
        response = await client.post(GENERATE, json={"prompt": "cat"})
    assert response.status_code == 500 and response.json()["detail"] == "Task queue is full"
    assert [len(w.jobs) for w in workers] == [1, 1]


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        (500, "Inference failed: CUDA out of memory", "Inference failed: CUDA out of memory"),
        (504, "Task timeout", "Task timeout"),
    ],
)
async def test_worker_errors_become_the_specs_errors(
    tmp_path: Path, status: int, detail: str, expected: str
) -> None:
    worker = FakeWorker()
    worker.job_status = status
    worker.detail = detail
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        response = await client.post(GENERATE, json={"prompt": "cat"})
    assert response.status_code == 500
    assert response.json() == {"detail": expected}
    assert response.headers["x-should-retry"] == "false"
    assert len(worker.jobs) == 1  # not retried elsewhere: the worker did run it


async def test_task_timeout_ends_the_request_and_cancels_the_job(tmp_path: Path) -> None:
    worker = FakeWorker()
    worker.hang = True
    async with serve(worker.app) as url:
        settings = router_settings(tmp_path, [url], task_timeout_seconds=0.5)
        async with router_client(settings) as client:
            response = await client.post(GENERATE, json={"prompt": "cat"})
            await asyncio.wait_for(worker.disconnected.wait(), 5)
            metrics = (await client.get("/metrics")).text
    assert response.status_code == 500
    assert response.json() == {"detail": "Task timeout"}
    assert worker.jobs[0].timeout_seconds <= 0.5
    assert metric_value(metrics, "qwen_image_router_in_flight_requests") == 0
    assert metric_value(metrics, "qwen_image_router_worker_in_flight", worker=url) == 0
    assert (
        metric_value(metrics, "qwen_image_router_requests_total", status="500", reason="timeout")
        == 1
    )


async def test_a_client_that_goes_away_cancels_its_job(tmp_path: Path) -> None:
    worker = FakeWorker()
    worker.hang = True
    async with serve(worker.app) as worker_url:
        app = create_app(router_settings(tmp_path, [worker_url]))
        async with serve(app, lifespan="on") as router_url:
            async with httpx.AsyncClient(base_url=router_url) as client:
                request = asyncio.create_task(client.post(GENERATE, json={"prompt": "cat"}))
                await asyncio.wait_for(worker.job_arrived.wait(), 5)
                request.cancel()  # closes the client's connection to the router
                with pytest.raises(asyncio.CancelledError):
                    await request
            await asyncio.wait_for(worker.disconnected.wait(), 5)
            async with httpx.AsyncClient(base_url=router_url) as client:
                metrics = (await client.get("/metrics")).text
    assert (
        metric_value(
            metrics, "qwen_image_router_requests_total", status="499", reason="client_closed"
        )
        == 1
    )


async def test_each_request_is_logged_at_info_without_its_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        with caplog.at_level(logging.INFO, logger="qwen_image_router"):
            body = {"prompt": "Zebulon the owl", "n": 2, "size": "256x256", "seed": 1}
            response = await client.post(GENERATE, json=body)
    assert response.status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert f"worker={url}" in line and "outcome=ok" in line
    assert "n=2 size=256x256 steps=50" in line and "duration=" in line
    assert "Zebulon" not in caplog.text


async def test_health_readiness_models_and_metrics(tmp_path: Path) -> None:
    worker = FakeWorker(running=1, capacity=4)
    async with serve(worker.app) as url:
        settings = router_settings(tmp_path, [url], model_name="Qwen-Image")
        async with router_client(settings) as client:
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
            models = await client.get("/v1/models")
            one = await client.get("/v1/models/qwen-image")
            other = await client.get("/v1/models/dall-e-3")
            ok = await client.post(GENERATE, json={"prompt": "cat", "size": "256x256"})
            await client.post(GENERATE, json={"prompt": "cat", "n": 9})
            metrics = await client.get("/metrics")
    assert health.json() == {"status": "ok", "model": "Qwen-Image"}
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "ready_workers": 1}
    card = models.json()["data"][0]
    assert models.json()["object"] == "list"
    assert card["id"] == "Qwen-Image" and card["object"] == "model"
    assert isinstance(card["created"], int) and isinstance(card["owned_by"], str)
    assert one.json() == card
    assert other.status_code == 404
    assert ok.status_code == 200
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert metric_value(text, "qwen_image_router_ready_workers") == 1
    assert metric_value(text, "qwen_image_router_worker_load_ratio", worker=url) == 0.25
    assert metric_value(text, "qwen_image_router_requests_total", status="200", reason="ok") == 1
    assert (
        metric_value(text, "qwen_image_router_requests_total", status="400", reason="validation")
        == 1
    )
    assert metric_value(text, "qwen_image_router_request_duration_seconds_count") == 1
    assert metric_value(text, "qwen_image_router_prompt_rewrite_failures_total") == 0


async def test_readiness_follows_the_workers_reports(tmp_path: Path) -> None:
    worker = FakeWorker(ready=False)
    async with serve(worker.app) as url, router_client(router_settings(tmp_path, [url])) as client:
        assert (await client.get("/readyz")).status_code == 503
        worker.load = worker.load.model_copy(update={"ready": True})
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the router never saw the worker become ready")
        response = await client.post(GENERATE, json={"prompt": "cat", "size": "256x256"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"authorization": "Basic key-one"}, 401),
        ({"authorization": "Bearer key-one"}, 200),
        ({"authorization": "bearer key-two"}, 200),
    ],
)
async def test_api_keys_guard_v1(tmp_path: Path, headers: dict[str, str], status: int) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as url:
        settings = router_settings(tmp_path, [url], api_keys=["key-one", "key-two"])
        async with router_client(settings) as client:
            response = await client.post(
                GENERATE, json={"prompt": "cat", "size": "256x256"}, headers=headers
            )
            models = await client.get("/v1/models", headers=headers)
    assert response.status_code == status and models.status_code == status
    if status == 401:
        assert response.json() == {"detail": "Invalid or missing API key"}
        assert response.headers["www-authenticate"] == "Bearer"
        assert worker.jobs == []


async def test_refusals_before_the_route_are_counted_once_and_untimed(tmp_path: Path) -> None:
    settings = router_settings(
        tmp_path, [UNREACHABLE_URL], api_keys=["key-one"], max_request_body_bytes=1024
    )
    key = {"authorization": "Bearer key-one"}
    async with router_client(settings) as client:
        assert (await client.post(GENERATE, json={"prompt": "cat"})).status_code == 401
        big = {"prompt": "cat", "negative_prompt": "x" * 2048}
        assert (await client.post(GENERATE, json=big, headers=key)).status_code == 413
        assert (await client.post(GENERATE, json={"n": 9}, headers=key)).status_code == 400
        text = (await client.get("/metrics")).text
    for status, reason in (("401", "unauthorized"), ("413", "too_large"), ("400", "validation")):
        requests = metric_value(
            text, "qwen_image_router_requests_total", status=status, reason=reason
        )
        assert requests == 1
    assert metric_value(text, "qwen_image_router_request_duration_seconds_count") == 0


async def test_api_keys_leave_probes_metrics_and_images_open(tmp_path: Path) -> None:
    settings = router_settings(tmp_path, [UNREACHABLE_URL], api_keys=["key-one"])
    async with router_client(settings) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/images/" + "a" * 32 + ".png")).status_code == 404
        # The key is checked before the body is even parsed.
        bad_json = await client.post(
            GENERATE, content=b"{", headers={"content-type": "application/json"}
        )
        assert bad_json.status_code == 401


async def test_the_openai_sdk_works_against_the_router(tmp_path: Path) -> None:
    worker = FakeWorker()
    async with serve(worker.app) as worker_url:
        app = create_app(router_settings(tmp_path, [worker_url], api_keys=["sk-router"]))
        async with serve(app, lifespan="on") as router_url:
            client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="sk-router")
            result = await client.images.generate(
                model="Qwen-Image",
                prompt="a cat in a garden",
                n=2,
                size="512x512",
                response_format="b64_json",
                extra_body={"seed": 7, "aspect_ratio": "16:9", "num_inference_steps": 8},
            )
            assert result.data is not None
            assert [png_size(item.b64_json or "") for item in result.data] == [(1664, 928)] * 2
            assert worker.jobs[0].seeds == [7, 8]

            with pytest.raises(openai.BadRequestError) as bad_model:
                await client.images.generate(model="dall-e-3", prompt="a cat")
            assert bad_model.value.body == {"detail": "Model not available: dall-e-3"}

            worker.job_status = 500
            worker.detail = "Inference failed: boom"
            jobs_before = len(worker.jobs)
            with pytest.raises(openai.InternalServerError) as failed:
                await client.images.generate(prompt="a cat", size="256x256")
            assert failed.value.body == {"detail": "Inference failed: boom"}
            assert len(worker.jobs) == jobs_before + 1  # x-should-retry: false, no SDK retry
            await client.close()
