"""Pickers take one worker from the scored candidates."""

from __future__ import annotations

import random
from typing import Protocol

from qwen_image_router.registry import WorkerState


class WorkerPicker(Protocol):
    def pick(self, scored: list[tuple[WorkerState, float]]) -> WorkerState: ...


def best(scored: list[tuple[WorkerState, float]]) -> list[WorkerState]:
    top = max(score for _, score in scored)
    return [worker for worker, score in scored if score == top]


class MaxScorePicker:
    """Takes the best score; ties are broken at random so router replicas spread out."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, scored: list[tuple[WorkerState, float]]) -> WorkerState:
        return self._rng.choice(best(scored))


class RoundRobinPicker:
    """Takes the best-scored worker next in name order after the one it took last."""

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, scored: list[tuple[WorkerState, float]]) -> WorkerState:
        ordered = sorted(best(scored), key=lambda worker: worker.name)
        after = [w for w in ordered if self._last is not None and w.name > self._last]
        chosen = (after or ordered)[0]
        self._last = chosen.name
        return chosen
