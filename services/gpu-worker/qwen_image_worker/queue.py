"""The bounded job queue in front of the GPU: one running batch plus `max_waiting` waiting.

One thread owns the pipeline (CUDA work is serial anyway); the event loop only hands work
to it. The job at the head of the queue runs next, together with the waiting jobs that share
its size, steps and guidance scale, as many as the engine's batch size lets one pipeline call
make (small images leave a GPU idle one at a time). PNG encoding runs on other threads, so the
GPU thread starts the next batch at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

from PIL import Image

from qwen_image_common.contract import (
    GeneratedImage,
    JobRequest,
    JobResult,
    PartialImage,
    WorkerLoad,
)
from qwen_image_common.encoding import encode_image
from qwen_image_worker.engine.base import (
    ImageEngine,
    ImageSpec,
    StopRequested,
    edit_output_size,
)
from qwen_image_worker.engine.model_kind import GENERATOR, PipelineKind
from qwen_image_worker.errors import (
    BadJob,
    InferenceFailed,
    JobCancelled,
    NotReady,
    QueueFull,
    TaskTimeout,
    WorkerError,
)
from qwen_image_worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class Job:
    request: JobRequest
    deadline: float
    enqueued_at: float
    future: asyncio.Future[JobResult]
    cancelled: threading.Event = field(default_factory=threading.Event)
    # A streamed job's previews as they are encoded, in order; None once the job ended.
    previews: asyncio.Queue[asyncio.Task[PartialImage] | None] | None = None

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def should_stop(self) -> bool:
        """Read by the GPU thread after every denoising step."""
        return self.cancelled.is_set() or self.expired()

    def stop_error(self) -> WorkerError:
        return JobCancelled() if self.cancelled.is_set() else TaskTimeout()

    @cached_property
    def image_specs(self) -> list[ImageSpec]:
        """One per seed; made once, read each time the queue looks for batch-mates."""
        r = self.request
        pictures = tuple(decode_picture(picture) for picture in r.pictures)
        if r.width is not None and r.height is not None:
            width, height = r.width, r.height
        else:
            width, height = edit_output_size(*pictures[-1].size)
        return [
            ImageSpec(
                prompt=r.prompt,
                negative_prompt=r.negative_prompt,
                width=width,
                height=height,
                num_inference_steps=r.num_inference_steps,
                guidance_scale=r.guidance_scale,
                seed=seed,
                partial_images=r.partial_images if r.stream else 0,
                pictures=pictures,
            )
            for seed in r.seeds
        ]


def encode_b64(image: Image.Image, request: JobRequest) -> str:
    """The image as the job's file format asks, base64: runs on a thread of its own."""
    data = encode_image(image, request.output_format, request.output_compression)
    return base64.b64encode(data).decode("ascii")


def decode_picture(png_b64: str) -> Image.Image:
    """An input picture as the router sent it: an RGB PNG it already checked."""
    image = Image.open(io.BytesIO(base64.b64decode(png_b64)))
    image.load()
    return image.convert("RGB")


