"""Filters narrow the candidate workers; each says why, should it leave none.

The predicates live on WorkerState: a stale or missing report is unknown load, and
unknown never counts as ready or free.
"""

from __future__ import annotations

from typing import Protocol

from qwen_image_router.registry import WorkerState
from qwen_image_router.scheduling.saturation import SaturationReason


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
        return [w for w in workers if w.is_fresh(now, self.stale_after)]


class ReadyFilter:
    """Drops workers that report not ready (loading, warming up, draining)."""

    reason: SaturationReason = "no_ready_worker"

    def filter(self, workers: list[WorkerState], now: float) -> list[WorkerState]:
        return [w for w in workers if w.reports_ready]


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
        return [w for w in workers if w.free_slots() > 0]
