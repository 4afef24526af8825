"""The worker's Prometheus metrics, in a registry of its own (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_JOB_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2, 5)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        prefix = "qwen_image_worker_"
        self.ready = Gauge(
            prefix + "ready",
            "1 when the model is loaded, warm and not draining.",
            registry=self.registry,
        )
        self.busy = Gauge(
            prefix + "busy", "1 while a batch of jobs runs on the GPU.", registry=self.registry
        )
        self.busy_seconds = Counter(
            prefix + "busy_seconds",
            "Time spent in pipeline calls; its rate is the GPU's busy fraction (a batch's time "
            "counts once, however many jobs share it).",
            registry=self.registry,
        )
        self.running_jobs = Gauge(
            prefix + "running_jobs",
            "Jobs in the batch on the GPU now; with queue_depth, the worker's demand.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            prefix + "queue_depth",
            "Jobs accepted and waiting for the GPU.",
            registry=self.registry,
        )
        self.capacity = Gauge(
            prefix + "capacity",
            "Running plus waiting jobs the worker accepts.",
            registry=self.registry,
        )
        self.job_duration = Histogram(
            prefix + "job_duration_seconds",
            "Time from a job's start to its last PNG.",
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            prefix + "queue_wait_seconds",
            "Time a job waited before it ran.",
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            prefix + "step_duration_seconds",
            "Time of one denoising step of a pipeline call (both CFG passes, every image).",
            buckets=_STEP_BUCKETS,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            prefix + "batch_images",
            "Images made by one pipeline call (jobs of one shape batched together).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.job_failures = Counter(
            prefix + "job_failures",
            "Jobs that ended without images, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.images_generated = Counter(
            prefix + "images_generated", "Images generated and encoded.", registry=self.registry
        )
