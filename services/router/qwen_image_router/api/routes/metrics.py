"""GET /metrics in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from qwen_image_router.api.deps import MetricsDep, RuntimeDep, SettingsDep
from qwen_image_router.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(metrics: MetricsDep, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    registry = runtime.registry
    metrics.update_workers(registry.workers(), registry.now(), settings.load_stale_after_seconds)
    return Response(metrics.render(), media_type=CONTENT_TYPE)
