"""Churn at scale: how fast the router's view of 500 simulated workers follows the cluster.

A real control plane (tests/support/control_plane.py: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler) with kwok playing the kubelets of simulated GPU
nodes. The chart is installed; the router runs as a process with the chart's
ServiceAccount token, as in the `k8s` tests. Then, in waves of --wave pods:

  create   the worker Deployment is scaled up by a wave (pods created, scheduled, made
           Running and Ready by kwok) until --pods run;
  unready  a wave of pods turns not-ready (their Ready condition patched to False, as a
           kubelet does when the readiness probe fails), then
  ready    the same wave turns ready again;
  delete   the Deployment is scaled down by a wave until none is left.

For each wave three moments are taken: the API change (the last write acknowledged),
the EndpointSlices showing it (a watch of this script's own), and the router's /metrics
showing the same worker set (polled every --poll-ms). "cluster" is change -> slices (the
controllers' and kwok's part), "router" is slices -> router (discovery's part).
The router's RSS and CPU are read from /proc throughout; its CPU in each churn phase is
put next to 10 s stretches without changes: no workers (before and after) and all
--pods workers (steady state), with the same /metrics polling.

    .venv/bin/python benchmarks/k8s_churn.py                  # 500 pods, waves of 100
    .venv/bin/python benchmarks/k8s_churn.py --pods 100 --wave 50 --json out.json
    .venv/bin/python benchmarks/k8s_churn.py --router-env LOAD_POLL_INTERVAL_SECONDS=30 \
        --router-env LOAD_STALE_AFTER_SECONDS=60        # discovery without steady polling
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPUS_PER_NODE = 64
WORKER_SELECTOR = "app.kubernetes.io/component=worker"
IDLE_SECONDS = 10.0


@dataclass
class Wave:
    phase: str
    pods_after: int
    write_seconds: float  # from the first write to the last one acknowledged
    cluster_seconds: float  # last write -> EndpointSlices show the change
    router_seconds: float  # EndpointSlices show it -> the router's /metrics shows it

    @property
    def total_seconds(self) -> float:
        return self.cluster_seconds + self.router_seconds


@dataclass
class Usage:
    """The router process's RSS and CPU, sampled from /proc."""

    pid: int
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (t, rss, cpu s)

    def sample(self) -> tuple[float, int, float]:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        with open(f"/proc/{self.pid}/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        entry = (time.monotonic(), rss_kib * 1024, cpu)
        self.samples.append(entry)
        return entry


class SliceWatch:
    """Follows the worker Service's EndpointSlices; remembers when each ready set began."""

    def __init__(self, api: Any, namespace: str, service: str) -> None:
        from kubernetes import client, watch

        self._api = client.DiscoveryV1Api(api)
        self._watch = watch.Watch()
        self._namespace = namespace
        self._selector = f"kubernetes.io/service-name={service}"
        self._slices: dict[str, Any] = {}
        self._stopping = threading.Event()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self.ready: frozenset[str] = frozenset()
        self.since = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SliceWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._watch.stop()

    def view(self) -> tuple[frozenset[str], float]:
        with self._lock:
            return self.ready, self.since

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as error:  # the API server going away at the end is no failure
            if not self._stopping.is_set():
                self.failure = error

    def _follow(self) -> None:
        from qwen_image_router.discovery.kubernetes import ready_endpoints

        # Raw JSON, as the router reads it: the API's own field names.
        listed: Any = self._api.list_namespaced_endpoint_slice(
            self._namespace, label_selector=self._selector, _preload_content=False
        )
        body = json.loads(listed.data)
        self._slices = {s["metadata"]["name"]: s for s in body["items"]}
        self._update(ready_endpoints)
        for event in self._watch.stream(
            self._api.list_namespaced_endpoint_slice,
            self._namespace,
            label_selector=self._selector,
            resource_version=body["metadata"]["resourceVersion"],
            _preload_content=False,
        ):
            obj = event["raw_object"]
            if event["type"] == "DELETED":
                self._slices.pop(obj["metadata"]["name"], None)
            else:
                self._slices[obj["metadata"]["name"]] = obj
            self._update(ready_endpoints)

    def _update(self, ready_endpoints: Callable[..., Any]) -> None:
        # The router's own rule for which endpoints are workers, so both sides count alike.
        ready = frozenset(e.name for e in ready_endpoints(self._slices.values(), "http"))
        with self._lock:
            if ready != self.ready:
                self.ready, self.since = ready, time.monotonic()


@contextmanager
def sampling(usage: Usage, interval: float = 0.2) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            usage.sample()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description="Churn of simulated workers; router view lag.")
    parser.add_argument("--pods", type=int, default=500, help="simulated workers at the peak")
    parser.add_argument("--wave", type=int, default=100, help="pods changed per wave")
    parser.add_argument("--poll-ms", type=int, default=50, help="router /metrics polling period")
    parser.add_argument(
        "--controller-qps", type=int, default=200, help="API rate limit of the controllers"
    )
    parser.add_argument(
        "--router-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra router setting, e.g. LOAD_POLL_INTERVAL_SECONDS=30 (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.path.insert(0, str(REPO_ROOT / "tests" / "k8s"))
    workdir = Path(tempfile.mkdtemp(prefix="qwen-image-churn-"))
    try:
        report = run(args, workdir)
    finally:
        if args.keep:
            print(f"work folder and logs: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    # From tests/ (put on sys.path by main): the same control plane and helpers as the tests.
    from k8s_helpers import (
        WORKER_DEPLOYMENT,
        WORKER_SERVICE,
        RouterProcess,
        helm_install,
        router_kubeconfig,
    )
    from kubernetes import client

    from support.control_plane import ControlPlane
    from support.processes import wait_until

    plane = ControlPlane(workdir).start()
    router: RouterProcess | None = None
    try:
        plane.start_controllers(
            client_qps=args.controller_qps, client_burst=2 * args.controller_qps
        )
        nodes = -(-args.pods // GPUS_PER_NODE)
        for index in range(nodes):
            plane.add_kwok_node(
                f"gpu-node-{index}",
                gpus=GPUS_PER_NODE,
                cpu="1k",
                memory="16Ti",
                pods=GPUS_PER_NODE + 16,
                labels={"nvidia.com/gpu.product": GPU_PRODUCT},
            )
        namespace = "churn"
        admin = plane.api_client()
        core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        helm_install(
            plane,
            namespace,
            {
                "imageStorage": {"persistence": {"enabled": False}},
                "router": {"replicaCount": 0},
                "worker": {
                    "replicaCount": 0,
                    "nodeSelector": {"nvidia.com/gpu.product": GPU_PRODUCT},
                },
            },
        )
        router_env = dict(item.split("=", 1) for item in args.router_env)
        kubeconfig = router_kubeconfig(plane, namespace, workdir)
        router = RouterProcess(workdir, kubeconfig, namespace, **router_env)
        router.start()
        usage = Usage(router.service.pid)
        slices = SliceWatch(admin, namespace, WORKER_SERVICE).start()
        poll = args.poll_ms / 1000

        def settle(change_done: float, expected: int, write_seconds: float, phase: str) -> Wave:
            """Wait until slices and router agree on `expected` workers; time both."""
            deadline = change_done + 600
            while time.monotonic() < deadline:
                if slices.failure is not None:
                    raise RuntimeError("the EndpointSlice watch failed") from slices.failure
                ready, since = slices.view()
                if len(ready) == expected and router.workers() == set(ready):
                    seen = time.monotonic()
                    return Wave(
                        phase,
                        len(ready),
                        round(write_seconds, 3),
                        round(max(0.0, since - change_done), 3),
                        round(seen - max(since, change_done), 3),
                    )
                time.sleep(poll)
            raise RuntimeError(f"{phase}: no agreement on {expected} workers within 600 s")

        def idle(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                router.workers()
                time.sleep(poll)

        def scale(replicas: int) -> tuple[float, float]:
            start = time.monotonic()
            apps.patch_namespaced_deployment_scale(
                WORKER_DEPLOYMENT, namespace, {"spec": {"replicas": replicas}}
            )
            done = time.monotonic()
            return done - start, done

        def set_ready(names: list[str], ready: bool) -> tuple[float, float]:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            status = "True" if ready else "False"
            body = {
                "status": {
                    "conditions": [
                        {"type": "Ready", "status": status, "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                    ]
                }
            }
            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(
                    pool.map(lambda n: core.patch_namespaced_pod_status(n, namespace, body), names)
                )
            done = time.monotonic()
            return done - start, done

        waves: list[Wave] = []
        cpu: dict[str, dict[str, float]] = {}

        @contextmanager
        def stretch(name: str) -> Iterator[None]:
            """Record the router's CPU over the block, as % of one core."""
            t0, cpu0 = time.monotonic(), usage.sample()[2]
            yield
            seconds, used = time.monotonic() - t0, usage.sample()[2] - cpu0
            cpu[name] = {
                "seconds": round(seconds, 1),
                "cpu_seconds": round(used, 2),
                "percent": round(100 * used / seconds, 1),
            }

        with sampling(usage):
            start_rss = usage.sample()[1]
            with stretch("idle, no workers"):
                idle(IDLE_SECONDS)
            with stretch("churn: create"):
                count = 0
                while count < args.pods:
                    count = min(args.pods, count + args.wave)
                    write, done = scale(count)
                    waves.append(settle(done, count, write, "create"))
            with stretch(f"steady, {args.pods} workers"):
                idle(IDLE_SECONDS)
            with stretch("churn: unready/ready"):
                pods = sorted(router.workers())
                for offset in range(0, len(pods), args.wave):
                    chunk = pods[offset : offset + args.wave]
                    write, done = set_ready(chunk, False)
                    waves.append(settle(done, len(pods) - len(chunk), write, "unready"))
                    write, done = set_ready(chunk, True)
                    waves.append(settle(done, len(pods), write, "ready"))
            with stretch("churn: delete"):
                while count > 0:
                    count = max(0, count - args.wave)
                    write, done = scale(count)
                    waves.append(settle(done, count, write, "delete"))
                wait_until(
                    lambda: (
                        not core.list_namespaced_pod(
                            namespace, label_selector=WORKER_SELECTOR
                        ).items
                    ),
                    120,
                    "the deleted pods to go",
                )
            with stretch("idle, no workers, after"):
                idle(IDLE_SECONDS)
            end_rss = usage.sample()[1]
        slices.stop()
        peak_rss = max(rss for _, rss, _ in usage.samples)
        mib = 1024 * 1024
        rss = {"start": start_rss / mib, "peak": peak_rss / mib, "end": end_rss / mib}
        report = summarize(args, waves, rss, cpu)
        print_report(report)
        return report
    finally:
        if router is not None:
            router.stop()
        plane.stop()


def summarize(
    args: argparse.Namespace,
    waves: list[Wave],
    rss_mib: dict[str, float],
    cpu: dict[str, dict[str, float]],
) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for phase in ("create", "unready", "ready", "delete"):
        chosen = [w for w in waves if w.phase == phase]
        phases[phase] = {
            "waves": len(chosen),
            "router_median_s": round(statistics.median(w.router_seconds for w in chosen), 3),
            "router_max_s": round(max(w.router_seconds for w in chosen), 3),
            "cluster_median_s": round(statistics.median(w.cluster_seconds for w in chosen), 3),
            "total_max_s": round(max(w.total_seconds for w in chosen), 3),
        }
    return {
        "pods": args.pods,
        "wave": args.wave,
        "poll_ms": args.poll_ms,
        "controller_qps": args.controller_qps,
        "router_env": args.router_env,
        "cpus": os.cpu_count(),
        "waves": [asdict(w) | {"total_seconds": round(w.total_seconds, 3)} for w in waves],
        "phases": phases,
        "router_rss_mib": {name: round(value, 1) for name, value in rss_mib.items()},
        "router_cpu": cpu,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nchurn of {report['pods']} simulated workers in waves of {report['wave']} "
        f"({report['cpus']} CPUs, /metrics polled every {report['poll_ms']} ms, "
        f"router settings: {' '.join(report['router_env']) or 'defaults'})"
    )
    print(
        f"{'phase':8} {'pods':>5} {'write s':>8} {'cluster s':>10} {'router s':>9} {'total s':>8}"
    )
    for wave in report["waves"]:
        print(
            f"{wave['phase']:8} {wave['pods_after']:>5} {wave['write_seconds']:>8.3f} "
            f"{wave['cluster_seconds']:>10.3f} {wave['router_seconds']:>9.3f} "
            f"{wave['total_seconds']:>8.3f}"
        )
    print("\nrouter lag (EndpointSlices -> router /metrics), per phase:")
    for phase, figures in report["phases"].items():
        print(
            f"  {phase:8} median {figures['router_median_s']:.3f} s, "
            f"max {figures['router_max_s']:.3f} s; API change -> router max "
            f"{figures['total_max_s']:.3f} s"
        )
    rss = report["router_rss_mib"]
    print(f"router RSS: {rss['start']} MiB before, {rss['peak']} MiB peak, {rss['end']} MiB after")
    print("router CPU (% of one core; /metrics polled throughout):")
    for name, figures in report["router_cpu"].items():
        print(
            f"  {name:26} {figures['percent']:>6.1f} %  "
            f"({figures['cpu_seconds']} CPU s in {figures['seconds']} s)"
        )


if __name__ == "__main__":
    sys.exit(main())
