"""What the router's load polling costs as workers grow: one shared httpx pool against one
pool per worker (qwen_image_router/outbound/transport.py), same run, same machine.

A second process serves GET /internal/v1/load on --workers loopback ports (one uvicorn
server, one socket per worker). In this process the router's real LoadPoller polls them
every --interval seconds for --seconds, through each HTTP client in turn. Printed per worker
count and client: polls done per second (against the workers / interval asked for), CPU of
this process (% of one core), CPU per poll, how many workers' reports are fresher than
the router's LOAD_STALE_AFTER_SECONDS default (3 s) at the end, and the CPU per worker of
the first round (new connections and pools: what a wave of new workers costs).

    .venv/bin/python benchmarks/poll_cost.py                     # 50, 200, 500 workers
    .venv/bin/python benchmarks/poll_cost.py --workers 100 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qwen_image_common.contract import LOAD_PATH, WorkerLoad
from qwen_image_router.load_poller import LoadPoller
from qwen_image_router.outbound.transport import PerWorkerTransport
from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry

STALE_AFTER_SECONDS = 3.0
KEEPALIVE_SECONDS = 2.0
LOAD = WorkerLoad(ready=True, running=0, waiting=0, capacity=5).model_dump()


def shared_pool() -> httpx.AsyncClient:
    """The router's client before outbound/transport.py: one pool, 64 idle connections kept."""
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_SECONDS
    )
    return httpx.AsyncClient(limits=limits, trust_env=False)


def pool_per_worker() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, keepalive_expiry=KEEPALIVE_SECONDS)
    return httpx.AsyncClient(transport=PerWorkerTransport(limits), trust_env=False)


CLIENTS: dict[str, Callable[[], httpx.AsyncClient]] = {
    "shared pool": shared_pool,
    "pool per worker": pool_per_worker,
}


def serve(ports: list[int]) -> None:
    async def load(_request: Request) -> Response:
        return JSONResponse(LOAD)

    app = Starlette(routes=[Route(LOAD_PATH, load)])
    sockets = []
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sockets.append(sock)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    print("serving", flush=True)
    asyncio.run(uvicorn.Server(config).serve(sockets=sockets))


def free_ports(count: int) -> list[int]:
    held = [socket.socket() for _ in range(count)]
    for sock in held:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in held]
    for sock in held:
        sock.close()
    return ports


async def measure(
    ports: list[int], make_client: Callable[[], httpx.AsyncClient], interval: float, seconds: float
) -> dict[str, float]:
    registry = WorkerRegistry()
    registry.replace([WorkerEndpoint(f"w{port}", f"http://127.0.0.1:{port}") for port in ports])
    polls = 0

    async def count(_response: httpx.Response) -> None:
        nonlocal polls
        polls += 1

    async with make_client() as http:
        http.event_hooks["response"].append(count)
        poller = LoadPoller(registry, http, interval, timeout=2.0, block_seconds=1.0)
        cpu = time.process_time()
        await poller.start()  # polls every worker once: new connections (and pools)
        first_round = time.process_time() - cpu
        await asyncio.sleep(2 * interval + 1)  # connections made, rhythm settled
        polls, cpu, wall = 0, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        now = registry.now()
        fresh = sum(
            1
            for worker in registry.workers()
            if worker.load_at is not None and now - worker.load_at < STALE_AFTER_SECONDS
        )
        await poller.stop()
    return {
        "polls_per_s": polls / wall,
        "cpu_share": cpu / wall,
        "cpu_ms_per_poll": 1000 * cpu / max(polls, 1),
        "fresh": fresh,
        "first_round_ms_per_worker": 1000 * first_round / len(ports),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="50,200,500", help="worker counts, e.g. 50,200")
    parser.add_argument("--interval", type=float, default=0.5, help="LOAD_POLL_INTERVAL_SECONDS")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per run")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve([int(port) for port in args.serve.split(",")])
        return 0
    counts = [int(count) for count in args.workers.split(",")]
    ports = free_ports(max(counts))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", ",".join(map(str, ports))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "serving"
        time.sleep(1)
        print(f"load polls every {args.interval} s, {args.seconds} s measured per run")
        for count in counts:
            results = {
                name: asyncio.run(measure(ports[:count], make, args.interval, args.seconds))
                for name, make in CLIENTS.items()
            }
            for name, r in results.items():
                print(
                    f"{count:4d} workers, {name:15s}: {r['polls_per_s']:7.1f} polls/s "
                    f"(asked {count / args.interval:.0f}), CPU {100 * r['cpu_share']:5.1f} % "
                    f"of a core, {r['cpu_ms_per_poll']:.2f} ms a poll, "
                    f"{r['fresh']:.0f}/{count} reports fresh; first round "
                    f"{r['first_round_ms_per_worker']:.2f} ms a worker"
                )
            old, new = (results[name]["cpu_ms_per_poll"] for name in CLIENTS)
            print(
                f"{count:4d} workers: CPU a poll, shared pool / pool per worker: {old / new:.1f}x"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
