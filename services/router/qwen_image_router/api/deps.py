"""What routes receive, as Annotated dependencies; all of it comes from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.runtime import RouterRuntime
from qwen_image_router.settings import RouterSettings


def get_settings(request: Request) -> RouterSettings:
    settings: RouterSettings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> RouterMetrics:
    metrics: RouterMetrics = request.app.state.metrics
    return metrics


def get_runtime(request: Request) -> RouterRuntime:
    runtime: RouterRuntime = request.app.state.runtime
    return runtime


SettingsDep = Annotated[RouterSettings, Depends(get_settings)]
MetricsDep = Annotated[RouterMetrics, Depends(get_metrics)]
RuntimeDep = Annotated[RouterRuntime, Depends(get_runtime)]
