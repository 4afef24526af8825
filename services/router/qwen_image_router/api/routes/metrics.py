"""GET /metrics in Prometheus' text format: on the API port, or on METRICS_PORT alone."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from qwen_image_router.api.deps import MetricsDep, RuntimeDep, SettingsDep
from qwen_image_router.metrics import CONTENT_TYPE, RouterMetrics
from qwen_image_router.registry import WorkerRegistry

router = APIRouter(tags=["metrics"])


def scrape(metrics: RouterMetrics, registry: WorkerRegistry, stale_after: float) -> Response:
    metrics.update_workers(registry, stale_after)
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@router.get("/metrics", include_in_schema=False)
async def get_metrics(metrics: MetricsDep, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    return scrape(metrics, runtime.registry, settings.load_stale_after_seconds)


def metrics_app(metrics: RouterMetrics, registry: WorkerRegistry, stale_after: float) -> Starlette:
    """What METRICS_PORT serves: /metrics and nothing else."""

    async def endpoint(_: Request) -> Response:
        return scrape(metrics, registry, stale_after)

    return Starlette(routes=[Route("/metrics", endpoint)])