class JobQueue:
    """Admits jobs while there is room, runs them in order, and fails each one exactly once."""

    def __init__(
        self,
        max_waiting: int,
        metrics: WorkerMetrics,
        model: str = "Qwen-Image",
        kind: PipelineKind = GENERATOR,
    ) -> None:
        self.max_waiting = max_waiting
        self.model = model
        self.kind = kind
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._engine: ImageEngine | None = None
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._wakeup = asyncio.Event()
        self._accepting = False
        self._consumer: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        metrics.capacity.set(self.capacity)

    @property
    def ready(self) -> bool:
        return self._accepting

    @property
    def capacity(self) -> int:
        """The running batch (one slot when idle) plus `max_waiting`: a job is refused when
        `max_waiting` jobs wait behind a running batch, whatever its size."""
        return max(1, len(self._running)) + self.max_waiting

    def load(self) -> WorkerLoad:
        return WorkerLoad(
            model=self.model,
            task=self.kind.task,
            max_pictures=self.kind.max_pictures,
            ready=self._accepting,
            running=len(self._running),
            waiting=len(self._waiting),
            capacity=self.capacity,
        )

    async def on_gpu_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self, build_engine: Callable[[], ImageEngine], warmup: ImageSpec) -> None:
        """Load the model and warm it up on the GPU thread (one image, or one per size when
        the engine compiles per shape), then accept jobs."""
        engine = await self.on_gpu_thread(build_engine)
        started = time.monotonic()
        sizes = await self.on_gpu_thread(lambda: engine.warm_up(warmup))
        logger.info(
            "warm-up: %d image(s) (%s), %d steps: %.2f s",
            len(sizes),
            ", ".join(f"{width}x{height}" for width, height in sizes),
            warmup.num_inference_steps,
            time.monotonic() - started,
        )
        self._engine = engine
        self._consumer = asyncio.create_task(self._consume(), name="job-consumer")
        self._accepting = True
        self._metrics.ready.set(1)
        logger.info("ready: accepting jobs (capacity %d)", self.capacity)

    def drain(self) -> None:
        """Stop taking jobs; those already accepted still run."""
        if self._accepting:
            logger.info(
                "draining: not ready any more; %d running, %d waiting",
                len(self._running),
                len(self._waiting),
            )
        self._accepting = False
        self._metrics.ready.set(0)

    def submit(self, request: JobRequest) -> Job:
        if not self._accepting:
            raise NotReady("Worker not ready: the model is loading or the worker is draining")
        self._check_pictures(request)
        if len(self._running) + len(self._waiting) >= self.capacity:
            self._metrics.job_failures.labels("queue_full").inc()
            raise QueueFull
        now = time.monotonic()
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        # A job whose caller left has nobody to read its error; mark it read.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        job = Job(request, deadline=now + request.timeout_seconds, enqueued_at=now, future=future)
        try:
            job.image_specs  # noqa: B018 - decodes the pictures now, so a bad one is a 400
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            future.cancel()
            raise BadJob(f"pictures: not a readable picture ({exc})") from None
        if request.stream:
            previews: asyncio.Queue[asyncio.Task[PartialImage] | None] = asyncio.Queue()
            future.add_done_callback(lambda _: previews.put_nowait(None))
            job.previews = previews
        self._waiting.append(job)
        self._metrics.queue_depth.set(len(self._waiting))
        self._wakeup.set()
        return job

    def _check_pictures(self, request: JobRequest) -> None:
        """A generator takes no pictures, an editor one to its `max_pictures`."""
        count, most = len(request.pictures), self.kind.max_pictures
        if self.kind.task == "generate" and count:
            raise BadJob(f"pictures: {self.model} makes images from text and takes none")
        if self.kind.task == "edit" and not 1 <= count <= most:
            raise BadJob(f"pictures: {self.model} edits 1 to {most} pictures, got {count}")

    def cancel(self, job: Job, error: WorkerError) -> None:
        """Stop `job` within one denoising step, or drop it if it has not started."""
        job.cancelled.set()
        if job in self._waiting:
            self._waiting.remove(job)
            self._metrics.queue_depth.set(len(self._waiting))
            self._fail(job, error)

    async def stop(self) -> None:
        self.drain()
        for job in [*self._waiting, *self._running]:
            job.cancelled.set()
        if self._consumer is not None:
            self._consumer.cancel()
        for job in list(self._waiting):
            self._fail(job, NotReady("Worker shutting down"))
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _consume(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._run(self._take_batch())

    def _take_batch(self) -> list[Job]:
        """The head job, and the waiting jobs after it that fit in its pipeline calls; the
        others keep their order."""
        assert self._engine is not None
        head = self._waiting.popleft()
        key = head.image_specs[0].batch_key
        room = self._engine.batch_size(head.image_specs[0]) - len(head.image_specs)
        batch, rest = [head], deque[Job]()
        for job in self._waiting:
            if job.image_specs[0].batch_key == key and len(job.image_specs) <= room:
                batch.append(job)
                room -= len(job.image_specs)
            else:
                rest.append(job)
        self._waiting = rest
        self._metrics.queue_depth.set(len(self._waiting))
        return batch

    async def _run(self, batch: list[Job]) -> None:
        for job in batch:
            if job.should_stop():
                self._fail(job, job.stop_error())
        jobs = [job for job in batch if not job.future.done()]
        if not jobs:
            return
        assert self._engine is not None
        engine = self._engine
        started = time.monotonic()
        for job in jobs:
            self._metrics.queue_wait.observe(started - job.enqueued_at)
        self._running = jobs
        self._metrics.running_jobs.set(len(jobs))
        self._metrics.capacity.set(self.capacity)
        self._metrics.busy.set(1)
        encodes: dict[Job, list[asyncio.Task[str]]] = {job: [] for job in jobs}
        images = [(job, spec) for job in jobs for spec in job.image_specs]
        size = engine.batch_size(images[0][1])
        if len(jobs) > 1:
            first = images[0][1]
            logger.info(
                "batch: %d jobs, %d images %dx%d, %d steps, up to %d a call",
                len(jobs),
                len(images),
                first.width,
                first.height,
                first.num_inference_steps,
                size,
            )
        try:
            for offset in range(0, len(images), size):
                call = images[offset : offset + size]
                made = await self._call(engine, call)
                if made is None:
                    continue
                for (job, _), image in zip(call, made, strict=True):
                    if not job.future.done():
                        task = asyncio.create_task(
                            asyncio.to_thread(encode_b64, image, job.request)
                        )
                        encodes[job].append(task)
        except Exception as exc:
            logger.exception("batch of %d job(s) failed", len(jobs))
            for job in jobs:
                self._fail(job, InferenceFailed(_describe(exc)))
            await self.on_gpu_thread(engine.release_memory)
        finally:
            self._running = []
            self._metrics.running_jobs.set(0)
            self._metrics.capacity.set(self.capacity)
            self._metrics.busy.set(0)
        for job, tasks in encodes.items():
            if job.future.done():
                for task in tasks:
                    task.cancel()
                continue
            finishing = asyncio.create_task(self._finish(job, tasks, started))
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)

    async def _call(
        self, engine: ImageEngine, call: list[tuple[Job, ImageSpec]]
    ) -> list[Image.Image] | None:
        """One pipeline call; None when it stopped. A job that must stop is answered within
        one step while the others go on; the call stops when every job in it must."""
        loop = asyncio.get_running_loop()
        jobs = list(dict.fromkeys(job for job, _ in call if not job.future.done()))
        if not jobs:
            return None
        stopped: set[Job] = set()

        def should_stop() -> bool:
            for job in jobs:
                if job not in stopped and job.should_stop():
                    stopped.add(job)
                    loop.call_soon_threadsafe(self._fail, job, job.stop_error())
            return len(stopped) == len(jobs)

        def on_preview(position: int, index: int, image: Image.Image) -> None:
            job, spec = call[position]
            loop.call_soon_threadsafe(self._preview, job, job.image_specs.index(spec), index, image)

        specs = [spec for _, spec in call]
        previewing = any(job.previews is not None for job in jobs)
        self._metrics.batch_images.observe(len(specs))
        started = time.monotonic()
        try:
            return await self.on_gpu_thread(
                lambda: engine.generate_batch(
                    specs, should_stop, on_preview if previewing else None
                )
            )
        except StopRequested:
            return None
        finally:
            self._metrics.busy_seconds.inc(time.monotonic() - started)
            for job in stopped:
                self._fail(job, job.stop_error())

    def _preview(self, job: Job, image_index: int, index: int, image: Image.Image) -> None:
        """Encode a streamed job's preview beside the GPU thread and queue it in order."""
        if job.previews is None or job.future.done():
            return

        async def encoded() -> PartialImage:
            b64 = await asyncio.to_thread(encode_b64, image, job.request)
            return PartialImage(image_index=image_index, partial_image_index=index, b64=b64)

        job.previews.put_nowait(asyncio.create_task(encoded()))

    async def _finish(self, job: Job, encodes: list[asyncio.Task[str]], started: float) -> None:
        try:
            files = await asyncio.gather(*encodes)
        except Exception as exc:
            logger.exception("job %s: image encoding failed", job.request.job_id)
            self._fail(job, InferenceFailed(f"image encoding failed: {exc}"))
            return
        finished = time.monotonic()
        result = JobResult(
            job_id=job.request.job_id,
            images=[
                GeneratedImage(seed=seed, b64=data)
                for seed, data in zip(job.request.seeds, files, strict=True)
            ],
            queue_seconds=started - job.enqueued_at,
            run_seconds=finished - started,
        )
        self._metrics.job_duration.observe(finished - started)
        self._metrics.images_generated.inc(len(files))
        logger.info(
            "job %s done: %d image(s) %dx%d, %d steps, waited %.2f s, ran %.2f s",
            job.request.job_id,
            len(files),
            job.image_specs[0].width,
            job.image_specs[0].height,
            job.request.num_inference_steps,
            result.queue_seconds,
            result.run_seconds,
        )
        if not job.future.done():
            job.future.set_result(result)

    def _fail(self, job: Job, error: WorkerError) -> None:
        if job.future.done():
            return
        self._metrics.job_failures.labels(error.reason).inc()
        logger.info("job %s ended: %s", job.request.job_id, error.detail)
        job.future.set_exception(error)


def _describe(exc: Exception) -> str:
    # torch is loaded only by the real engine; a simulated one cannot run out of GPU memory.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return "GPU out of memory"
    return f"{type(exc).__name__}: {exc}"
