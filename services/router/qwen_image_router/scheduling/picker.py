"""The picker takes one worker from the scored candidates."""

from __future__ import annotations

import random

from qwen_image_router.registry import WorkerState


class MaxScorePicker:
    """Takes the best score; ties are broken at random so router replicas spread out."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, scored: list[tuple[WorkerState, float]]) -> WorkerState:
        best = max(score for _, score in scored)
        return self._rng.choice([worker for worker, score in scored if score == best])
