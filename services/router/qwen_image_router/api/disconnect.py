"""Stops work for a client that went away, so no worker computes for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from qwen_image_common.requests import wait_for_disconnect
from qwen_image_router.errors import ClientClosedRequest

T = TypeVar("T")


async def run_until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Runs `work`; cancels it and raises ClientClosedRequest if the client disconnects."""
    work_task = asyncio.create_task(work)
    watcher = asyncio.create_task(wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work_task.done():
            raise ClientClosedRequest()
        return work_task.result()
    finally:
        for task in (work_task, watcher):
            task.cancel()
        # Wait until the work has really stopped: its HTTP request to the worker is closed.
        await asyncio.gather(work_task, watcher, return_exceptions=True)
