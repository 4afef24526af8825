"""Choosing a worker: filters, scorer, picker and balancer over real registry states."""

from __future__ import annotations

import random

import pytest

from qwen_image_common.contract import WorkerLoad
from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry, WorkerState
from qwen_image_router.scheduling.balancer import Balancer
from qwen_image_router.scheduling.filters import (
    FreeCapacityFilter,
    FreshReportFilter,
    NotBlockedFilter,
    ReadyFilter,
)
from qwen_image_router.scheduling.picker import MaxScorePicker
from qwen_image_router.scheduling.saturation import Saturated
from qwen_image_router.scheduling.scorers import LeastLoadedScorer

STALE_AFTER = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> WorkerRegistry:
    registry = WorkerRegistry(clock=clock)
    registry.replace(WorkerEndpoint(name, f"http://{name}:8000") for name in ("a", "b", "c"))
    return registry


def load(running: int = 0, waiting: int = 0, capacity: int = 5, ready: bool = True) -> WorkerLoad:
    return WorkerLoad(ready=ready, running=running, waiting=waiting, capacity=capacity)


def state(registry: WorkerRegistry, name: str) -> WorkerState:
    worker = registry.get(name)
    assert worker is not None
    return worker


def names(workers: list[WorkerState]) -> list[str]:
    return [w.name for w in workers]


def test_fresh_filter_treats_missing_and_old_reports_as_unknown(
    registry: WorkerRegistry, clock: Clock
) -> None:
    registry.record_load("a", load())
    clock.now += STALE_AFTER - 0.01
    registry.record_load("b", load())
    kept = FreshReportFilter(STALE_AFTER).filter(registry.workers(), clock.now)
    assert names(kept) == ["a", "b"]  # c never reported

    clock.now += 0.01
    kept = FreshReportFilter(STALE_AFTER).filter(registry.workers(), clock.now)
    assert names(kept) == ["b"]  # a's report is now exactly stale_after old


def test_ready_filter_drops_workers_that_report_not_ready(registry: WorkerRegistry) -> None:
    registry.record_load("a", load(ready=False))
    registry.record_load("b", load(ready=True))
    assert names(ReadyFilter().filter(registry.workers(), registry.now())) == ["b"]


def test_not_blocked_filter_honours_block_until_it_ends(
    registry: WorkerRegistry, clock: Clock
) -> None:
    for name in ("a", "b", "c"):
        registry.record_load(name, load())
    registry.record_full("a", block_seconds=1.0)
    assert names(NotBlockedFilter().filter(registry.workers(), clock.now)) == ["b", "c"]
    clock.now += 1.0
    assert names(NotBlockedFilter().filter(registry.workers(), clock.now)) == ["a", "b", "c"]


def test_a_new_load_report_lifts_a_full_block(registry: WorkerRegistry, clock: Clock) -> None:
    registry.record_load("a", load())
    registry.record_full("a", block_seconds=10.0)
    registry.record_load("a", load(running=1))
    assert names(NotBlockedFilter().filter([state(registry, "a")], clock.now)) == ["a"]


def test_used_slots_is_the_higher_of_report_and_own_in_flight(registry: WorkerRegistry) -> None:
    registry.record_load("a", load(running=1, waiting=1, capacity=4))
    a = state(registry, "a")
    assert a.used_slots() == 2 and a.free_slots() == 2
    a.in_flight = 3  # this router sent more than the (older) report shows
    assert a.used_slots() == 3 and a.free_slots() == 1
    a.in_flight = 6
    assert a.free_slots() == 0


def test_free_capacity_filter_drops_full_workers_and_unknown_load(
    registry: WorkerRegistry,
) -> None:
    registry.record_load("a", load(running=1, waiting=4, capacity=5))
    registry.record_load("b", load(running=1, waiting=3, capacity=5))
    kept = FreeCapacityFilter().filter(registry.workers(), registry.now())
    assert names(kept) == ["b"]  # c has no report: unknown is never free


