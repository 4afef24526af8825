"""Liveness, readiness, load and metrics: what Kubernetes and the router poll."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qwen_image_common.contract import LOAD_PATH, WorkerLoad
from qwen_image_worker.api.deps import MetricsDep, QueueDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(queue: QueueDep) -> dict[str, str] | JSONResponse:
    if queue.ready:
        return {"status": "ready"}
    return JSONResponse(
        {"detail": "Not ready: the model is loading or the worker is draining"}, status_code=503
    )


@router.get(LOAD_PATH)
async def load(queue: QueueDep) -> WorkerLoad:
    return queue.load()


@router.get("/metrics")
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
