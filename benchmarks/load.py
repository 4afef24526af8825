"""Open-loop load on the router: Poisson arrivals, every request's outcome and latency.

Requests arrive at --rate per second on average (exponential gaps, seeded), for --duration
seconds or --max-requests, whichever ends first, whether or not earlier ones have been
answered: that is how independent clients behave, and it is what exposes queueing. Each
request picks a kind from the mix by weight and a router at random. Then it waits for the
stragglers, at most TASK_TIMEOUT plus a margin: a request still unanswered then, or one
whose connection failed, is `lost` (it got no answer at all; it must be 0).

Against a stack of its own (the default): --workers real worker processes with the
simulated engine (MODEL_PATH=simulated, SIMULATED_STEP_SECONDS=--step-seconds) and
--routers router processes that share them, all on 127.0.0.1. Or against --url (repeat it
for several routers). Loopback only.

    .venv/bin/python benchmarks/load.py --workers 4 --rate 3 --duration 30
    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:6002 --rate 1 --duration 60 \
        --mix '1:{"size": "512x512", "num_inference_steps": 20}'
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

GENERATIONS = "/v1/images/generations"
# Kinds of request and their weights: mostly small and quick, some large, some with n=2.
DEFAULT_MIX: list[tuple[float, dict[str, Any]]] = [
    (5.0, {"size": "256x256", "num_inference_steps": 10}),
    (3.0, {"size": "512x512", "num_inference_steps": 30}),
    (2.0, {"size": "256x256", "num_inference_steps": 40, "n": 2}),
]
# A straggler may take TASK_TIMEOUT; past it plus this margin it counts as lost.
ANSWER_MARGIN_SECONDS = 30.0
MAX_REQUESTS = 20_000


@dataclass
class Outcome:
    """One request: when it was sent, how long it took, and what came back."""

    sent_at: float
    kind: str  # ok | queue_full | timeout | inference_failed | ... | no_answer | bad_answer
    status: int | None
    latency: float | None
    images: int = 0


@dataclass
class LoadReport:
    offered_rate: float
    duration: float
    requests: int
    outcomes: Counter[str] = field(default_factory=Counter)
    ok_latencies: list[float] = field(default_factory=list)
    all_latencies: list[float] = field(default_factory=list)
    images: int = 0
    lost: int = 0
    window: float = 0.0  # first send to last answer

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        data = sorted(self.ok_latencies if values is None else values)
        if not data:
            return math.nan
        return data[min(len(data) - 1, max(0, math.ceil(q / 100 * len(data)) - 1))]

    def summary(self) -> dict[str, Any]:
        ok = self.outcomes["ok"]
        return {
            "requests": self.requests,
            "offered_rate": self.offered_rate,
            "duration": self.duration,
            "ok": ok,
            "throughput_ok_per_s": ok / self.window if self.window else 0.0,
            "images_per_s": self.images / self.window if self.window else 0.0,
            "latency_ok_s": {f"p{q}": self.percentile(q) for q in (50, 90, 95, 99, 100)},
            "queue_full_rate": self.outcomes["queue_full"] / self.requests if self.requests else 0,
            "outcomes": dict(self.outcomes),
            "lost": self.lost,
        }

    def print(self) -> None:
        s = self.summary()
        print(
            f"requests: {self.requests} in {self.duration:.0f} s "
            f"(offered {self.offered_rate:.2f}/s)"
        )
        print(f"throughput: {s['throughput_ok_per_s']:.2f} ok/s, {s['images_per_s']:.2f} images/s")
        lat = s["latency_ok_s"]
        print("latency of ok answers (s): " + "  ".join(f"{k} {v:.2f}" for k, v in lat.items()))
        print(f"queue-full rate: {100 * s['queue_full_rate']:.1f} %")
        errors = {k: v for k, v in sorted(self.outcomes.items()) if k != "ok"}
        print(f"answers by kind: ok {self.outcomes['ok']}; errors {errors or 'none'}")
        print(f"lost: {self.lost}")


def parse_mix(items: list[str]) -> list[tuple[float, dict[str, Any]]]:
    """'WEIGHT:{json body fields}' items; the prompt is added per request."""
    mix = []
    for item in items:
        weight, _, body = item.partition(":")
        mix.append((float(weight), json.loads(body)))
    return mix


def _kind_of(status: int, body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        return f"http_{status}_no_detail"
    if detail == "Task queue is full":
        return "queue_full"
    if detail == "Task timeout":
        return "timeout"
    if detail.startswith("Inference failed"):
        return "inference_failed"
    if detail.startswith("Validation error"):
        return "validation"
    return f"http_{status}:{detail.split(':')[0][:40]}"


def _good_images(body: Any, fields: dict[str, Any]) -> int | None:
    """The number of images if the answer holds exactly what was asked, else None."""
    data = body.get("data") if isinstance(body, dict) else None
    n = int(fields.get("n", 1))
    if not isinstance(data, list) or len(data) != n:
        return None
    size = fields.get("size", "1024x1024")
    want = tuple(int(side) for side in size.split("x"))
    for item in data:
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if b64 is None:
            if not (isinstance(item, dict) and isinstance(item.get("url"), str)):
                return None
            continue
        with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
            if image.format != "PNG" or image.size != want:
                return None
    return n


async def _one(
    client: httpx.AsyncClient, url: str, fields: dict[str, Any], timeout: float, start: float
) -> Outcome:
    sent = time.monotonic()
    try:
        response = await client.post(url + GENERATIONS, json=fields, timeout=timeout)
    except httpx.HTTPError as exc:
        return Outcome(sent - start, f"no_answer:{type(exc).__name__}", None, None)
    latency = time.monotonic() - sent
    try:
        body = response.json()
    except ValueError:
        return Outcome(sent - start, "bad_answer", response.status_code, latency)
    if response.status_code != 200:
        return Outcome(
            sent - start, _kind_of(response.status_code, body), response.status_code, latency
        )
    images = await asyncio.to_thread(_good_images, body, fields)
    if images is None:
        return Outcome(sent - start, "bad_answer", 200, latency)
    return Outcome(sent - start, "ok", 200, latency, images)


async def run_load(
    urls: list[str],
    rate: float,
    duration: float,
    mix: list[tuple[float, dict[str, Any]]],
    task_timeout: float,
    seed: int = 1,
    max_requests: int = MAX_REQUESTS,
) -> LoadReport:
    """Send Poisson arrivals to `urls` and collect every outcome."""
    rng = random.Random(seed)
    weights = [weight for weight, _ in mix]
    answer_timeout = task_timeout + ANSWER_MARGIN_SECONDS
    tasks: list[asyncio.Task[Outcome]] = []
    # Idle connections are dropped well before the router's 5 s keep-alive ends, so no
    # request is sent on a connection the router is closing (a client-side race, not a loss).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        start = time.monotonic()
        at = 0.0
        while len(tasks) < max_requests:
            at += rng.expovariate(rate)
            if at >= duration:
                break
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            fields = dict(rng.choices([body for _, body in mix], weights)[0])
            fields.setdefault("prompt", f"load test request {len(tasks)}")
            fields.setdefault("seed", rng.randrange(2**31))
            url = rng.choice(urls)
            tasks.append(asyncio.create_task(_one(client, url, fields, answer_timeout, start)))
        # Every task ends by its own timeout; this bound only guards against a bug here.
        pending: set[asyncio.Task[Outcome]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=answer_timeout + 10)
        for task in pending:
            task.cancel()
        end = time.monotonic()
    report = LoadReport(offered_rate=rate, duration=duration, requests=len(tasks))
    last_answer = 0.0
    for task in tasks:
        if task in pending:
            report.outcomes["no_answer:unfinished"] += 1
            report.lost += 1
            continue
        outcome = task.result()
        report.outcomes[outcome.kind] += 1
        if outcome.latency is None:
            report.lost += 1
            continue
        report.all_latencies.append(outcome.latency)
        last_answer = max(last_answer, outcome.sent_at + outcome.latency)
        if outcome.kind == "ok":
            report.ok_latencies.append(outcome.latency)
            report.images += outcome.images
    report.window = last_answer if tasks else end - start
    return report


# ---------------------------------------------------------------------- a stack of its own


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.")):
        raise SystemExit(f"{url}: this benchmark drives loopback addresses only")
    return url.rstrip("/")


class LocalStack:
    """Worker and router processes of the real programs on 127.0.0.1, stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.worker_urls: list[str] = []
        self.router_urls: list[str] = []

    def _spawn(self, command: str, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        full_env = os.environ | {"LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"} | env
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"qwen_image_{command}"],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_workers(self, count: int, step_seconds: float, queue_size: int) -> None:
        for i in range(count):
            port = free_port()
            env = {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "MODEL_PATH": "simulated",
                "SIMULATED_STEP_SECONDS": str(step_seconds),
                "TASK_QUEUE_SIZE": str(queue_size),
                "WARMUP_STEPS": "1",
            }
            self._spawn("worker", f"worker-{i}", env)
            self.worker_urls.append(f"http://127.0.0.1:{port}")
        _wait_all([url + "/readyz" for url in self.worker_urls], 180, "workers")

    def start_routers(self, count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
        started = []
        urls = []
        for i in range(count):
            port = free_port()
            router_env = {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "DISCOVERY": "static",
                "WORKER_URLS": ",".join(self.worker_urls),
                "IMAGE_OUTPUT_DIR": str(self.log_dir / "images"),
                **env,
            }
            started.append(self._spawn("router", f"router-{len(self.router_urls) + i}", router_env))
            urls.append(f"http://127.0.0.1:{port}")
        _wait_all([url + "/readyz" for url in urls], 60, "routers")
        # Every router must see every worker before the load starts.
        for url in urls:
            _wait_until(lambda url=url: _ready_workers(url) == len(self.worker_urls), 30)
        self.router_urls = urls
        return started

    def stop(self, processes: list[subprocess.Popen[bytes]] | None = None) -> None:
        chosen = self.processes if processes is None else processes
        for process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in chosen:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = [p for p in self.processes if p not in chosen]


def _wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the stack")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_all(urls: list[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(urls)
    while waiting:
        waiting = [url for url in waiting if not _answers(url)]
        if waiting and time.monotonic() > deadline:
            raise SystemExit(f"{len(waiting)} {what} did not become ready, e.g. {waiting[0]}")
        if waiting:
            time.sleep(0.3)


def _ready_workers(router_url: str) -> int:
    try:
        text = httpx.get(router_url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith("qwen_image_router_ready_workers "):
            return int(float(line.split()[1]))
    return -1


def worker_busy_seconds(worker_urls: list[str]) -> float:
    """Sum of every worker's time in pipeline calls so far (qwen_image_worker_busy_seconds);
    a batch counts once, however many jobs share it."""
    total = 0.0
    for url in worker_urls:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith("qwen_image_worker_busy_seconds_total "):
                total += float(line.split()[1])
    return total


@contextlib.contextmanager
def local_stack(keep_logs: bool = False) -> Iterator[LocalStack]:
    with tempfile.TemporaryDirectory(prefix="qwen-image-load-") as folder:
        stack = LocalStack(Path(folder))
        try:
            yield stack
        finally:
            stack.stop()
            if keep_logs:
                print(f"logs were in {folder}", file=sys.stderr)


def mean_service_seconds(mix: list[tuple[float, dict[str, Any]]], step_seconds: float) -> float:
    """Expected simulated GPU time of one request of the mix: steps x images x step time."""
    total = sum(weight for weight, _ in mix)
    return (
        sum(
            weight / total * int(body.get("n", 1)) * int(body.get("num_inference_steps", 50))
            for weight, body in mix
        )
        * step_seconds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", default=[], help="router base URL (repeat)")
    parser.add_argument("--rate", type=float, default=None, help="arrivals per second")
    parser.add_argument(
        "--load",
        type=float,
        default=0.8,
        help="with a stack of its own and no --rate: offered load as a fraction "
        "of the workers' simulated capacity (default 0.8)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument(
        "--mix",
        action="append",
        default=[],
        help="WEIGHT:{json fields}, repeat for several kinds (default: a mix of "
        "256x256 and 512x512, 10-40 steps, n 1-2)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--task-queue-size", type=int, default=4)
    parser.add_argument("--task-timeout", type=float, default=60.0)
    parser.add_argument("--policy", default="least-loaded")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    mix = parse_mix(args.mix) if args.mix else DEFAULT_MIX
    if args.duration <= 0 or args.duration > 3600:
        raise SystemExit("--duration must be in (0, 3600] seconds")

    if args.url:
        urls = [_loopback(url) for url in args.url]
        if args.rate is None:
            raise SystemExit("--rate is needed with --url")
        report = asyncio.run(
            run_load(
                urls, args.rate, args.duration, mix, args.task_timeout, args.seed, args.max_requests
            )
        )
        report.print()
        extra: dict[str, Any] = {}
    else:
        with local_stack() as stack:
            stack.start_workers(args.workers, args.step_seconds, args.task_queue_size)
            stack.start_routers(
                args.routers,
                {"TASK_TIMEOUT": str(args.task_timeout), "SCHEDULING_POLICY": args.policy},
            )
            service = mean_service_seconds(mix, args.step_seconds)
            rate = args.rate or args.load * args.workers / service
            busy_before = worker_busy_seconds(stack.worker_urls)
            report = asyncio.run(
                run_load(
                    stack.router_urls,
                    rate,
                    args.duration,
                    mix,
                    args.task_timeout,
                    args.seed,
                    args.max_requests,
                )
            )
            busy = worker_busy_seconds(stack.worker_urls) - busy_before
            # Busy time over the capacity of the arrival window (the work served, which may
            # exceed it when accepted jobs finish after the window), and over the whole run.
            utilisation = busy / (args.workers * args.duration)
            busy_share = busy / (args.workers * report.window) if report.window else 0.0
            report.print()
            print(
                f"worker utilisation: {100 * utilisation:.1f} % of the arrival window's "
                f"capacity, busy {100 * busy_share:.1f} % of the time until the last answer "
                f"({args.workers} workers, mean simulated job {service:.2f} s)"
            )
            extra = {
                "utilisation": utilisation,
                "busy_share": busy_share,
                "workers": args.workers,
                "routers": args.routers,
                "policy": args.policy,
            }
    if args.json is not None:
        args.json.write_text(
            json.dumps(report.summary() | extra | {"args": vars(args)}, indent=2, default=str)
        )
    if report.lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