def test_least_loaded_scorer_is_the_free_fraction(registry: WorkerRegistry) -> None:
    registry.record_load("a", load(running=0, capacity=4))
    registry.record_load("b", load(running=1, waiting=2, capacity=4))
    scorer = LeastLoadedScorer()
    assert scorer.score(state(registry, "a")) == 1.0
    assert scorer.score(state(registry, "b")) == 0.25
    assert scorer.score(state(registry, "c")) == 0.0


def test_picker_takes_the_best_and_breaks_ties_among_the_best_only(
    registry: WorkerRegistry,
) -> None:
    a, b, c = (state(registry, n) for n in ("a", "b", "c"))
    picker = MaxScorePicker(random.Random(1))
    assert picker.pick([(a, 0.2), (b, 0.9), (c, 0.5)]) is b
    picked = {picker.pick([(a, 0.5), (b, 0.5), (c, 0.1)]).name for _ in range(50)}
    assert picked == {"a", "b"}


def test_balancer_picks_the_least_loaded_ready_worker(registry: WorkerRegistry) -> None:
    registry.record_load("a", load(running=1, waiting=2, capacity=5))
    registry.record_load("b", load(running=1, waiting=0, capacity=5))
    registry.record_load("c", load(running=0, waiting=0, capacity=5, ready=False))
    choice = Balancer(STALE_AFTER).choose(registry.workers(), registry.now())
    assert isinstance(choice, WorkerState) and choice.name == "b"


def test_balancer_counts_its_own_in_flight_jobs(registry: WorkerRegistry) -> None:
    registry.record_load("a", load(capacity=5))
    registry.record_load("b", load(running=1, capacity=5))
    state(registry, "a").in_flight = 3  # sent since a's last report
    choice = Balancer(STALE_AFTER).choose(registry.workers(), registry.now())
    assert isinstance(choice, WorkerState) and choice.name == "b"


def test_balancer_skips_excluded_workers(registry: WorkerRegistry) -> None:
    registry.record_load("a", load())
    registry.record_load("b", load(running=2))
    choice = Balancer(STALE_AFTER).choose(registry.workers(), registry.now(), exclude=["a"])
    assert isinstance(choice, WorkerState) and choice.name == "b"
    assert Balancer(STALE_AFTER).choose(
        registry.workers(), registry.now(), exclude=["a", "b", "c"]
    ) == Saturated("no_workers")


def test_balancer_without_workers_is_saturated() -> None:
    assert Balancer(STALE_AFTER).choose([], 0.0) == Saturated("no_workers")


def test_balancer_with_only_stale_or_unready_workers_has_no_ready_worker(
    registry: WorkerRegistry, clock: Clock
) -> None:
    registry.record_load("a", load())
    registry.record_load("b", load(ready=False))
    clock.now += STALE_AFTER  # a's free report is stale now; b is fresh but not ready
    registry.record_load("b", load(ready=False))
    choice = Balancer(STALE_AFTER).choose(registry.workers(), clock.now)
    assert choice == Saturated("no_ready_worker")


def test_balancer_with_every_ready_worker_full_or_blocked_is_all_full(
    registry: WorkerRegistry,
) -> None:
    registry.record_load("a", load(running=1, waiting=4, capacity=5))
    registry.record_load("b", load())
    registry.record_full("b", block_seconds=5.0)
    registry.record_load("c", load(capacity=2))
    state(registry, "c").in_flight = 2
    choice = Balancer(STALE_AFTER).choose(registry.workers(), registry.now())
    assert choice == Saturated("all_full")


def test_an_unreachable_worker_gets_no_job_until_it_reports_again(
    registry: WorkerRegistry, clock: Clock
) -> None:
    registry.record_load("a", load())
    registry.record_unreachable("a", block_seconds=0.5)
    balancer = Balancer(STALE_AFTER)
    assert balancer.choose([state(registry, "a")], clock.now) == Saturated("no_ready_worker")
    clock.now += 1.0
    assert balancer.choose([state(registry, "a")], clock.now) == Saturated("no_ready_worker")
    registry.record_load("a", load())
    assert balancer.choose([state(registry, "a")], clock.now) == state(registry, "a")
