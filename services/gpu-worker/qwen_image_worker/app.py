"""Builds the worker app and runs it; the model loads in the background after start-up,
so liveness answers at once and readiness waits for the warm-up image.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from prometheus_client import start_http_server

from qwen_image_common.logs import configure_logging
from qwen_image_common.serving import GracefulServer
from qwen_image_common.settings import load_settings
from qwen_image_worker.api.routes import health, jobs
from qwen_image_worker.engine.base import BatchLimit, ImageEngine, ImageSpec
from qwen_image_worker.engine.model_kind import GENERATOR, pipeline_kind
from qwen_image_worker.engine.simulated import SIMULATED_MODEL_PATH, SimulatedEngine
from qwen_image_worker.errors import install_error_handlers
from qwen_image_worker.metrics import WorkerMetrics
from qwen_image_worker.queue import JobQueue
from qwen_image_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


def create_app(settings: WorkerSettings, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """`on_fatal` is called when the model cannot be loaded; `run` makes it exit non-zero."""

    simulated = settings.model_path.strip().lower() == SIMULATED_MODEL_PATH
    kind = GENERATOR if simulated else pipeline_kind(settings.model_path)

    def build_engine() -> ImageEngine:
        if simulated:
            return SimulatedEngine(
                settings.simulated_step_seconds,
                on_step=metrics.step_duration.observe,
                batch=BatchLimit(settings.batch_max_images, settings.batch_max_pixels),
            )
        # Imported here, so a simulated worker never loads torch (about 1 GB a process).
        from qwen_image_worker.engine.acceleration import Levers, accelerate, batch_limit
        from qwen_image_worker.engine.diffusers_engine import Engine
        from qwen_image_worker.engine.editing import EditEngine
        from qwen_image_worker.engine.loading import load_pipeline, pick_device

        device = pick_device(settings.device)
        pipe = load_pipeline(None if settings.uses_demo_model else settings.model_path, device)
        # The editors' transformer is Qwen-Image's class: the same levers, pulled the same way.
        levers = accelerate(pipe, Levers.from_settings(settings))
        engine = EditEngine if kind.task == "edit" else Engine
        return engine(
            pipe,
            on_step=metrics.step_duration.observe,
            warmup_sizes=settings.warmup_size_list if levers.per_shape else (),
            batch=batch_limit(settings, levers),
        )

    warmup = ImageSpec(
        prompt="warm-up",
        negative_prompt="",
        width=settings.warmup_size_pixels,
        height=settings.warmup_size_pixels,
        num_inference_steps=settings.warmup_steps,
        guidance_scale=4.0,
        seed=0,
    )
    metrics = WorkerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue = JobQueue(settings.task_queue_size, metrics, settings.model_name, kind)
        app.state.queue = queue

        def report(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            logger.critical("the worker cannot start: %s", task.exception())
            if on_fatal is not None:
                on_fatal(str(task.exception()))

        startup = asyncio.create_task(queue.start(build_engine, warmup), name="model-load")
        startup.add_done_callback(report)
        yield
        startup.cancel()
        await queue.stop()

    app = FastAPI(title="qwen-image gpu-worker (internal API)", lifespan=lifespan)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    return app


def run(settings: WorkerSettings | None = None) -> None:
    settings = settings or load_settings(WorkerSettings, "worker")
    configure_logging(settings.log_level, settings.log_format, service="worker")
    servers: list[GracefulServer] = []
    app = create_app(settings, on_fatal=lambda _why: servers[0].fail())

    def drain() -> None:
        queue: JobQueue | None = getattr(app.state, "queue", None)
        if queue is not None:
            queue.drain()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # uvicorn stops listening at once and waits this long for open job requests.
        timeout_graceful_shutdown=int(settings.drain_timeout_seconds),
    )
    servers.append(GracefulServer(config, on_exit_signal=drain))
    if settings.metrics_port:
        # prometheus_client's own server, on a thread: the job API's port stays the router's.
        start_http_server(settings.metrics_port, settings.host, app.state.metrics.registry)
        logger.info("metrics on port %d", settings.metrics_port)
    servers[0].run_and_exit()
