"""SCHEDULING_POLICY: least-loaded (the default), round-robin and random over one registry."""

from __future__ import annotations

import random
from collections import Counter

from qwen_image_common.contract import WorkerLoad
from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry, WorkerState
from qwen_image_router.scheduling.balancer import Balancer, SchedulingPolicy
from qwen_image_router.scheduling.saturation import Saturated

STALE_AFTER = 3.0


def registry_of(*loads: tuple[int, int]) -> WorkerRegistry:
    """Workers w0, w1, ... reporting (running + waiting, capacity)."""
    registry = WorkerRegistry(clock=lambda: 10.0)
    registry.replace(WorkerEndpoint(f"w{i}", f"http://w{i}:8000") for i in range(len(loads)))
    for i, (used, capacity) in enumerate(loads):
        registry.record_load(
            f"w{i}",
            WorkerLoad(
                ready=True, running=min(used, 1), waiting=max(0, used - 1), capacity=capacity
            ),
        )
    return registry


def picks(balancer: Balancer, registry: WorkerRegistry, times: int) -> list[str]:
    chosen = []
    for _ in range(times):
        choice = balancer.choose(registry.workers(), registry.now())
        assert isinstance(choice, WorkerState)
        chosen.append(choice.name)
    return chosen


def test_least_loaded_is_the_default_and_takes_the_emptiest() -> None:
    registry = registry_of((3, 5), (1, 5), (2, 5))
    assert set(picks(Balancer(STALE_AFTER), registry, 20)) == {"w1"}


def test_round_robin_takes_the_workers_in_turn_whatever_their_load() -> None:
    registry = registry_of((3, 5), (1, 5), (2, 5))
    balancer = Balancer(STALE_AFTER, policy="round-robin")
    assert picks(balancer, registry, 7) == ["w0", "w1", "w2", "w0", "w1", "w2", "w0"]


def test_random_spreads_over_every_worker_with_room() -> None:
    registry = registry_of((3, 5), (1, 5), (2, 5), (5, 5))
    balancer = Balancer(STALE_AFTER, rng=random.Random(4), policy="random")
    counts = Counter(picks(balancer, registry, 300))
    assert set(counts) == {"w0", "w1", "w2"}  # w3 is full
    assert min(counts.values()) > 60


def test_every_policy_skips_full_workers_and_says_saturated_alike() -> None:
    policies: tuple[SchedulingPolicy, ...] = ("least-loaded", "round-robin", "random")
    for policy in policies:
        balancer = Balancer(STALE_AFTER, policy=policy)
        registry = registry_of((5, 5), (2, 5))
        assert set(picks(balancer, registry, 5)) == {"w1"}
        full = registry_of((5, 5), (5, 5))
        assert balancer.choose(full.workers(), full.now()) == Saturated("all_full")


def test_a_worker_that_answered_nonsense_gets_no_job_until_its_block_ends() -> None:
    now = [10.0]
    registry = WorkerRegistry(clock=lambda: now[0])
    registry.replace([WorkerEndpoint("w0", "http://w0:8000")])
    registry.record_load("w0", WorkerLoad(ready=True, running=0, waiting=0, capacity=2))
    registry.record_faulty("w0", block_seconds=3.0)
    registry.record_load("w0", WorkerLoad(ready=True, running=0, waiting=0, capacity=2))
    balancer = Balancer(STALE_AFTER)
    assert balancer.choose(registry.workers(), now[0]) == Saturated("all_full")
    now[0] += 3.0
    registry.record_load("w0", WorkerLoad(ready=True, running=0, waiting=0, capacity=2))
    assert isinstance(balancer.choose(registry.workers(), now[0]), WorkerState)


def test_a_good_load_report_ends_a_workers_silence() -> None:
    registry = registry_of((0, 2))
    registry.record_silent("w0")
    worker = registry.get("w0")
    assert worker is not None and worker.silent.is_set()
    registry.record_load("w0", WorkerLoad(ready=True, running=0, waiting=0, capacity=2))
    assert not worker.silent.is_set()
