"""Filters, then scores, then picks: the one place a worker is chosen for a job.

Every policy shares the filters, so each sends jobs only to ready workers with a free
slot and says "saturated" alike; they differ in which of those they take.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable
from typing import Literal

from qwen_image_router.registry import WorkerState
from qwen_image_router.scheduling.filters import (
    FreeCapacityFilter,
    FreshReportFilter,
    NotBlockedFilter,
    ReadyFilter,
    WorkerFilter,
)
from qwen_image_router.scheduling.picker import MaxScorePicker, RoundRobinPicker, WorkerPicker
from qwen_image_router.scheduling.saturation import Saturated
from qwen_image_router.scheduling.scorers import (
    LeastLoadedScorer,
    NoPreferenceScorer,
    WorkerScorer,
)

SchedulingPolicy = Literal["least-loaded", "round-robin", "random"]

# Each policy as a scorer and a picker. least-loaded is the default; the others are there
# to compare it with (benchmarks/scheduling.py).
_POLICIES: dict[str, Callable[[random.Random | None], tuple[WorkerScorer, WorkerPicker]]] = {
    "least-loaded": lambda rng: (LeastLoadedScorer(), MaxScorePicker(rng)),
    "round-robin": lambda rng: (NoPreferenceScorer(), RoundRobinPicker()),
    "random": lambda rng: (NoPreferenceScorer(), MaxScorePicker(rng)),
}


class Balancer:
    """Chooses a ready worker with a free slot by the policy, or says it is saturated."""

    def __init__(
        self,
        stale_after: float,
        rng: random.Random | None = None,
        policy: SchedulingPolicy = "least-loaded",
    ) -> None:
        self.filters: list[WorkerFilter] = [
            FreshReportFilter(stale_after),
            ReadyFilter(),
            NotBlockedFilter(),
            FreeCapacityFilter(),
        ]
        self.scorer, self.picker = _POLICIES[policy](rng)

    def idle(self, workers: Iterable[WorkerState], now: float) -> list[WorkerState]:
        """The workers that pass every filter and have nothing to do: a request's images
        spread over them are made side by side."""
        candidates = list(workers)
        for worker_filter in self.filters:
            candidates = worker_filter.filter(candidates, now)
        return [worker for worker in candidates if worker.used_slots() == 0]

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
