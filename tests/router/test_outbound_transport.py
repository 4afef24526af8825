"""One connection pool per worker, against real HTTP servers: made on first use, reused,
closed when the worker leaves, but never under a request still running."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import httpx
import pytest
from router_fakes import UNREACHABLE_URL, FakeWorker, serve
from test_outbound_client import job

from qwen_image_common.contract import JOBS_PATH, LOAD_PATH
from qwen_image_router.outbound.transport import PerWorkerTransport, origin_of


def client(transport: PerWorkerTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, trust_env=False)


def origin(url: str) -> tuple[str, str, int | None]:
    return origin_of(httpx.URL(url))


async def test_each_worker_gets_a_pool_and_keeps_its_connection() -> None:
    a, b = FakeWorker(), FakeWorker()
    connects: list[str] = []

    async def trace(event: str, _info: dict[str, object]) -> None:
        if event == "connection.connect_tcp.complete":
            connects.append(event)

    transport = PerWorkerTransport(httpx.Limits(keepalive_expiry=5.0))
    async with serve(a.app) as url_a, serve(b.app) as url_b, client(transport) as http:
        for _ in range(3):
            for url in (url_a, url_b):
                response = await http.get(url + LOAD_PATH, extensions={"trace": trace})
                assert response.status_code == 200
        assert transport.origins == {origin(url_a), origin(url_b)}
    assert (a.load_polls, b.load_polls) == (3, 3)
    # One TCP connection per worker, reused by its three requests.
    assert len(connects) == 2


async def test_a_worker_that_left_loses_its_pool_once_idle() -> None:
    a, b = FakeWorker(), FakeWorker()
    transport = PerWorkerTransport(httpx.Limits())
    async with serve(a.app) as url_a, serve(b.app) as url_b, client(transport) as http:
        for url in (url_a, url_b):
            await http.get(url + LOAD_PATH)
        transport.keep_only([url_a])
        assert transport.origins == {origin(url_a)}
        # A failed connection releases its pool too.
        with pytest.raises(httpx.ConnectError):
            await http.get(UNREACHABLE_URL + LOAD_PATH)
        transport.keep_only([url_a])
        assert transport.origins == {origin(url_a)}


async def test_a_leaving_workers_running_job_finishes_on_its_pool() -> None:
    """A draining worker leaves discovery but answers the jobs it accepted."""
    worker = FakeWorker()
    worker.hold = True
    transport = PerWorkerTransport(httpx.Limits())
    async with serve(worker.app) as url, client(transport) as http:
        running = asyncio.create_task(
            http.post(url + JOBS_PATH, json=job().model_dump(mode="json"))
        )
        await worker.job_arrived.wait()
        transport.keep_only([])
        assert transport.origins == {origin(url)}  # still in use
        worker.release.set()
        response = await running
        assert response.status_code == 200 and response.json()["images"]
        assert transport.origins == set()  # closed with its last request


async def test_a_new_workers_pool_loads_no_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx gives each transport a TLS context of its own, loading the CA bundle (18 ms and
    about 1 MB a worker: 500 new workers cost the router 400 MB in a churn run). The pools
    share one."""
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args)
        load(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    workers = [FakeWorker() for _ in range(3)]
    transport = PerWorkerTransport(httpx.Limits())
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(w.app)) for w in workers]
        http = await stack.enter_async_context(client(transport))
        for url in urls:
            assert (await http.get(url + LOAD_PATH)).status_code == 200
        assert len(transport.origins) == 3
    assert loads == []
    # What the spy counts: a transport of httpx's own loads the bundle once.
    await httpx.AsyncHTTPTransport().aclose()
    assert len(loads) == 1
