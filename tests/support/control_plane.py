"""A real Kubernetes control plane on loopback, for the tests and the churn benchmark.

etcd and kube-apiserver run the way a kubeadm cluster runs them: TLS on every connection
with certificates made for the run, RBAC authorization, service-account tokens signed and
verified by the API server. On request kube-controller-manager, kube-scheduler and kwok join
them, so Deployments turn into pods that run, as far as the API can tell, on simulated GPU
nodes. The binaries come from tools/k8s/build.sh, which builds them once per machine.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config, dynamic

from support.processes import free_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
# kwok hands out pod IPs from here. Nothing listens there: tests read the router's view of
# simulated workers, never send them jobs.
POD_CIDR = "10.244.0.1/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
_ISSUER = "https://kubernetes.default.svc.cluster.local"
# kube-apiserver is ready in seconds on an idle machine; CI's 2 shared cores need slack.
_START_TIMEOUT_SECONDS = 180.0


def build_binaries() -> Path:
    """The folder holding the control-plane binaries; builds them when they are missing.

    The first build on a machine takes about ten minutes on 2 cores; later calls return at
    once. A failed build fails the caller with the script's output: these tests are never
    skipped.
    """
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT.relative_to(REPO_ROOT)} failed (exit {result.returncode}):\n"
            + "\n".join(result.stderr.splitlines()[-60:])
        )
    if result.stderr.strip():
        logger.info("%s: %s", BUILD_SCRIPT.name, result.stderr.strip().splitlines()[-1])
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"build.sh reported {bin_dir} but it lacks {', '.join(missing)}")
    return bin_dir


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


class Pki:
    """A certificate authority made for one run, and the certificates it signs.

    Made with the openssl CLI (P-256 keys: quick to generate). Client certificates carry
    the user as CN and the groups as O, the way kube-apiserver reads them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = KeyPair(directory / "ca.crt", directory / "ca.key")
        _openssl(
            "req", "-x509", "-new", "-nodes", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", self.ca.key, "-out", self.ca.cert, "-days", "2",
            "-subj", "/CN=qwen-image-tests-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        groups: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
    ) -> KeyPair:
        """A certificate for server and client use, with the given subject and names."""
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        csr = self.directory / f"{name}.csr"
        subject = "".join(f"/O={group}" for group in groups) + f"/CN={common_name}"
        _openssl(
            "req", "-new", "-nodes", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", pair.key, "-out", csr, "-subj", subject,
        )  # fmt: skip
        extensions = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth,clientAuth",
        ]
        names = [f"IP:{ip}" for ip in ip_addresses] + [f"DNS:{dns}" for dns in dns_names]
        if names:
            extensions.append("subjectAltName=" + ",".join(names))
        extfile = self.directory / f"{name}.ext"
        extfile.write_text("\n".join(extensions) + "\n")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca.cert, "-CAkey", self.ca.key,
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
            "-out", pair.cert, "-extfile", extfile,
        )  # fmt: skip
        return pair

    def signing_key(self, name: str) -> KeyPair:
        """A bare key pair (private key, public key as `cert`) for signing tokens."""
        pair = KeyPair(self.directory / f"{name}.pub", self.directory / f"{name}.key")
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", pair.key)  # fmt: skip
        _openssl("pkey", "-in", pair.key, "-pubout", "-out", pair.cert)
        return pair


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


