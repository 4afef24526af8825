"""A uvicorn server that drains on SIGTERM and then exits 0, for both services.

Kubernetes sends SIGTERM to stop a pod; a drained process that exits non-zero reads as a
crash. uvicorn restores the signal handlers it found and re-raises what it caught after
its graceful shutdown, so the handler it finds for SIGTERM only asks the server to exit:
re-raised after the drain, it changes nothing. SIGINT (Ctrl-C) keeps its usual meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType

import uvicorn


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit_signal = on_exit_signal
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit_signal()
        super().handle_exit(sig, frame)

    def fail(self) -> None:
        """Stop serving and exit non-zero (a fatal start-up error, already logged)."""
        self.exit_code = 1
        self.should_exit = True

    def run_and_exit(self) -> None:
        signal.signal(signal.SIGTERM, self._stop_quietly)
        self.run()
        sys.exit(self.exit_code)

    def _stop_quietly(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit = True


class SideServer(uvicorn.Server):
    """A second uvicorn server run as a task beside the main one (a metrics port): the main
    server handles the signals and stops this one on its way out."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_beside(config: uvicorn.Config) -> AsyncIterator[None]:
    """Serve `config`'s app while the block runs; fails at once if its port is taken."""
    server = SideServer(config)
    task = asyncio.create_task(server.serve(), name=f"server-{config.port}")
    while not server.started:
        if task.done():
            task.result()  # its error, e.g. the port in use
            raise RuntimeError(f"the server on port {config.port} stopped at start-up")
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task
