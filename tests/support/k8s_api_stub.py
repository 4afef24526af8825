"""A stand-in Kubernetes API server for EndpointSlices, speaking list and watch as documented.

Until a real kube-apiserver is built for the tests, this is the one acceptable substitute, so
it keeps the API's contracts (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- `GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=...` returns an
  EndpointSliceList whose `metadata.resourceVersion` is the version the list was built at.
- With `watch=true&resourceVersion=X` it streams newline-delimited watch events (chunked) for
  every change after X that the selector sees; an object that stops matching the selector
  arrives as DELETED, one that starts matching as ADDED. Without a resourceVersion (or "0")
  the watch first sends the current objects as ADDED.
- `timeoutSeconds` ends the stream cleanly; `allowWatchBookmarks=true` lets the server send
  BOOKMARK events (kind, apiVersion and metadata.resourceVersion only) when it chooses to.
- A resourceVersion older than the kept history gets a 200 whose only event is an ERROR
  carrying a Status with code 410 ("Expired"), the way the watch cache answers it.
- Resource versions are one counter for the whole store, so changes in other namespaces or
  to other services advance it too (what bookmarks exist for).
- Requests need `Authorization: Bearer <token>`; anything else gets a 401 Status.

The test drives it: apply and delete slices, compact history, send bookmarks, drop or
partition open watches, stop and restart the server on the same port. Every request is
recorded so tests can check what the client asked for.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_VERSION = "discovery.k8s.io/v1"
_PATH_PREFIX = "/apis/discovery.k8s.io/v1/namespaces/"
_PATH_SUFFIX = "/endpointslices"
# kube-apiserver picks a watch timeout between --min-request-timeout (1800 s) and twice that.
_DEFAULT_WATCH_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub received it: the path and its (single-valued) query."""

    path: str
    query: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return _parse_bool(self.query.get("watch", ""))


@dataclass(frozen=True)
class _Change:
    version: int
    type: str
    object: dict[str, Any]
    previous: dict[str, Any] | None


