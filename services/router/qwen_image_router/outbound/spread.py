"""One request's images over several idle workers: the shares, running them all or none,
and their answers put back together in the request's order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from qwen_image_common.contract import JobRequest, JobResult, PartialImage

T = TypeVar("T")


class EventStream(Protocol):
    """A streamed job's events: previews, then the result; `aclose` in every case."""

    async def next_event(self) -> PartialImage | JobResult: ...

    async def aclose(self) -> None: ...


def split(job: JobRequest, workers: int) -> list[JobRequest]:
    """The job as up to `workers` jobs of consecutive seeds, sizes differing by one at most."""
    count = max(1, min(workers, len(job.seeds)))
    if count == 1:
        return [job]
    base, extra = divmod(len(job.seeds), count)
    shares, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        seeds = job.seeds[start : start + size]
        shares.append(job.model_copy(update={"job_id": f"{job.job_id}-{index}", "seeds": seeds}))
        start += size
    return shares


async def all_or_none(
    work: Sequence[Coroutine[Any, Any, T]],
    discard: Callable[[T], Awaitable[None]] | None = None,
) -> list[T]:
    """Every coroutine's result, in order, run side by side. The first failure (or this
    call's own cancellation) cancels the others and waits for them; `discard` gets the
    results that were made for nothing."""
    # Started in order: each share's send counts against its worker before the next share
    # is placed, so the next choice sees that worker busy.
    tasks = [asyncio.create_task(coroutine) for coroutine in work]
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if discard is not None:
            for task in tasks:
                if not task.cancelled() and task.exception() is None:
                    await discard(task.result())
        raise
    return [task.result() for task in tasks]


def merged(job: JobRequest, parts: Sequence[JobResult]) -> JobResult:
    return JobResult(
        job_id=job.job_id,
        images=[image for part in parts for image in part.images],
        queue_seconds=max(part.queue_seconds for part in parts),
        run_seconds=max(part.run_seconds for part in parts),
    )


class MergedStream:
    """The shares' streams as one: previews as they come (image_index counted over the
    whole request), then the result once every share made its images. A share's error
    ends it; closing it closes every share's stream, which cancels their jobs."""

    def __init__(
        self, job: JobRequest, shares: Sequence[JobRequest], streams: Sequence[EventStream]
    ):
        self._job = job
        self._streams = list(streams)
        self._offsets = [sum(len(share.seeds) for share in shares[:i]) for i in range(len(shares))]
        self._events: asyncio.Queue[tuple[int, PartialImage | JobResult | Exception]] = (
            asyncio.Queue()
        )
        self._results: dict[int, JobResult] = {}
        self._readers = [
            asyncio.create_task(self._read(index, stream))
            for index, stream in enumerate(self._streams)
        ]

    async def next_event(self) -> PartialImage | JobResult:
        while True:
            index, event = await self._events.get()
            if isinstance(event, Exception):
                raise event
            if isinstance(event, PartialImage):
                offset = self._offsets[index]
                return event.model_copy(update={"image_index": event.image_index + offset})
            self._results[index] = event
            if len(self._results) == len(self._streams):
                return merged(self._job, [self._results[i] for i in range(len(self._streams))])

    async def aclose(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for stream in self._streams:
            await stream.aclose()

    async def _read(self, index: int, stream: EventStream) -> None:
        try:
            while True:
                event = await stream.next_event()
                self._events.put_nowait((index, event))
                if isinstance(event, JobResult):
                    return
        except Exception as error:
            self._events.put_nowait((index, error))
