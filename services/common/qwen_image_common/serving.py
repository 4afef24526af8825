"""A uvicorn server that drains on SIGTERM and then exits 0, for both services.

Kubernetes sends SIGTERM to stop a pod; a drained process that exits non-zero reads as a
crash. uvicorn re-raises the signal after its graceful shutdown, so SIGTERM is dropped
from what it re-raises (SIGINT, Ctrl-C, keeps its usual meaning).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
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
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)

    def fail(self) -> None:
        """Stop serving and exit non-zero (a fatal start-up error, already logged)."""
        self.exit_code = 1
        self.should_exit = True

    def run_and_exit(self) -> None:
        self.run()
        sys.exit(self.exit_code)
