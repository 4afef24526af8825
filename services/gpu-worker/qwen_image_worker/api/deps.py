"""Dependencies of the routes, as Annotated aliases over what the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qwen_image_worker.metrics import WorkerMetrics
from qwen_image_worker.queue import JobQueue


def _queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def _metrics(request: Request) -> WorkerMetrics:
    metrics: WorkerMetrics = request.app.state.metrics
    return metrics


QueueDep = Annotated[JobQueue, Depends(_queue)]
MetricsDep = Annotated[WorkerMetrics, Depends(_metrics)]
