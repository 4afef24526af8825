"""Discovery from the Kubernetes API: list-then-watch the workers' Service EndpointSlices."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing, suppress
from typing import Any, cast

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from qwen_image_router.registry import WorkerEndpoint, WorkerRegistry

logger = logging.getLogger(__name__)

# The server ends a watch after timeoutSeconds; a connection silent for this much longer is dead.
_WATCH_READ_SLACK_SECONDS = 10.0


class KubernetesDiscovery:
    """Keeps the ready endpoints of one Service's EndpointSlices in a WorkerRegistry.

    A daemon thread lists the slices labelled `kubernetes.io/service-name` in <service_name>,
    keeps them (by name) with the resourceVersion last seen, and watches from that version.
    Whenever the set of ready endpoints changes, the thread hands a new set to the registry on
    the event loop, where the scheduler reads it; nothing on the request path waits for the
    API server. On errors the last set stays in place while the thread backs off and re-lists.
    """

    def __init__(
        self,
        *,
        namespace: str,
        service_name: str,
        port_name: str = "http",
        kubeconfig: str | None = None,
        watch_timeout_seconds: int = 60,
        resync_seconds: float = 300.0,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        connect_timeout_seconds: float = 3.0,
        list_timeout_seconds: float = 10.0,
        start_timeout_seconds: float = 5.0,
        stop_timeout_seconds: float = 5.0,
        api_client: client.ApiClient | None = None,
    ) -> None:
        if watch_timeout_seconds < 1:
            raise ValueError(f"watch_timeout_seconds must be >= 1, got {watch_timeout_seconds}")
        if not 0 < backoff_initial_seconds <= backoff_max_seconds:
            raise ValueError(
                "backoff needs 0 < backoff_initial_seconds <= backoff_max_seconds, got "
                f"{backoff_initial_seconds} and {backoff_max_seconds}"
            )
        self._namespace = namespace
        self._service_name = service_name
        self._port_name = port_name
        self._kubeconfig = kubeconfig
        # Several pools, several Services (comma-separated): one set-based selector, one watch.
        services = [name.strip() for name in service_name.split(",") if name.strip()]
        self._label_selector = (
            f"kubernetes.io/service-name={services[0]}"
            if len(services) == 1
            else f"kubernetes.io/service-name in ({','.join(services)})"
        )
        self._watch_timeout = watch_timeout_seconds
        self._resync = resync_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._connect_timeout = connect_timeout_seconds
        self._list_timeout = list_timeout_seconds
        self._start_timeout = start_timeout_seconds
        self._stop_timeout = stop_timeout_seconds
        self._given_api_client = api_client

        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _response between the thread and stop()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._api_client: client.ApiClient | None = None
        self._api: client.DiscoveryV1Api | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registry: WorkerRegistry | None = None
        self._first_view: asyncio.Future[None] | None = None
        # Touched only by the thread: the slices by name, their version, what was handed over.
        self._slices: dict[str, Mapping[str, Any]] = {}
        self._version: str | None = None
        self._published: tuple[WorkerEndpoint, ...] | None = None

    async def start(self, registry: WorkerRegistry) -> None:
        """Start watching; return once the first list was handed over or failed.

        A bad kubeconfig or missing in-cluster credentials raise here. An unreachable API
        server does not: the registry stays empty and the thread keeps retrying.
        """
        if self._thread is not None:
            raise RuntimeError("KubernetesDiscovery was already started")
        self._api_client = self._given_api_client or await asyncio.to_thread(
            _load_api_client, self._kubeconfig
        )
        self._api = client.DiscoveryV1Api(self._api_client)
        self._loop = asyncio.get_running_loop()
        self._registry = registry
        first_view = self._first_view = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run,
            name=f"kubernetes-discovery-{self._namespace}-{self._service_name}",
            daemon=True,
        )
        self._thread.start()
        done, _ = await asyncio.wait({first_view}, timeout=self._start_timeout)
        if not done:
            logger.warning(
                "No answer from the Kubernetes API within %.0fs; starting with no workers "
                "while discovery of %s/%s keeps trying",
                self._start_timeout,
                self._namespace,
                self._service_name,
            )

    async def stop(self) -> None:
        """Signal the thread, cut its open watch, and wait for it a bounded time."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping.set()
            response = self._response
        if response is not None:
            _abort(response)
        await asyncio.to_thread(thread.join, self._stop_timeout)
        if thread.is_alive():
            logger.warning(
                "Discovery thread for %s/%s did not stop within %.0fs",
                self._namespace,
                self._service_name,
                self._stop_timeout,
            )
        elif self._given_api_client is None and self._api_client is not None:
            self._api_client.close()
            self._api_client = None

    # ----- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        logger.info(
            "Watching EndpointSlices of service %s/%s (port %r)",
            self._namespace,
            self._service_name,
            self._port_name,
        )
        delay = self._backoff_initial
        listed_at = 0.0
        stream = watch.Watch(return_type="object")  # raw dicts: the API's own field semantics
        while not self._stopping.is_set():
            if self._version is None or time.monotonic() - listed_at >= self._resync:
                try:
                    self._list()
                except Exception as exc:
                    self._first_view_done()
                    logger.warning(
                        "Listing EndpointSlices of %s/%s failed (%s); keeping %d known "
                        "workers, retrying in %.1fs",
                        self._namespace,
                        self._service_name,
                        _describe(exc),
                        len(self._published or ()),
                        delay,
                    )
                    delay = self._back_off(delay)
                    continue
                listed_at = time.monotonic()
                delay = self._backoff_initial
                self._first_view_done()
            try:
                self._watch(stream, listed_at)
            except Exception as exc:
                if self._stopping.is_set():
                    break
                delay = self._recover(exc, delay)
            else:
                delay = self._backoff_initial  # the server ended a healthy watch on time
        logger.info("Stopped watching EndpointSlices of %s/%s", self._namespace, self._service_name)

    def _recover(self, exc: Exception, delay: float) -> float:
        """Go on after a failed watch; returns the next backoff delay.

        410 Gone means our resourceVersion left the server's history: re-list at once. A
        connection that broke mid-stream resumes from the last resourceVersion seen. Anything
        else re-lists after the backoff. The registry keeps its set throughout.
        """
        if isinstance(exc, ApiException) and exc.status == 410:
            logger.info(
                "Watch of %s/%s expired at resourceVersion %s (410 Gone); re-listing",
                self._namespace,
                self._service_name,
                self._version,
            )
            self._version = None
            return delay
        if isinstance(exc, ProtocolError | ReadTimeoutError):
            logger.info(
                "Watch of %s/%s dropped (%s); resuming from resourceVersion %s in %.1fs",
                self._namespace,
                self._service_name,
                _describe(exc),
                self._version,
                delay,
            )
        else:
            logger.warning(
                "Watching EndpointSlices of %s/%s failed (%s); re-listing in %.1fs",
                self._namespace,
                self._service_name,
                _describe(exc),
                delay,
            )
            self._version = None
        return self._back_off(delay)

    def _back_off(self, delay: float) -> float:
        """Wait `delay` (or until stopped) and return the next, doubled and capped."""
        self._stopping.wait(delay)
        return min(delay * 2, self._backoff_max)

    def _list(self) -> None:
        """Replace the kept slices with a full list and remember its resourceVersion."""
        assert self._api is not None
        # Without preloading the client returns the raw urllib3 response, not the model.
        response = cast(
            HTTPResponse,
            self._api.list_namespaced_endpoint_slice(
                self._namespace,
                label_selector=self._label_selector,
                _preload_content=False,
                _request_timeout=(self._connect_timeout, self._list_timeout),
            ),
        )
        try:
            body = json.loads(response.read())
        finally:
            response.release_conn()
        self._slices = {item["metadata"]["name"]: item for item in body.get("items") or ()}
        self._version = body["metadata"]["resourceVersion"]
        logger.debug(
            "Listed %d EndpointSlices of %s/%s at resourceVersion %s",
            len(self._slices),
            self._namespace,
            self._service_name,
            self._version,
        )
        self._publish()

    def _watch(self, stream: watch.Watch, listed_at: float) -> None:
        """Follow changes from the kept resourceVersion until the server ends the watch."""
        resync_left = listed_at + self._resync - time.monotonic()
        timeout = max(1, min(self._watch_timeout, math.ceil(resync_left)))
        events = stream.stream(
            self._open_watch,
            namespace=self._namespace,
            label_selector=self._label_selector,
            resource_version=self._version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(self._connect_timeout, timeout + _WATCH_READ_SLACK_SECONDS),
        )
        try:
            with closing(events):
                for event in events:
                    if self._stopping.is_set():
                        return
                    if isinstance(event, dict):
                        self._apply(event)
                    if time.monotonic() - listed_at >= self._resync:
                        return
        finally:
            with self._lock:
                self._response = None

    def _open_watch(self, *args: Any, **kwargs: Any) -> Any:
        """Open the watch request and keep its response where stop() can cut it."""
        assert self._api is not None
        response = self._api.list_namespaced_endpoint_slice(*args, **kwargs)
        with self._lock:
            self._response = response
            stopping = self._stopping.is_set()
        if stopping:
            _abort(response)
        return response

    def _apply(self, event: Mapping[str, Any]) -> None:
        obj = event.get("raw_object", event.get("object"))
        if not isinstance(obj, Mapping):
            return
        kind = event.get("type")
        metadata = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED"):
            self._slices[metadata["name"]] = obj
        elif kind == "DELETED":
            self._slices.pop(metadata["name"], None)
        elif kind != "BOOKMARK":
            logger.debug("Ignoring watch event of type %r", kind)
            return
        # A BOOKMARK only says the watch has seen everything up to its resourceVersion.
        if metadata.get("resourceVersion"):
            self._version = metadata["resourceVersion"]
        if kind != "BOOKMARK":
            self._publish()

    def _publish(self) -> None:
        """Hand the ready set to the registry on the event loop, if it changed."""
        endpoints = ready_endpoints(self._slices.values(), self._port_name)
        if endpoints == self._published or self._stopping.is_set():
            return
        logger.info(
            "Ready workers of %s/%s: %s",
            self._namespace,
            self._service_name,
            describe_change(self._published or (), endpoints),
        )
        self._published = endpoints
        assert self._loop is not None and self._registry is not None
        with suppress(RuntimeError):  # the loop closed under us while shutting down
            self._loop.call_soon_threadsafe(self._registry.replace, endpoints)

    def _first_view_done(self) -> None:
        future = self._first_view
        if future is None or self._loop is None:
            return
        self._first_view = None
        with suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_resolve, future)


