"""The typed answer of a balancer that found no worker with room."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SaturationReason = Literal["no_workers", "no_ready_worker", "all_full"]


@dataclass(frozen=True)
class Saturated:
    """Nothing can take the job now; the request ends as `Task queue is full`."""

    reason: SaturationReason
