"""The router's Prometheus metrics; the autoscaling signals come from here.

Each app owns its registry, so two routers in one process (tests) never share counters.
Worker gauges are set from the registry at scrape time, so they can never drift from it.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qwen_image_router.registry import WorkerRegistry

__all__ = ["CONTENT_TYPE", "RouterMetrics"]

# Image generation takes seconds to minutes; the buckets follow that, up to TASK_TIMEOUT.
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class RouterMetrics:
    """The metrics of one router app and the registry they live in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qwen_image_router_requests_total",
            "Image requests (generations and edits) answered, by HTTP status and reason.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "qwen_image_router_request_duration_seconds",
            "Time from a valid image request to its answer's end (a stream's last event).",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_full = Counter(
            "qwen_image_router_queue_full_total",
            "Requests refused with `Task queue is full` because no ready worker had room.",
            registry=self.registry,
        )
        self.model_queue_full = Counter(
            "qwen_image_router_model_queue_full_total",
            "Requests refused with `Task queue is full`, by the model (pool) they named.",
            ["model"],
            registry=self.registry,
        )
        self.ready_workers = Gauge(
            "qwen_image_router_ready_workers",
            "Workers whose fresh load report says ready.",
            registry=self.registry,
        )
        self.model_ready_workers = Gauge(
            "qwen_image_router_model_ready_workers",
            "Workers whose fresh load report says ready, by the model (pool) they serve.",
            ["model"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "qwen_image_router_in_flight_requests",
            "Generation requests this router is working on now.",
            registry=self.registry,
        )
        self.worker_in_flight = Gauge(
            "qwen_image_router_worker_in_flight",
            "Jobs this router has out at each worker now.",
            ["worker"],
            registry=self.registry,
        )
        self.worker_load_ratio = Gauge(
            "qwen_image_router_worker_load_ratio",
            "Fraction (0..1) of each ready worker's capacity in use, by its fresh report "
            "or this router's own jobs, whichever is higher.",
            ["worker"],
            registry=self.registry,
        )
        self.prompt_rewrite_failures = Counter(
            "qwen_image_router_prompt_rewrite_failures_total",
            "Prompt rewrites that failed or timed out; the original prompt was used.",
            registry=self.registry,
        )

    def record_request(self, status: int, reason: str, duration: float | None = None) -> None:
        self.requests.labels(status=str(status), reason=reason).inc()
        if duration is not None:
            self.request_duration.observe(duration)

    def update_workers(self, registry: WorkerRegistry, stale_after: float) -> None:
        """Set the worker gauges from the registry; workers gone from it lose their series."""
        self.worker_in_flight.clear()
        self.worker_load_ratio.clear()
        self.model_ready_workers.clear()
        for worker in registry.workers():
            self.worker_in_flight.labels(worker=worker.name).set(worker.in_flight)
        ready = registry.ready_workers(stale_after)
        for worker in ready:
            self.worker_load_ratio.labels(worker=worker.name).set(worker.used_ratio())
            assert worker.load is not None
            self.model_ready_workers.labels(model=worker.load.model).inc()
        self.ready_workers.set(len(ready))

    def render(self) -> bytes:
        return generate_latest(self.registry)
