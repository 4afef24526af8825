"""The router's view of its workers: who exists (from discovery) and how loaded each is.

Discovery backends replace the endpoint set; the load poller and the request path record
what they learn. Everything runs on the event loop, so no locks: a backend running in a
thread hands its updates over with `loop.call_soon_threadsafe(registry.replace, ...)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from qwen_image_common.contract import WorkerLoad


@dataclass(frozen=True)
class WorkerEndpoint:
    """A worker as discovery sees it: a stable name (pod name or URL) and its base URL."""

    name: str
    url: str


@dataclass
class WorkerState:
    """What the router knows of one worker. Mutated only on the event loop."""

    endpoint: WorkerEndpoint
    load: WorkerLoad | None = None
    load_at: float | None = None
    # The last good report, kept through failed polls: it names the worker's model (pool).
    reported: WorkerLoad | None = None
    in_flight: int = 0
    blocked_until: float = 0.0
    consecutive_failures: int = field(default=0)
    # Until then it gets no jobs, whatever its load reports say: it answered a job with
    # something outside the job contract.
    faulty_until: float = 0.0
    # Set once its load polls keep timing out: jobs out there are given up and sent elsewhere.
    silent: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.endpoint.name

    def is_fresh(self, now: float, stale_after: float) -> bool:
        """Its load is known only from a report younger than `stale_after`."""
        return self.load_at is not None and now - self.load_at < stale_after

    @property
    def reports_ready(self) -> bool:
        """Its last report says ready (loaded, warmed up, not draining), fresh or not."""
        return self.load is not None and self.load.ready

    def is_ready(self, now: float, stale_after: float) -> bool:
        """A fresh report says ready; a stale or missing one never does."""
        return self.is_fresh(now, stale_after) and self.reports_ready

    def used_slots(self) -> int:
        """Slots in use: the worker's report, or this router's own jobs if those are more.

        The report covers every router's jobs but lags; the router's own count is exact for
        its share. The higher of the two is the safe guess.
        """
        reported = 0 if self.load is None else self.load.running + self.load.waiting
        return max(reported, self.in_flight)

    def free_slots(self) -> int:
        """Unknown load never counts as free."""
        if self.load is None:
            return 0
        return max(0, self.load.capacity - self.used_slots())

    def used_ratio(self) -> float:
        """Fraction (0..1) of its capacity in use; a worker of unknown load counts as full."""
        if self.load is None:
            return 1.0
        return min(1.0, self.used_slots() / self.load.capacity)


class WorkerRegistry:
    """Holds the current worker set; keeps a worker's state while discovery keeps the worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workers: dict[str, WorkerState] = {}
        self._listeners: list[Callable[[], None]] = []

    def replace(self, endpoints: Iterable[WorkerEndpoint]) -> None:
        """Make `endpoints` the worker set; workers not in it stop receiving jobs at once."""
        new: dict[str, WorkerState] = {}
        for endpoint in endpoints:
            old = self._workers.get(endpoint.name)
            new[endpoint.name] = (
                old if old is not None and old.endpoint == endpoint else WorkerState(endpoint)
            )
        self._workers = new
        for listener in self._listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def workers(self) -> list[WorkerState]:
        return list(self._workers.values())

    def ready_workers(self, stale_after: float) -> list[WorkerState]:
        """The workers whose fresh load report says ready, for /readyz and the gauges."""
        now = self._clock()
        return [w for w in self._workers.values() if w.is_ready(now, stale_after)]

    def get(self, name: str) -> WorkerState | None:
        return self._workers.get(name)

    def now(self) -> float:
        return self._clock()

    def record_load(self, name: str, load: WorkerLoad) -> None:
        state = self._workers.get(name)
        if state is None:
            return
        state.load = load
        state.reported = load
        state.load_at = self._clock()
        state.blocked_until = 0.0
        state.consecutive_failures = 0
        state.silent.clear()

    def record_unreachable(self, name: str, block_seconds: float) -> None:
        """A failed poll or send: the worker's load is unknown until it answers again."""
        state = self._workers.get(name)
        if state is None:
            return
        state.load = None
        state.load_at = None
        state.consecutive_failures += 1
        state.blocked_until = self._clock() + block_seconds

    def record_full(self, name: str, block_seconds: float) -> None:
        """The worker refused a job as full: skip it until its next report or the block ends."""
        state = self._workers.get(name)
        if state is not None:
            state.blocked_until = self._clock() + block_seconds

    def record_silent(self, name: str) -> None:
        """The worker stopped answering (hung, paused, cut off): give up its jobs."""
        state = self._workers.get(name)
        if state is not None:
            state.silent.set()

    def record_faulty(self, name: str, block_seconds: float) -> None:
        """The worker answered a job with nonsense: no jobs for it for a while, even if its
        load reports look fine (they would make an instant failure look like free room)."""
        state = self._workers.get(name)
        if state is not None:
            state.faulty_until = self._clock() + block_seconds