def _parse_bool(value: str) -> bool:
    """Query booleans as Go's strconv.ParseBool reads them (the API server's parser)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _selector(text: str) -> list[tuple[str, str, str]]:
    """Equality-based label selector requirements: `k=v`, `k==v`, `k!=v`, comma-separated."""
    requirements = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append((key.strip(), "!=", value.strip()))
        elif "=" in part:
            key, value = part.replace("==", "=", 1).split("=", 1)
            requirements.append((key.strip(), "=", value.strip()))
        else:
            raise ValueError(f"unsupported label selector requirement {part!r}")
    return requirements


def _matches(obj: dict[str, Any], namespace: str, selector: list[tuple[str, str, str]]) -> bool:
    metadata = obj["metadata"]
    if metadata.get("namespace") != namespace:
        return False
    labels = metadata.get("labels") or {}
    return all((labels.get(key) == value) == (op == "=") for key, op, value in selector)


class EndpointSliceApiStub:
    """Keeps EndpointSlices with a global resourceVersion and a compactable change history."""

    def __init__(self, token: str = "stub-token", first_version: int = 1000) -> None:
        self.token = token
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[_Change] = []
        self._version = first_version
        # Watches may start at any version >= this one; older ones are answered 410 Expired.
        self._oldest_watchable = first_version
        self._cut_generation = 0
        self._bookmark_generation = 0
        self._partitions = 0
        self._open_watches = 0
        self._requests: list[RecordedRequest] = []
        self._bookmarks_sent = 0
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._port = 0

    # ----- server lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen on 127.0.0.1 (a free port the first time, the same port after a stop)."""
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()

    def stop(self) -> None:
        """Go away like a crashed API server: open streams cut, listener and sockets closed."""
        with self._cond:
            self._cut_generation += 1
            self._cond.notify_all()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)

    # ----- what the test changes ----------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> str:
        """Create or replace an EndpointSlice (namespace and name from its metadata)."""
        with self._cond:
            self._version += 1
            metadata = obj["metadata"]
            key = (metadata["namespace"], metadata["name"])
            previous = self._objects.get(key)
            stored = json.loads(json.dumps(obj))
            stored.setdefault("kind", "EndpointSlice")
            stored.setdefault("apiVersion", API_VERSION)
            stored_meta = stored["metadata"]
            stored_meta["resourceVersion"] = str(self._version)
            if previous is None:
                stored_meta["uid"] = str(uuid.uuid4())
                stored_meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                stored_meta["generation"] = 1
            else:
                for field in ("uid", "creationTimestamp"):
                    stored_meta[field] = previous["metadata"][field]
                stored_meta["generation"] = previous["metadata"]["generation"] + 1
            self._objects[key] = stored
            change_type = "ADDED" if previous is None else "MODIFIED"
            self._history.append(_Change(self._version, change_type, stored, previous))
            self._cond.notify_all()
            return str(self._version)

    def delete(self, namespace: str, name: str) -> str:
        """Delete a slice; watchers get its last state at the deletion's resourceVersion."""
        with self._cond:
            previous = self._objects.pop((namespace, name))
            self._version += 1
            final = json.loads(json.dumps(previous))
            final["metadata"]["resourceVersion"] = str(self._version)
            self._history.append(_Change(self._version, "DELETED", final, previous))
            self._cond.notify_all()
            return str(self._version)

    def compact(self) -> str:
        """Forget the history up to now (etcd compaction): older watch versions become 410."""
        with self._cond:
            self._history.clear()
            self._oldest_watchable = self._version
            return str(self._version)

    def send_bookmarks(self) -> str:
        """Ask every open watch that allowed bookmarks to send one at the current version."""
        with self._cond:
            self._bookmark_generation += 1
            self._cond.notify_all()
            return str(self._version)

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no terminating chunk)."""
        with self._cond:
            self._cut_generation += 1
            self._cond.notify_all()

    @contextmanager
    def partitioned_watches(self) -> Iterator[None]:
        """Inside the block open watches receive nothing; at its end they are cut.

        Models a watcher that falls behind on a broken link: what changes inside the block
        (including compaction) is never streamed on the old connections.
        """
        with self._cond:
            self._partitions += 1
        try:
            yield
        finally:
            with self._cond:
                self._partitions -= 1
                self._cut_generation += 1
                self._cond.notify_all()

    # ----- what the test reads --------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._version)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def open_watches(self) -> int:
        """Watches that are streaming: they see every change, bookmark and cut from now on."""
        with self._cond:
            return self._open_watches

    @property
    def bookmarks_sent(self) -> int:
        with self._cond:
            return self._bookmarks_sent

    # ----- used by the handler -----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)

    def _track(self, connection: socket.socket, open_: bool) -> None:
        with self._cond:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _list(self, namespace: str, selector: list[tuple[str, str, str]]) -> dict[str, Any]:
        with self._cond:
            items = [
                obj
                for key, obj in sorted(self._objects.items())
                if _matches(obj, namespace, selector)
            ]
            return {
                "kind": "EndpointSliceList",
                "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": str(self._version)},
                "items": json.loads(json.dumps(items)),
            }

    def _visible(
        self, change: _Change, namespace: str, selector: list[tuple[str, str, str]]
    ) -> dict[str, Any] | None:
        """The event a filtered watcher sees for one change, if any."""
        now = _matches(change.object, namespace, selector)
        before = change.previous is not None and _matches(change.previous, namespace, selector)
        if change.type == "DELETED":
            event_type = "DELETED" if before else None
        elif now and before:
            event_type = "MODIFIED"
        elif now:
            event_type = "ADDED"
        elif before:
            event_type = "DELETED"
        else:
            event_type = None
        if event_type is None:
            return None
        return {"type": event_type, "object": change.object}

    def _bookmark(self, version: int) -> dict[str, Any]:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": "EndpointSlice",
                "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": str(version), "creationTimestamp": None},
            },
        }

    def _expired(self, version: int) -> dict[str, Any]:
        message = f"too old resource version: {version} ({self._oldest_watchable})"
        return {"type": "ERROR", "object": _status(410, "Expired", message)}

    def _watch(
        self,
        namespace: str,
        selector: list[tuple[str, str, str]],
        since: str,
        timeout_seconds: float,
        bookmarks: bool,
    ) -> Generator[dict[str, Any] | None, None, None]:
        """Events for one watch; yields None when the stream must be cut, ends on timeout."""
        deadline = time.monotonic() + timeout_seconds
        with self._cond:
            self._open_watches += 1
            cut = self._cut_generation
            bookmark_seen = self._bookmark_generation
            if since in ("", "0"):
                cursor = self._version
                initial = [
                    {"type": "ADDED", "object": obj}
                    for _, obj in sorted(self._objects.items())
                    if _matches(obj, namespace, selector)
                ]
            else:
                cursor = int(since)
                initial = [] if cursor >= self._oldest_watchable else [self._expired(cursor)]
        try:
            yield from initial
            if initial and initial[0]["type"] == "ERROR":
                return
            while True:
                with self._cond:
                    events: list[dict[str, Any]] = []
                    while True:
                        if self._cut_generation != cut:
                            break
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        if not self._partitions:
                            if cursor < self._oldest_watchable:
                                events = [self._expired(cursor)]
                                break
                            changes = [c for c in self._history if c.version > cursor]
                            if changes:
                                cursor = changes[-1].version
                            events = [
                                event
                                for change in changes
                                if (event := self._visible(change, namespace, selector))
                            ]
                            if bookmarks and self._bookmark_generation != bookmark_seen:
                                bookmark_seen = self._bookmark_generation
                                cursor = self._version
                                events.append(self._bookmark(cursor))
                                self._bookmarks_sent += 1
                            if events:
                                break
                        self._cond.wait(remaining)
                    cut_now = self._cut_generation != cut
                if cut_now:
                    yield None
                    return
                yield from events
                if events[-1]["type"] == "ERROR":
                    return
        finally:
            with self._cond:
                self._open_watches -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], stub: EndpointSliceApiStub) -> None:
        super().__init__(address, _Handler)
        self.stub = stub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k8s-api-stub"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.stub._track(self.connection, True)

    def finish(self) -> None:
        with suppress(OSError):
            super().finish()
        self.server.stub._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `stub.requests` instead."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.server.stub._record(RecordedRequest(path=parts.path, query=query))
        if self.headers.get("Authorization") != f"Bearer {self.server.stub.token}":
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        path = parts.path
        namespace = path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)]
        if not (path.startswith(_PATH_PREFIX) and path.endswith(_PATH_SUFFIX)) or (
            not namespace or "/" in namespace
        ):
            self._send_json(404, _status(404, "NotFound", "the server could not find it"))
            return
        try:
            selector = _selector(query.get("labelSelector", ""))
            timeout = float(query.get("timeoutSeconds") or _DEFAULT_WATCH_TIMEOUT_SECONDS)
            since = query.get("resourceVersion", "")
            if since not in ("", "0"):
                int(since)
        except ValueError as exc:
            self._send_json(400, _status(400, "BadRequest", str(exc)))
            return
        if _parse_bool(query.get("watch", "")):
            bookmarks = _parse_bool(query.get("allowWatchBookmarks", ""))
            self._stream(self.server.stub._watch(namespace, selector, since, timeout, bookmarks))
        else:
            self._send_json(200, self.server.stub._list(namespace, selector))

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Generator[dict[str, Any] | None, None, None]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with closing(events):
            try:
                for event in events:
                    if event is None:
                        # Cut mid-stream: no terminating chunk, the client sees a broken body.
                        self.close_connection = True
                        with suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True


def _in_namespace(endpoint: dict[str, Any], namespace: str) -> dict[str, Any]:
    if "targetRef" not in endpoint:
        return endpoint
    return dict(endpoint, targetRef=dict(endpoint["targetRef"], namespace=namespace))


def endpoint(
    address: str,
    *,
    pod: str | None = None,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> dict[str, Any]:
    """One EndpointSlice endpoint; None conditions are left out, as the API allows."""
    conditions = {
        key: value
        for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if value is not None
    }
    result: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if pod is not None:
        result["targetRef"] = {"kind": "Pod", "name": pod, "uid": str(uuid.uuid4())}
    return result


def endpoint_slice(
    service: str,
    endpoints: list[dict[str, Any]],
    *,
    namespace: str,
    name: str | None = None,
    ports: tuple[tuple[str, int], ...] = (("http", 8000),),
    address_type: str = "IPv4",
) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller writes it for `service`."""
    return {
        "metadata": {
            "name": name or f"{service}-{uuid.uuid4().hex[:5]}",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": address_type,
        # The API server serializes an empty slice's endpoints as null (no omitempty).
        "endpoints": [_in_namespace(e, namespace) for e in endpoints] or None,
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def write_kubeconfig(stub: EndpointSliceApiStub, path: Path) -> Path:
    """A kubeconfig that points a real Kubernetes client at `stub`, with its bearer token."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stub", "cluster": {"server": stub.url}}],
                "users": [{"name": "router", "user": {"token": stub.token}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "router"}}],
                "current-context": "stub",
            }
        )
    )
    return path
