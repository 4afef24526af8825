"""One connection pool per worker, behind the router's one httpx client.

With one pool for all workers, each request either pays for a new TCP connection (when only
a few idle ones are kept) or scans every kept connection for one to its worker (when all
are kept). `benchmarks/poll_cost.py` measured the router's load
polling through the former client at 1.06-1.36 ms of CPU a poll, a whole core and 877-917 of
the 1000 polls a second asked for with 500 workers; with a pool per worker, 0.44-0.54 ms a
poll and 53-54 % of a core, every poll done. A worker that leaves discovery keeps its pool until
its last request ends: a draining worker still answers the jobs it accepted.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import httpx

Origin = tuple[str, str, int | None]


def origin_of(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port)


@dataclass
class _Pool:
    transport: httpx.AsyncHTTPTransport
    active: int = 0
    wanted: bool = True


class PerWorkerTransport(httpx.AsyncBaseTransport):
    """Routes each request to the pool of its origin (scheme, host, port), made on first use."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        # One TLS context for all pools: httpx builds one per transport otherwise, loading
        # the CA bundle each time (18 ms of CPU and about 1 MB of native memory a worker).
        self._ssl_context = ssl.create_default_context()
        self._pools: dict[Origin, _Pool] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def origins(self) -> set[Origin]:
        return set(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = origin_of(request.url)
        pool = self._pools.get(origin)
        if pool is None:
            pool = _Pool(httpx.AsyncHTTPTransport(verify=self._ssl_context, limits=self._limits))
            self._pools[origin] = pool
        pool.active += 1
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            self._release(origin, pool)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, lambda: self._release(origin, pool))
        return response

    def keep_only(self, urls: Iterable[str]) -> None:
        """The workers now are these: pools of the others close once no request uses them."""
        wanted = {origin_of(httpx.URL(url)) for url in urls}
        for origin, pool in list(self._pools.items()):
            pool.wanted = origin in wanted
            if not pool.wanted and pool.active == 0:
                self._close(origin, pool)

    async def aclose(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            await pool.transport.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _release(self, origin: Origin, pool: _Pool) -> None:
        pool.active -= 1
        if pool.active == 0 and not pool.wanted:
            self._close(origin, pool)

    def _close(self, origin: Origin, pool: _Pool) -> None:
        if self._pools.get(origin) is pool:
            del self._pools[origin]
        task = asyncio.get_running_loop().create_task(pool.transport.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed (httpx closes every response,
    read to the end or not)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
