"""Liveness (the spec's /healthz) and readiness (a worker can take jobs)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from qwen_image_router.api.deps import RuntimeDep, SettingsDep
from qwen_image_router.errors import error_doc
from qwen_image_router.schemas import HealthStatus, ReadyStatus

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(settings: SettingsDep) -> HealthStatus:
    """The process serves; says nothing about workers."""
    return HealthStatus(model=settings.model_name)


@router.get("/readyz", response_model=ReadyStatus, responses={503: error_doc("No worker is ready")})
async def readyz(settings: SettingsDep, runtime: RuntimeDep) -> ReadyStatus | JSONResponse:
    """200 once at least one worker's fresh report says ready, else 503."""
    ready = len(runtime.registry.ready_workers(settings.load_stale_after_seconds))
    if ready == 0:
        return JSONResponse({"detail": "No worker is ready"}, status_code=503)
    return ReadyStatus(ready_workers=ready)
