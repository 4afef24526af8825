"""KubernetesDiscovery against a real HTTP server speaking the Kubernetes list/watch protocol.

Every test goes through a kubeconfig file pointing at the stub, so the client's real config
loading, bearer-token auth and HTTP stack run; the stub records each request it receives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from qwen_image_router.discovery.kubernetes import KubernetesDiscovery, describe_change
from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry
from support.k8s_api_stub import (
    EndpointSliceApiStub,
    RecordedRequest,
    endpoint,
    endpoint_slice,
    write_kubeconfig,
)

NAMESPACE = "workers"
SERVICE = "qwen-image-worker"
SELECTOR = f"kubernetes.io/service-name={SERVICE}"
LOGGER = "qwen_image_router.discovery.kubernetes"


@pytest.fixture
def kubeconfig(api: EndpointSliceApiStub, tmp_path: Path) -> str:
    return str(write_kubeconfig(api, tmp_path / "kubeconfig"))


def discovery_for(kubeconfig: str | None, **tuning: Any) -> KubernetesDiscovery:
    """Fast retries for tests; each test overrides what it exercises."""
    options: dict[str, Any] = {
        "watch_timeout_seconds": 30,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "connect_timeout_seconds": 1.0,
        "stop_timeout_seconds": 3.0,
        **tuning,
    }
    return KubernetesDiscovery(
        namespace=NAMESPACE, service_name=SERVICE, kubeconfig=kubeconfig, **options
    )


@asynccontextmanager
async def running(discovery: KubernetesDiscovery, registry: WorkerRegistry) -> AsyncIterator[None]:
    await discovery.start(registry)
    try:
        yield
    finally:
        await discovery.stop()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def workers(registry: WorkerRegistry) -> dict[str, str]:
    return {state.name: state.endpoint.url for state in registry.workers()}


def lists(api: EndpointSliceApiStub) -> list[RecordedRequest]:
    return [r for r in api.requests if not r.is_watch]


def watches(api: EndpointSliceApiStub) -> list[RecordedRequest]:
    return [r for r in api.requests if r.is_watch]


def worker_slice(*endpoints: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return endpoint_slice(SERVICE, list(endpoints), namespace=NAMESPACE, name=name)


async def test_initial_list_merges_slices_and_keeps_only_serving_endpoints(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    api.apply(
        endpoint_slice(
            SERVICE,
            [
                endpoint("10.0.0.1", pod="worker-1"),
                endpoint("10.0.0.2", pod="worker-2", ready=False),
                endpoint("10.0.0.3", pod="worker-3", ready=True, terminating=True),
                endpoint("10.0.0.4", ready=None),  # no ready condition: ready, per the API
            ],
            namespace=NAMESPACE,
            name="ipv4",
            ports=(("metrics", 9000), ("http", 8000)),
        )
    )
    api.apply(
        endpoint_slice(
            SERVICE,
            [endpoint("fd00::5", pod="worker-5")],
            namespace=NAMESPACE,
            name="ipv6",
            address_type="IPv6",
        )
    )
    # The same service without the named port, an empty slice, another service, another
    # namespace: none of these contribute workers.
    api.apply(
        endpoint_slice(
            SERVICE, [endpoint("10.0.0.6")], namespace=NAMESPACE, ports=(("grpc", 9090),)
        )
    )
    api.apply(worker_slice(name="empty"))
    api.apply(endpoint_slice("other", [endpoint("10.0.0.7")], namespace=NAMESPACE))
    api.apply(endpoint_slice(SERVICE, [endpoint("10.0.0.8")], namespace="elsewhere"))

    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig), registry):
        # start() returns with the first full view already in the registry.
        assert workers(registry) == {
            "worker-1": "http://10.0.0.1:8000",
            "10.0.0.4:8000": "http://10.0.0.4:8000",
            "worker-5": "http://[fd00::5]:8000",
        }
        await eventually(lambda: api.open_watches == 1, "the first watch streaming")

    [listed] = lists(api)
    assert listed.path == f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
    assert listed.query["labelSelector"] == SELECTOR
    [watched] = watches(api)
    assert watched.path == listed.path
    assert watched.query["labelSelector"] == SELECTOR
    assert watched.query["resourceVersion"] == api.resource_version  # the list's version
    assert watched.query["allowWatchBookmarks"] == "true"
    assert watched.query["timeoutSeconds"] == "30"


async def test_watch_events_change_the_set_at_once_and_only_when_it_changes(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    first = worker_slice(
        endpoint("10.0.0.1", pod="worker-1"), endpoint("10.0.0.2", pod="worker-2"), name="a"
    )
    api.apply(first)
    registry = WorkerRegistry()
    replaced: list[set[str]] = []
    registry.on_change(lambda: replaced.append(set(workers(registry))))
    async with running(discovery_for(kubeconfig), registry):
        assert replaced == [{"worker-1", "worker-2"}]

        api.apply(worker_slice(endpoint("10.0.1.1", pod="worker-3"), name="b"))  # ADDED
        await eventually(lambda: "worker-3" in workers(registry), "an added slice")

        api.apply(
            worker_slice(
                endpoint("10.0.0.1", pod="worker-1", ready=False),
                endpoint("10.0.0.2", pod="worker-2"),
                name="a",
            )
        )
        await eventually(lambda: "worker-1" not in workers(registry), "a not-ready endpoint")

        api.apply(
            worker_slice(
                endpoint("10.0.0.1", pod="worker-1", ready=False),
                endpoint("10.0.0.2", pod="worker-2", ready=True, terminating=True),
                name="a",
            )
        )
        await eventually(lambda: "worker-2" not in workers(registry), "a terminating endpoint")

        # A change that leaves the ready set alone must not reach the registry...
        api.apply(
            worker_slice(
                endpoint("10.0.0.1", pod="worker-1", ready=False, serving=False),
                endpoint("10.0.0.2", pod="worker-2", ready=True, terminating=True),
                name="a",
            )
        )
        api.delete(NAMESPACE, "b")  # DELETED
        await eventually(lambda: workers(registry) == {}, "a deleted slice")

    # ...so every replace() call carried a different set.
    assert replaced == [
        {"worker-1", "worker-2"},
        {"worker-1", "worker-2", "worker-3"},
        {"worker-2", "worker-3"},
        {"worker-3"},
        set(),
    ]
    assert len(lists(api)) == 1, "events alone kept the set current"


async def test_bookmark_advances_the_version_the_next_watch_resumes_from(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig), registry):
        await eventually(lambda: api.open_watches == 1, "the first watch streaming")
        listed_version = watches(api)[0].query["resourceVersion"]

        # Changes this watch does not see (another service) move the server's version on.
        api.apply(endpoint_slice("other", [endpoint("10.9.0.1")], namespace=NAMESPACE))
        api.apply(endpoint_slice("other", [endpoint("10.9.0.2")], namespace=NAMESPACE))
        bookmark_version = api.send_bookmarks()
        await eventually(lambda: api.bookmarks_sent == 1, "the bookmark on the wire")

        # History before the bookmark goes away: only the bookmark's version still resumes.
        with api.partitioned_watches():
            api.compact()
        await eventually(lambda: len(watches(api)) == 2, "the resumed watch")
        assert bookmark_version != listed_version
        assert watches(api)[1].query["resourceVersion"] == bookmark_version

        api.apply(worker_slice(endpoint("10.0.0.2", pod="worker-2"), name="b"))
        await eventually(lambda: set(workers(registry)) == {"worker-1", "worker-2"}, "b")
    assert len(lists(api)) == 1, "resuming from the bookmark needed no re-list"


async def test_410_gone_relists_and_converges(api: EndpointSliceApiStub, kubeconfig: str) -> None:
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    api.apply(worker_slice(endpoint("10.0.0.2", pod="worker-2"), name="b"))
    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig), registry):
        await eventually(lambda: api.open_watches == 1, "the first watch streaming")
        stale_version = watches(api)[0].query["resourceVersion"]

        # The watcher misses these changes and the history moves past its version.
        with api.partitioned_watches():
            api.delete(NAMESPACE, "a")
            api.apply(worker_slice(endpoint("10.0.0.3", pod="worker-3"), name="c"))
            api.compact()
        current = api.resource_version

        await eventually(lambda: set(workers(registry)) == {"worker-2", "worker-3"}, "re-list")
        await eventually(lambda: len(watches(api)) == 3, "the watch after the re-list")

    # list, watch, resume at the stale version (answered 410 Expired), re-list, watch.
    assert [(r.is_watch, r.query.get("resourceVersion")) for r in api.requests] == [
        (False, None),
        (True, stale_version),
        (True, stale_version),
        (False, None),
        (True, current),
    ]


async def test_dropped_watch_resumes_from_the_last_version_seen(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig), registry):
        added_version = api.apply(worker_slice(endpoint("10.0.0.2", pod="worker-2"), name="b"))
        await eventually(lambda: "worker-2" in workers(registry), "b")

        api.drop_watches()
        await eventually(lambda: len(watches(api)) == 2, "the resumed watch")
        assert watches(api)[1].query["resourceVersion"] == added_version

        api.delete(NAMESPACE, "a")
        await eventually(lambda: set(workers(registry)) == {"worker-2"}, "a deleted")
        assert set(workers(registry)) == {"worker-2"}
    assert len(lists(api)) == 1, "a dropped connection resumes without a re-list"


async def test_server_side_watch_timeout_rewatches_from_the_same_version(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig, watch_timeout_seconds=1), registry):
        changed_version = api.apply(worker_slice(endpoint("10.0.0.2", pod="worker-1"), name="a"))
        await eventually(lambda: len(watches(api)) >= 2, "a second watch after the timeout")
        assert workers(registry) == {"worker-1": "http://10.0.0.2:8000"}
    first, second = watches(api)[:2]
    assert first.query["timeoutSeconds"] == second.query["timeoutSeconds"] == "1"
    assert second.query["resourceVersion"] == changed_version
    assert len(lists(api)) == 1


async def test_resyncs_with_a_full_list_periodically(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig, resync_seconds=1.0), registry):
        await eventually(lambda: len(lists(api)) >= 2, "a periodic re-list")
        assert set(workers(registry)) == {"worker-1"}
    # The watch was sized to end when the resync was due.
    assert watches(api)[0].query["timeoutSeconds"] == "1"


async def test_api_server_down_keeps_the_last_set_then_converges(
    api: EndpointSliceApiStub, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    api.apply(worker_slice(endpoint("10.0.0.2", pod="worker-2"), name="b"))
    registry = WorkerRegistry()
    async with running(discovery_for(kubeconfig), registry):
        assert set(workers(registry)) == {"worker-1", "worker-2"}
        api.stop()

        def failures() -> int:
            return sum(r.levelno == logging.WARNING for r in caplog.records)

        await eventually(lambda: failures() >= 2, "failed attempts against the stopped server")
        assert set(workers(registry)) == {"worker-1", "worker-2"}

        # The cluster moves on while the router cannot see it.
        api.delete(NAMESPACE, "a")
        api.apply(worker_slice(endpoint("10.0.0.3", pod="worker-3"), name="c"))
        api.compact()
        api.start()
        await eventually(lambda: set(workers(registry)) == {"worker-2", "worker-3"}, "converge")
    assert len(lists(api)) == 2


async def test_start_returns_when_the_api_server_is_down_and_converges_later(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    api.stop()
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    registry = WorkerRegistry()
    discovery = discovery_for(kubeconfig, start_timeout_seconds=30.0)
    started = time.monotonic()
    async with running(discovery, registry):
        assert time.monotonic() - started < 10, "start() waited for the timeout, not the failure"
        assert workers(registry) == {}
        api.start()
        await eventually(lambda: set(workers(registry)) == {"worker-1"}, "the first list")


async def test_kubeconfig_from_the_environment(
    api: EndpointSliceApiStub, kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    api.apply(worker_slice(endpoint("10.0.0.1", pod="worker-1"), name="a"))
    registry = WorkerRegistry()
    async with running(discovery_for(None), registry):
        assert set(workers(registry)) == {"worker-1"}


async def test_stop_returns_promptly_and_ends_the_thread(
    api: EndpointSliceApiStub, kubeconfig: str
) -> None:
    registry = WorkerRegistry()
    discovery = discovery_for(kubeconfig, watch_timeout_seconds=600, stop_timeout_seconds=10)
    await discovery.start(registry)
    await eventually(lambda: api.open_watches == 1, "a long watch streaming")

    started = time.monotonic()
    await discovery.stop()
    assert time.monotonic() - started < 2, "stop() waited for the watch's server timeout"
    assert not [t for t in threading.enumerate() if t.name.startswith("kubernetes-discovery-")]


def test_a_change_is_logged_as_the_count_and_the_difference_not_the_set() -> None:
    def endpoints(*names: str) -> list[WorkerEndpoint]:
        return [WorkerEndpoint(name, f"http://{name}:8000") for name in names]

    many = [f"w{i:03d}" for i in range(500)]
    assert describe_change([], endpoints("a", "b")) == "2 (added a, b)"
    assert describe_change(endpoints("a", "b"), endpoints("b", "c")) == "2 (added c; removed a)"
    assert describe_change(endpoints("a"), []) == "0 (removed a)"
    assert describe_change(endpoints("a"), endpoints("a")) == "1"
    grown = describe_change(endpoints(*many[:100]), endpoints(*many))
    assert grown == "500 (added w100, w101, w102, w103, w104 and 395 more)"