class Component:
    """One control-plane binary as a child process, with its own log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Component:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(
        self, check: Callable[[], bool], timeout: float = _START_TIMEOUT_SECONDS
    ) -> None:
        """Return once `check` passes; fail with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited while starting; its log:\n{self.tail()}")
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s; its log:\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait for a clean exit, SIGKILL when it does not come."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
            process.kill()
            process.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _https_ok(url: str, tls: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, verify=tls, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _tls_context(ca: Path, client_pair: KeyPair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if client_pair is not None:
        context.load_cert_chain(str(client_pair.cert), str(client_pair.key))
    return context


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    *,
    client_pair: KeyPair | None = None,
    token: str | None = None,
) -> Path:
    """A kubeconfig with one cluster, one user (certificate or bearer token), one context."""
    user: dict[str, str] = {}
    if client_pair is not None:
        user = {"client-certificate": str(client_pair.cert), "client-key": str(client_pair.key)}
    if token is not None:
        user["token"] = token
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tests", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "tests", "context": {"cluster": "tests", "user": "user"}}],
        "current-context": "tests",
    }
    path.write_text(json.dumps(kubeconfig, indent=2))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver on loopback ports; optionally the controllers and kwok.

    Keeps its certificates, data, kubeconfigs and logs under `workdir`. The API server can
    be stopped and started again on the same port over the same etcd data, and a second
    API server can serve the same cluster on another port meanwhile (an HA pair's twin).
    """

    def __init__(self, workdir: Path, bin_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir if bin_dir is not None else build_binaries()
        self.logs = workdir / "logs"
        self.pki = Pki(workdir / "pki")
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self._etcd: Component | None = None
        self._apiserver: Component | None = None
        self._controllers: list[Component] = []
        self._apiserver_starts = 0

        pki = self.pki
        self.etcd_pair = pki.issue(
            "etcd", "etcd", ip_addresses=("127.0.0.1",), dns_names=("localhost",)
        )
        self.etcd_client_pair = pki.issue("apiserver-etcd-client", "kube-apiserver-etcd-client")
        self.apiserver_pair = pki.issue(
            "apiserver",
            "kube-apiserver",
            ip_addresses=("127.0.0.1", "10.96.0.1"),
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        self.service_account_key = pki.signing_key("sa")
        self.admin_pair = pki.issue("admin", "kubernetes-admin", groups=("system:masters",))
        self.admin_kubeconfig = self.kubeconfig(workdir / "admin.kubeconfig", self.admin_pair)

    # ----- what callers read ------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca.cert

    def kubeconfig(
        self,
        path: Path,
        client_pair: KeyPair | None = None,
        *,
        token: str | None = None,
        port: int | None = None,
    ) -> Path:
        """A kubeconfig for this cluster (or the API server on `port`) as the given user."""
        server = self.server if port is None else f"https://127.0.0.1:{port}"
        return write_kubeconfig(path, server, self.ca_file, client_pair=client_pair, token=token)

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """A Kubernetes client as the admin, or as whoever `kubeconfig` names."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))

    def service_account_token(
        self, namespace: str, name: str, expiration_seconds: int = 3600
    ) -> str:
        """A token for the ServiceAccount from the TokenRequest API, as a kubelet gets one."""
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        with self.api_client() as api:
            issued = client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, request
            )
        token: str = issued.to_dict()["status"]["token"]
        return token

    def upstream_crds(self) -> list[Path]:
        """The CustomResourceDefinitions build.sh took from their projects' Go modules."""
        crds = sorted((self.bin_dir.parent / "crds").glob("*.yaml"))
        if not crds:
            raise RuntimeError(f"no CRDs next to {self.bin_dir}; rerun {BUILD_SCRIPT}")
        return crds

    def install_crds(self, files: list[Path], timeout: float = 60.0) -> list[str]:
        """Create the CRDs in `files` (already present ones are kept); wait until served."""
        names = []
        with self.api_client() as api:
            # The dynamic client takes and gives plain objects: the typed CRD model rejects a
            # new CRD's empty status.
            crds = dynamic.DynamicClient(api).resources.get(
                api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
            )
            for path in files:
                for crd in load_manifests(path.read_text()):
                    names.append(crd["metadata"]["name"])
                    with suppress(dynamic.exceptions.ConflictError):  # installed before
                        crds.create(body=crd)
            deadline = time.monotonic() + timeout
            for name in names:
                while not _established(crds.get(name=name).to_dict()):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"CRD {name} not established within {timeout:.0f} s")
                    time.sleep(0.1)
        return names

    # ----- lifecycle ---------------------------------------------------------------------

    def start(self) -> ControlPlane:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start_etcd()
            self.start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything, the controllers first and etcd last."""
        self.stop_controllers()
        self.stop_apiserver()
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None

    def _start_etcd(self) -> None:
        client_url = f"https://127.0.0.1:{self.etcd_port}"
        peer_url = f"https://127.0.0.1:{self.etcd_peer_port}"
        ca, pair = str(self.ca_file), self.etcd_pair
        etcd = Component(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=tests",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=tests={peer_url}",
                f"--cert-file={pair.cert}",
                f"--key-file={pair.key}",
                "--client-cert-auth",
                f"--trusted-ca-file={ca}",
                f"--peer-cert-file={pair.cert}",
                f"--peer-key-file={pair.key}",
                "--peer-client-cert-auth",
                f"--peer-trusted-ca-file={ca}",
                # A test cluster's data dies with the run: skip fsync, the slow part on CI disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.logs / "etcd.log",
        ).start()
        self._etcd = etcd
        tls = _tls_context(self.ca_file, self.etcd_client_pair)
        etcd.wait_ready(lambda: _https_ok(f"{client_url}/health", tls))

    def _apiserver_argv(self, port: int) -> list[str]:
        etcd_client = self.etcd_client_pair
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=https://127.0.0.1:{self.etcd_port}",
            f"--etcd-cafile={self.ca_file}",
            f"--etcd-certfile={etcd_client.cert}",
            f"--etcd-keyfile={etcd_client.key}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={self.apiserver_pair.cert}",
            f"--tls-private-key-file={self.apiserver_pair.key}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={_ISSUER}",
            f"--service-account-key-file={self.service_account_key.cert}",
            f"--service-account-signing-key-file={self.service_account_key.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            # On SIGTERM, end open watches within 2 s and stop, instead of waiting out the
            # request timeout (60 s) for them, as a kubelet's grace period would cut it.
            "--shutdown-watch-termination-grace-period=2s",
        ]

    def _start_apiserver_on(self, port: int, log_name: str) -> Component:
        apiserver = Component(
            "kube-apiserver", self._apiserver_argv(port), self.logs / log_name
        ).start()
        tls = _tls_context(self.ca_file, self.admin_pair)
        try:
            apiserver.wait_ready(lambda: _https_ok(f"https://127.0.0.1:{port}/readyz", tls))
        except RuntimeError:
            apiserver.stop()
            raise
        return apiserver

    def start_apiserver(self) -> None:
        """Start the API server on its port (again, after stop_apiserver) and wait for it."""
        if self._apiserver is not None and self._apiserver.running:
            return
        self._apiserver_starts += 1
        self._apiserver = self._start_apiserver_on(
            self.port, f"kube-apiserver-{self._apiserver_starts}.log"
        )

    def stop_apiserver(self) -> None:
        if self._apiserver is not None:
            self._apiserver.stop()
            self._apiserver = None

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.running

    @contextmanager
    def second_apiserver(self) -> Iterator[Path]:
        """Another API server of the same cluster on another port; yields its admin kubeconfig."""
        port = free_port()
        apiserver = self._start_apiserver_on(port, f"kube-apiserver-port-{port}.log")
        try:
            yield self.kubeconfig(
                self.workdir / f"admin-{port}.kubeconfig", self.admin_pair, port=port
            )
        finally:
            apiserver.stop()

    # ----- controllers and simulated nodes --------------------------------------------------

    def start_controllers(self, *, client_qps: int = 20, client_burst: int = 30) -> None:
        """kube-controller-manager, kube-scheduler and kwok, each with its own identity.

        The controller manager and the scheduler authenticate with certificates whose
        subjects the API server's bootstrap RBAC policy knows (system:kube-controller-manager,
        system:kube-scheduler); kwok acts for the nodes it simulates, as an admin.
        `client_qps`/`client_burst` are the controller manager's and the scheduler's API
        rate limits (the defaults are Kubernetes' own).
        """
        if self._controllers:
            return
        try:
            self._start_controllers(client_qps, client_burst)
        except BaseException:
            self.stop_controllers()
            raise

    def _start_controllers(self, client_qps: int, client_burst: int) -> None:
        self._control_component(
            "kube-controller-manager",
            "system:kube-controller-manager",
            [
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.service_account_key.key}",
                f"--root-ca-file={self.ca_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kube-api-qps={client_qps}",
                f"--kube-api-burst={client_burst}",
            ],
        )
        self._control_component(
            "kube-scheduler",
            "system:kube-scheduler",
            [
                "--leader-elect=false",
                f"--kube-api-qps={client_qps}",
                f"--kube-api-burst={client_burst}",
            ],
        )
        self._kwok()

    def _control_component(self, binary: str, user: str, extra: list[str]) -> None:
        pair = self.pki.issue(binary, user, ip_addresses=("127.0.0.1",), dns_names=("localhost",))
        kubeconfig = self.kubeconfig(self.workdir / f"{binary}.kubeconfig", pair)
        port = free_port()
        component = Component(
            binary,
            [
                str(self.bin_dir / binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--client-ca-file={self.ca_file}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={pair.cert}",
                f"--tls-private-key-file={pair.key}",
                *extra,
            ],
            self.logs / f"{binary}.log",
        ).start()
        self._controllers.append(component)  # stop_controllers() stops it if it fails to start
        tls = _tls_context(self.ca_file)
        component.wait_ready(lambda: _https_ok(f"https://127.0.0.1:{port}/healthz", tls))

    def _kwok(self) -> None:
        pair = self.pki.issue("kwok", "kwok-controller", groups=("system:masters",))
        kubeconfig = self.kubeconfig(self.workdir / "kwok.kubeconfig", pair)
        stages = sorted((self.bin_dir.parent / "kwok-stages").glob("*.yaml"))
        if not stages:
            raise RuntimeError(f"no kwok stages next to {self.bin_dir}; rerun {BUILD_SCRIPT}")
        config_file = self.workdir / "kwok.yaml"
        config_file.write_text("\n---\n".join(stage.read_text() for stage in stages))
        port = free_port()
        kwok = Component(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--config={config_file}",
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.243.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{port}",
            ],
            self.logs / "kwok.log",
        ).start()
        self._controllers.append(kwok)
        kwok.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"))

    def stop_controllers(self) -> None:
        for component in reversed(self._controllers):
            component.stop()
        self._controllers = []

    def add_kwok_node(
        self,
        name: str,
        *,
        gpus: int = 0,
        cpu: str = "64",
        memory: str = "512Gi",
        pods: int = 110,
        labels: dict[str, str] | None = None,
    ) -> None:
        """A node that kwok keeps Ready; with `gpus`, tainted and labelled like a GPU node."""
        capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
        taints: list[dict[str, str]] = []
        node_labels = {"type": "kwok", "kubernetes.io/hostname": name, **(labels or {})}
        if gpus:
            capacity[GPU_RESOURCE] = str(gpus)
            taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": node_labels,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": taints},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        with self.api_client() as api:
            dynamic.DynamicClient(api).resources.get(api_version="v1", kind="Node").create(node)


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def load_manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]
