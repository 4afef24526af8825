"""Filters narrow the candidate workers; each says why, should it leave none.

A worker's load is known only from a fresh report: a stale or missing one is unknown,
and unknown never counts as free.
"""

from __future__ import annotations

from typing import Protocol

from qwen_image_router.registry import WorkerState
from qwen_image_router.scheduling.saturation import SaturationReason


def is_fresh(worker: WorkerState, now: float, stale_after: float) -> bool:
    if worker.load is None or worker.load_at is None:
        return False
    return now - worker.load_at < stale_after


def is_ready(worker: WorkerState) -> bool:
    return worker.load is not None and worker.load.ready


def used_slots(worker: WorkerState) -> int:
    """Slots in use: the worker's report, or this router's own jobs if those are more.

    The report covers every router's jobs but lags; the router's own count is exact for
    its share. The higher of the two is the safe guess.
    """
    reported = 0 if worker.load is None else worker.load.running + worker.load.waiting
    return max(reported, worker.in_flight)


def free_slots(worker: WorkerState) -> int:
    if worker.load is None:
        return 0
    return max(0, worker.load.capacity - used_slots(worker))


class WorkerFilter(Protocol):
    """Keeps the workers that may take a job; `reason` names an empty result."""

    reason: SaturationReason

    def filter(self, workers: list[WorkerState], now: float) -> list[WorkerState]: ...


class FreshReportFilter:
    """Drops workers whose last load report is missing or older than `stale_after`."""

    reason: SaturationReason = "no_ready_worker"

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after

    def filter(self, workers: list[WorkerState], now: float) -> list[WorkerState]:
        return [w for w in workers if is_fresh(w, now, self.stale_after)]


class ReadyFilter:
    """Drops workers that report not ready (loading, warming up, draining)."""

    reason: SaturationReason = "no_ready_worker"

    def filter(self, workers: list[WorkerState], now: float) -> list[WorkerState]:
        return [w for w in workers if is_ready(w)]


class NotBlockedFilter:
    """Drops workers that refused a job, failed to answer, or answered nonsense, until
    their block ends."""

    reason: SaturationReason = "all_full"

    def filter(self, workers: list[WorkerState], now: float) -> list[WorkerState]:
        return [w for w in workers if w.blocked_until <= now and w.faulty_until <= now]


class FreeCapacityFilter:
    """Drops workers with no free slot; this filter is the saturation detector."""

    reason: SaturationReason = "all_full"

    def filter(self, workers: list[WorkerState], now: float) -> list[WorkerState]:
        return [w for w in workers if free_slots(w) > 0]
