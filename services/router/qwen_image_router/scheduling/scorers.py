"""Scorers rate a candidate from 0 (worst) to 1 (best)."""

from __future__ import annotations

from typing import Protocol

from qwen_image_router.registry import WorkerState


class WorkerScorer(Protocol):
    def score(self, worker: WorkerState) -> float: ...


class LeastLoadedScorer:
    """Prefers the worker with the smallest used fraction of its capacity."""

    def score(self, worker: WorkerState) -> float:
        return 1.0 - worker.used_ratio()


class NoPreferenceScorer:
    """Rates every candidate alike, so the picker alone decides (round-robin, random)."""

    def score(self, worker: WorkerState) -> float:
        return 1.0