def describe_change(
    before: Sequence[WorkerEndpoint], after: Sequence[WorkerEndpoint], shown: int = 5
) -> str:
    """'3 (added a, b; removed c)': the count and what changed, not the whole set, which
    with hundreds of workers would fill the log on every event."""

    def names(endpoints: list[str]) -> str:
        more = len(endpoints) - shown
        return ", ".join(endpoints[:shown]) + (f" and {more} more" if more > 0 else "")

    old, new = {e.name for e in before}, {e.name for e in after}
    changes = [
        f"{verb} {names(sorted(group))}"
        for verb, group in (("added", new - old), ("removed", old - new))
        if group
    ]
    return f"{len(new)} ({'; '.join(changes)})" if changes else str(len(new))


def ready_endpoints(
    slices: Iterable[Mapping[str, Any]], port_name: str
) -> tuple[WorkerEndpoint, ...]:
    """The workers that may get jobs: ready, not terminating endpoints on the named port.

    Per the EndpointSlice API, a missing `ready` condition means ready, only the first address
    of an endpoint carries meaning, and one endpoint may appear in several slices.
    """
    found: dict[str, WorkerEndpoint] = {}
    for slice_ in sorted(slices, key=lambda s: str(s["metadata"]["name"])):
        port = next(
            (
                p.get("port")
                for p in slice_.get("ports") or ()
                if (p.get("name") or "") == port_name
            ),
            None,
        )
        if port is None:
            continue
        for endpoint in slice_.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            addresses = endpoint.get("addresses") or ()
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            if not addresses:
                continue
            host = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
            target = endpoint.get("targetRef") or {}
            if target.get("kind") == "Pod" and target.get("name"):
                name = str(target["name"])
            else:
                name = f"{host}:{port}"
            found.setdefault(name, WorkerEndpoint(name=name, url=f"http://{host}:{port}"))
    return tuple(sorted(found.values(), key=lambda e: e.name))


def _load_api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client of our own from the kubeconfig (argument or KUBECONFIG), else in-cluster."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(
            config_file=path, client_configuration=configuration, persist_config=False
        )
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _abort(response: Any) -> None:
    """Unblock a thread reading `response` by shutting its socket down."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
