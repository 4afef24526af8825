"""The router's app factory and entry point.

`create_app` only wires; the lifespan builds what does I/O or runs in the background
(storage, HTTP client, discovery, load poller, retention) and stops it in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI

from qwen_image_common.logs import configure_logging
from qwen_image_common.serving import GracefulServer, serve_beside
from qwen_image_common.settings import load_settings
from qwen_image_router.api.auth import ApiKeyMiddleware
from qwen_image_router.api.body_limit import BodyLimitMiddleware
from qwen_image_router.api.receive_timeouts import receive_timeout_protocol
from qwen_image_router.api.request_metrics import RequestMetricsMiddleware
from qwen_image_router.api.routes import edits, files, health, images, models
from qwen_image_router.api.routes import metrics as metrics_routes
from qwen_image_router.api.routes.metrics import metrics_app
from qwen_image_router.discovery.factory import build_discovery
from qwen_image_router.errors import JSONAnswer, install_error_handlers
from qwen_image_router.generator import ImageGenerator
from qwen_image_router.load_poller import LoadPoller
from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.outbound.client import WorkerClient
from qwen_image_router.outbound.dispatch import Dispatcher
from qwen_image_router.outbound.transport import PerWorkerTransport
from qwen_image_router.pools import ModelPools
from qwen_image_router.prompt_rewrite import build_rewriter
from qwen_image_router.registry import WorkerRegistry
from qwen_image_router.runtime import RouterRuntime
from qwen_image_router.scheduling.balancer import Balancer
from qwen_image_router.settings import RouterSettings
from qwen_image_router.storage import ImageStorage, RetentionTask, sweep_interval

logger = logging.getLogger(__name__)

# A load poll is a tiny GET; a worker that takes longer than this is in trouble.
_POLL_TIMEOUT_SECONDS = 2.0
# Idle connections to workers are dropped before uvicorn's 5 s keep-alive ends, so a job is
# never sent on a connection the worker is closing.
_KEEPALIVE_EXPIRY_SECONDS = 2.0
# Request line plus headers of one request, at most. uvicorn's httptools parser has no
# bound at all (a client could send megabytes of headers), so the router parses with h11,
# which answers 400 past this; bodies are bounded by MAX_REQUEST_BODY_BYTES, the time to
# send either by REQUEST_HEADER_TIMEOUT_SECONDS and REQUEST_BODY_TIMEOUT_SECONDS.
MAX_HEADER_BYTES = 64 * 1024


def _worker_http_client(transport: PerWorkerTransport) -> httpx.AsyncClient:
    """No read timeout: a job takes as long as it takes, TASK_TIMEOUT bounds it."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
        trust_env=False,  # worker traffic never goes through an HTTP proxy
    )


@contextlib.asynccontextmanager
async def running(settings: RouterSettings, metrics: RouterMetrics) -> AsyncIterator[RouterRuntime]:
    """Start every part of the router; stop them in reverse order on exit."""
    async with contextlib.AsyncExitStack() as stack:
        storage = ImageStorage(
            settings.image_output_dir,
            max_age_seconds=settings.image_retention_seconds,
            max_total_bytes=settings.image_retention_max_bytes,
        )
        await asyncio.to_thread(storage.prepare)
        retention = RetentionTask(storage, sweep_interval(settings.image_retention_seconds))
        retention.start()
        stack.push_async_callback(retention.stop)

        transport = PerWorkerTransport(
            httpx.Limits(max_connections=None, keepalive_expiry=_KEEPALIVE_EXPIRY_SECONDS)
        )
        http = await stack.enter_async_context(_worker_http_client(transport))
        rewriter = build_rewriter(settings, metrics)
        if rewriter is not None:
            stack.push_async_callback(rewriter.close)

        registry = WorkerRegistry()
        if settings.metrics_port:
            scraped = metrics_app(metrics, registry, settings.load_stale_after_seconds)
            config = uvicorn.Config(
                scraped,
                host=settings.host,
                port=settings.metrics_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
            await stack.enter_async_context(serve_beside(config))
        registry.on_change(lambda: transport.keep_only(w.endpoint.url for w in registry.workers()))
        discovery = build_discovery(settings)
        await discovery.start(registry)
        stack.push_async_callback(discovery.stop)

        block_seconds = settings.load_stale_after_seconds
        poller = LoadPoller(
            registry,
            http,
            interval=settings.load_poll_interval_seconds,
            timeout=min(_POLL_TIMEOUT_SECONDS, settings.load_stale_after_seconds),
            block_seconds=block_seconds,
        )
        await poller.start()
        stack.push_async_callback(poller.stop)

        pools = ModelPools(registry, settings.model_name)
        dispatcher = Dispatcher(
            registry,
            pools,
            Balancer(settings.load_stale_after_seconds, policy=settings.scheduling_policy),
            WorkerClient(http, registry, block_seconds),
            metrics,
        )
        generator = ImageGenerator(dispatcher, rewriter, settings.task_timeout_seconds)
        logger.info(
            "router serving %s: %d workers known (%s discovery), prompt rewrite %s",
            settings.model_name,
            len(registry.workers()),
            settings.discovery,
            "on" if rewriter is not None else "off",
        )
        yield RouterRuntime(registry=registry, pools=pools, generator=generator, storage=storage)


def create_app(settings: RouterSettings) -> FastAPI:
    """The router app; nothing starts until its lifespan runs."""
    metrics = RouterMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, metrics) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPI(
        title="Qwen-Image router",
        summary="OpenAI-compatible Images API in front of Qwen-Image GPU workers.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if settings.enable_api_docs else None,
        default_response_class=JSONAnswer,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started_at = int(time.time())

    install_error_handlers(app)
    # Added last runs first: the key is checked before the body is read, and every answer
    # of the image routes is counted, refusals of the other two included.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_request_body_bytes,
        path_limits={edits.EDITS_PATH: settings.max_edit_body_bytes},
    )
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=metrics,
        paths=(images.GENERATIONS_PATH, edits.EDITS_PATH),
    )
    for module in (health, models, images, edits, files):
        app.include_router(module.router)
    if not settings.metrics_port:
        app.include_router(metrics_routes.router)
    return app


def run(settings: RouterSettings | None = None) -> None:
    """Serve the router until SIGINT/SIGTERM; settings default to the environment.

    On SIGTERM it stops listening and lets the requests in flight finish (they are bounded
    by TASK_TIMEOUT), then exits 0.
    """
    settings = settings or load_settings(RouterSettings, "router")
    configure_logging(settings.log_level, settings.log_format, service="router")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        http=receive_timeout_protocol(
            settings.request_header_timeout_seconds, settings.request_body_timeout_seconds
        ),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=int(settings.task_timeout_seconds) + 5,
    )
    GracefulServer(config, on_exit_signal=lambda: None).run_and_exit()
