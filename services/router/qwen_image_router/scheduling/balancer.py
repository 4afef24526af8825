"""Filters, then scores, then picks: the one place a worker is chosen for a job."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable

from qwen_image_router.registry import WorkerState
from qwen_image_router.scheduling.filters import (
    FreeCapacityFilter,
    FreshReportFilter,
    NotBlockedFilter,
    ReadyFilter,
    WorkerFilter,
)
from qwen_image_router.scheduling.picker import MaxScorePicker
from qwen_image_router.scheduling.saturation import Saturated
from qwen_image_router.scheduling.scorers import LeastLoadedScorer, WorkerScorer


class Balancer:
    """Chooses the least-loaded ready worker with a free slot, or says it is saturated."""

    def __init__(self, stale_after: float, rng: random.Random | None = None) -> None:
        self.filters: list[WorkerFilter] = [
            FreshReportFilter(stale_after),
            ReadyFilter(),
            NotBlockedFilter(),
            FreeCapacityFilter(),
        ]
        self.scorer: WorkerScorer = LeastLoadedScorer()
        self.picker = MaxScorePicker(rng)

    def choose(
        self, workers: Iterable[WorkerState], now: float, exclude: Collection[str] = ()
    ) -> WorkerState | Saturated:
        """`exclude` holds workers this request already tried."""
        candidates = [w for w in workers if w.name not in exclude]
        if not candidates:
            return Saturated("no_workers")
        for worker_filter in self.filters:
            candidates = worker_filter.filter(candidates, now)
            if not candidates:
                return Saturated(worker_filter.reason)
        return self.picker.pick([(w, self.scorer.score(w)) for w in candidates])
