"""Several models behind one router: pools learned from the workers' own load reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

from router_fakes import (
    FakeWorker,
    metric_value,
    png_bytes,
    router_client,
    router_settings,
    serve,
)

from qwen_image_common.contract import WorkerLoad

GENERATE = "/v1/images/generations"
EDITOR = "Qwen-Image-Edit-2509"
LIGHTNING = "Qwen-Image-Lightning"


def worker(model: str, task: str = "generate", running: int = 0, capacity: int = 2) -> FakeWorker:
    fake = FakeWorker()
    fake.load = WorkerLoad.model_validate(
        {"model": model, "task": task, "ready": True, "running": running, "waiting": 0}
        | {"capacity": capacity}
    )
    return fake


async def test_each_request_goes_to_the_least_loaded_worker_of_the_model_it_names(
    tmp_path: Path,
) -> None:
    busy, idle, other = worker("Qwen-Image", running=1), worker("Qwen-Image"), worker(LIGHTNING)
    async with (
        serve(busy.app) as busy_url,
        serve(idle.app) as idle_url,
        serve(other.app) as other_url,
        router_client(router_settings(tmp_path, [busy_url, idle_url, other_url])) as client,
    ):
        default = await client.post(GENERATE, json={"prompt": "a cat"})
        named = await client.post(
            GENERATE, json={"prompt": "a cat", "model": "qwen-image-lightning"}
        )
    assert default.status_code == 200 and named.status_code == 200
    assert (len(busy.jobs), len(idle.jobs), len(other.jobs)) == (0, 1, 1)


async def test_models_list_every_pool_and_a_model_nobody_serves_is_refused(
    tmp_path: Path,
) -> None:
    generator, editor = worker("Qwen-Image"), worker(EDITOR, task="edit")
    async with (
        serve(generator.app) as generator_url,
        serve(editor.app) as editor_url,
        router_client(router_settings(tmp_path, [generator_url, editor_url])) as client,
    ):
        listed = (await client.get("/v1/models")).json()
        retrieved = await client.get(f"/v1/models/{EDITOR.lower()}")
        edit_model = await client.post(GENERATE, json={"prompt": "a cat", "model": EDITOR})
        unknown = await client.post(GENERATE, json={"prompt": "a cat", "model": "dall-e-3"})
        health = (await client.get("/healthz")).json()
    assert sorted(card["id"] for card in listed["data"]) == ["Qwen-Image", EDITOR]
    assert retrieved.status_code == 200 and retrieved.json()["id"] == EDITOR
    assert edit_model.status_code == 400
    assert edit_model.json() == {"detail": f"Model not available: {EDITOR}"}
    assert unknown.json() == {"detail": "Model not available: dall-e-3"}
    assert editor.jobs == [] and generator.jobs == []
    assert health == {"status": "ok", "model": "Qwen-Image"}


async def test_a_full_pool_is_saturated_while_another_has_room(tmp_path: Path) -> None:
    full, free = worker("Qwen-Image", running=1, capacity=1), worker(LIGHTNING)
    async with (
        serve(full.app) as full_url,
        serve(free.app) as free_url,
        router_client(router_settings(tmp_path, [full_url, free_url])) as client,
    ):
        refused = await client.post(GENERATE, json={"prompt": "a cat"})
        served = await client.post(GENERATE, json={"prompt": "a cat", "model": LIGHTNING})
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 500 and refused.json() == {"detail": "Task queue is full"}
    assert served.status_code == 200 and full.jobs == []
    assert (
        metric_value(metrics, "qwen_image_router_model_queue_full_total", model="Qwen-Image") == 1
    )
    assert metric_value(metrics, "qwen_image_router_model_ready_workers", model=LIGHTNING) == 1
    assert metric_value(metrics, "qwen_image_router_model_ready_workers", model="Qwen-Image") == 1


async def test_n_images_spread_over_the_idle_workers_of_the_request_s_pool_only(
    tmp_path: Path,
) -> None:
    generator, editors = worker("Qwen-Image"), [worker(EDITOR, task="edit") for _ in range(2)]
    async with (
        serve(generator.app) as generator_url,
        serve(editors[0].app) as first_url,
        serve(editors[1].app) as second_url,
        router_client(router_settings(tmp_path, [generator_url, first_url, second_url])) as client,
    ):
        while min(w.load_polls for w in [generator, *editors]) < 2:
            await asyncio.sleep(0.01)  # a load report from every worker: all three idle
        generated = await client.post(GENERATE, json={"prompt": "a cat", "n": 2, "seed": 7})
        edited = await client.post(
            "/v1/images/edits",
            data={"prompt": "blue", "n": "2", "seed": "7"},
            files={"image": ("p", png_bytes(8, 8, 0))},
        )
    assert generated.status_code == 200 and edited.status_code == 200, edited.text
    assert [job.seeds for job in generator.jobs] == [[7, 8]]
    assert sorted(job.seeds for e in editors for job in e.jobs) == [[7], [8]]
