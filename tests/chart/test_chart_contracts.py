"""The contracts between the chart, the two programs and the cluster, on real renderings."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from chart_helpers import VALUE_SETS, Objects, container, env_of, find

ROUTER = "qwen-image-router"
WORKER = "qwen-image-worker"
SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return match_labels.items() <= labels.items()


def port_number(deployment: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    return int(ports[name])


def value(env: dict[str, dict[str, Any]], name: str) -> str:
    assert "value" in env[name], f"{name} is not a plain value"
    result: str = env[name]["value"]
    return result


# --- GPU and model -------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", ["default", "gpu-cluster"])
def test_worker_requests_one_gpu(rendered_sets: dict[str, Objects], set_name: str) -> None:
    worker = find(rendered_sets[set_name], "Deployment", WORKER)
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert value(env_of(worker), "DEVICE") == "cuda"
    router = find(rendered_sets[set_name], "Deployment", ROUTER)
    assert "nvidia.com/gpu" not in str(container(router)["resources"])


def test_gpu_resource_name_and_count_come_from_values(render_objects: Any) -> None:
    objs = render_objects({"worker": {"gpu": {"resourceName": "amd.com/gpu", "count": 2}}})
    limits = container(find(objs, "Deployment", WORKER))["resources"]["limits"]
    assert limits["amd.com/gpu"] == 2 and "nvidia.com/gpu" not in limits
    assert limits["memory"] == "96Gi"  # the other limits stay


def test_cpu_dev_runs_the_demo_model_without_gpu(rendered_sets: dict[str, Objects]) -> None:
    worker = find(rendered_sets["cpu-dev"], "Deployment", WORKER)
    resources = container(worker)["resources"]
    assert not any("gpu" in key for part in resources.values() for key in part)
    env = env_of(worker)
    assert value(env, "MODEL_PATH") == "demo"
    assert value(env, "DEVICE") == "cpu"
    assert "tolerations" not in worker["spec"]["template"]["spec"]


def test_gpu_cluster_worker_scheduling(rendered_sets: dict[str, Objects]) -> None:
    spec = find(rendered_sets["gpu-cluster"], "Deployment", WORKER)["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]


def test_model_volume_from_existing_claim(rendered_sets: dict[str, Objects]) -> None:
    worker = find(rendered_sets["gpu-cluster"], "Deployment", WORKER)
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {
        "claimName": "qwen-image-weights",
        "readOnly": True,
    }
    mount = next(m for m in container(worker)["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    assert value(env_of(worker), "MODEL_PATH").startswith(mount["mountPath"] + "/")


def test_model_volume_from_host_path_or_init_containers(render_objects: Any) -> None:
    objs = render_objects({"worker": {"model": {"hostPath": "/srv/models"}}})
    spec = find(objs, "Deployment", WORKER)["spec"]["template"]["spec"]
    model = next(v for v in spec["volumes"] if v["name"] == "model")
    assert model["hostPath"] == {"path": "/srv/models", "type": "Directory"}

    fetch = {
        "name": "fetch-model",
        "image": "registry.example.com/model-copier:1",
        "volumeMounts": [{"name": "model", "mountPath": "/models"}],
    }
    objs = render_objects(
        {"worker": {"initContainers": [fetch], "model": {"emptyDirSizeLimit": "80Gi"}}}
    )
    spec = find(objs, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert spec["initContainers"] == [fetch]
    assert next(v for v in spec["volumes"] if v["name"] == "model")["emptyDir"] == {
        "sizeLimit": "80Gi"
    }


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_dev_shm_is_memory_backed_and_bounded(
    rendered_sets: dict[str, Objects], set_name: str
) -> None:
    worker = find(rendered_sets[set_name], "Deployment", WORKER)
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(worker)["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]


# --- probes and draining -------------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_worker_probes(rendered_sets: dict[str, Objects], set_name: str) -> None:
    worker = find(rendered_sets[set_name], "Deployment", WORKER)
    c = container(worker)
    assert port_number(worker, "http") == int(value(env_of(worker), "PORT")) == 8000
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert ready["httpGet"] == {"path": "/readyz", "port": "http"}
    assert live["httpGet"] == {"path": "/healthz", "port": "http"}
    # Loading a 20B model takes many minutes: the startup budget is at least 30 minutes.
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 30 * 60


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_router_probes(rendered_sets: dict[str, Objects], set_name: str) -> None:
    router = find(rendered_sets[set_name], "Deployment", ROUTER)
    c = container(router)
    assert port_number(router, "http") == int(value(env_of(router), "PORT")) == 6002
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
        assert c[probe]["httpGet"]["path"] in {"/healthz", "/readyz"}


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_worker_drains_before_it_is_killed(
    rendered_sets: dict[str, Objects], set_name: str
) -> None:
    worker = find(rendered_sets[set_name], "Deployment", WORKER)
    drain = int(value(env_of(worker), "DRAIN_TIMEOUT_SECONDS"))
    pre_stop = container(worker)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) > 0
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain + int(pre_stop[1])


def test_drain_budget_is_enforced(render_objects: Any) -> None:
    with pytest.raises(Exception, match="terminationGracePeriodSeconds must exceed"):
        render_objects(
            {"worker": {"drainTimeoutSeconds": 900, "terminationGracePeriodSeconds": 900}}
        )
    with pytest.raises(Exception, match=r"router\.terminationGracePeriodSeconds must exceed"):
        render_objects({"taskTimeoutSeconds": 1200})
    objs = render_objects(
        {"taskTimeoutSeconds": 1200, "router": {"terminationGracePeriodSeconds": 1300}}
    )
    assert value(env_of(find(objs, "Deployment", ROUTER)), "TASK_TIMEOUT") == "1200"


def test_worker_update_needs_no_spare_gpu(rendered_sets: dict[str, Objects]) -> None:
    strategy = find(rendered_sets["default"], "Deployment", WORKER)["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0


# --- RBAC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_router_may_only_read_endpointslices(
    rendered_sets: dict[str, Objects], set_name: str
) -> None:
    objs = rendered_sets[set_name]
    role = find(objs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = find(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    router_spec = find(objs, "Deployment", ROUTER)["spec"]["template"]["spec"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": router_spec["serviceAccountName"],
            "namespace": "qwen-image",
        }
    ]
    assert router_spec["automountServiceAccountToken"] is True
    worker_spec = find(objs, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert worker_spec["automountServiceAccountToken"] is False
    assert worker_spec["serviceAccountName"] != router_spec["serviceAccountName"]
    assert not [o for o in objs if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


# --- environment ---------------------------------------------------------------------------


def test_router_environment(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["default"]
    env = env_of(find(objs, "Deployment", ROUTER))
    assert value(env, "MODEL_NAME") == "Qwen-Image"
    assert value(env, "TASK_TIMEOUT") == "600"
    assert value(env, "IMAGE_OUTPUT_DIR") == "/data/images"
    assert value(env, "ENABLE_PROMPT_REWRITE") == "false"
    assert value(env, "DISCOVERY") == "kubernetes"
    assert value(env, "WORKER_PORT_NAME") == "http"
    assert value(env, "LOG_FORMAT") == "json"
    assert value(env, "IMAGE_RETENTION_SECONDS") == "86400"
    assert value(env, "IMAGE_RETENTION_MAX_BYTES") == str(10 * 1024**3)
    assert value(env, "REQUEST_HEADER_TIMEOUT_SECONDS") == "10"
    assert value(env, "REQUEST_BODY_TIMEOUT_SECONDS") == "30"
    assert value(env, "ENABLE_API_DOCS") == "true"
    assert env["WORKER_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Discovery watches the EndpointSlices of exactly this Service, on its port named http;
    # the other port is the workers' metrics.
    service = find(objs, "Service", value(env, "WORKER_SERVICE_NAME"))
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "metrics"]
    assert selects(service["spec"]["selector"], pod_labels(find(objs, "Deployment", WORKER)))
    assert not selects(service["spec"]["selector"], pod_labels(find(objs, "Deployment", ROUTER)))
    assert service["spec"]["clusterIP"] == "None"
    # No auth and no rewrite configured: no secrets are referenced.
    assert {"API_KEYS", "OPENAI_API_KEY", "IMAGE_DOWNLOAD_URL_PREFIX"}.isdisjoint(env)


def test_worker_environment(rendered_sets: dict[str, Objects]) -> None:
    env = env_of(find(rendered_sets["gpu-cluster"], "Deployment", WORKER))
    assert value(env, "MODEL_NAME") == "Qwen-Image"
    assert value(env, "MODEL_PATH") == "/models/Qwen-Image"
    assert value(env, "TASK_QUEUE_SIZE") == "4"
    assert value(env, "DRAIN_TIMEOUT_SECONDS") == "900"
    assert value(env, "LOG_FORMAT") == "json"
    assert value(env, "HF_HUB_OFFLINE") == "1"
    assert value(env, "PORT") == "8000"


def test_api_keys_and_prompt_rewrite_from_the_chart_secret(render_objects: Any) -> None:
    objs = render_objects(
        {
            "apiKeys": {"keys": ["k1", "k2"]},
            "promptRewrite": {
                "enabled": True,
                "baseUrl": "https://llm.example.com/v1",
                "model": "qwen-plus",
                "apiKey": "sk-test",
            },
        }
    )
    secret = find(objs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"api-keys": "k1,k2", "openai-api-key": "sk-test"}
    env = env_of(find(objs, "Deployment", ROUTER))
    name = secret["metadata"]["name"]
    assert env["API_KEYS"]["valueFrom"] == {"secretKeyRef": {"name": name, "key": "api-keys"}}
    assert env["OPENAI_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": name, "key": "openai-api-key"}
    }
    assert value(env, "ENABLE_PROMPT_REWRITE") == "true"
    assert value(env, "OPENAI_BASE_URL") == "https://llm.example.com/v1"
    assert value(env, "OPENAI_MODEL") == "qwen-plus"
    # A changed key restarts the routers.
    pod_annotations = find(objs, "Deployment", ROUTER)["spec"]["template"]["metadata"][
        "annotations"
    ]
    default_annotations = find(render_objects({}), "Deployment", ROUTER)["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert pod_annotations["checksum/secret"] != default_annotations["checksum/secret"]


def test_existing_secrets_are_referenced_not_created(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["gpu-cluster"]
    assert not [o for o in objs if o["kind"] == "Secret"]
    env = env_of(find(objs, "Deployment", ROUTER))
    assert env["API_KEYS"]["valueFrom"] == {
        "secretKeyRef": {"name": "qwen-image-api-keys", "key": "api-keys"}
    }


def test_download_prefix_follows_the_ingress(render_objects: Any) -> None:
    objs = render_objects(
        {
            "ingress": {
                "enabled": True,
                "hosts": ["img.example.com"],
                "tls": [{"secretName": "t", "hosts": ["img.example.com"]}],
            }
        }
    )
    env = env_of(find(objs, "Deployment", ROUTER))
    assert value(env, "IMAGE_DOWNLOAD_URL_PREFIX") == "https://img.example.com/images"


# --- image storage -------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", ["default", "gpu-cluster"])
def test_images_pvc_is_mounted_at_image_output_dir(
    rendered_sets: dict[str, Objects], set_name: str
) -> None:
    objs = rendered_sets[set_name]
    router = find(objs, "Deployment", ROUTER)
    output_dir = value(env_of(router), "IMAGE_OUTPUT_DIR")
    mount = next(m for m in container(router)["volumeMounts"] if m["mountPath"] == output_dir)
    assert not mount.get("readOnly")
    volume = next(
        v for v in router["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    pvc = find(objs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_several_routers_share_a_read_write_many_claim(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["gpu-cluster"]
    pvc = find(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "nfs-client"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"


def test_read_write_once_with_several_routers_is_refused(render_objects: Any) -> None:
    with pytest.raises(Exception, match="ReadWriteMany"):
        render_objects({"router": {"replicaCount": 2}})
    with pytest.raises(Exception, match="ReadWriteMany"):
        render_objects({"router": {"autoscaling": {"enabled": True, "maxReplicas": 3}}})
    # An existing claim is the user's to size: it is used as given.
    objs = render_objects(
        {
            "router": {"replicaCount": 2},
            "imageStorage": {"persistence": {"existingClaim": "shared"}},
        }
    )
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    volumes = find(objs, "Deployment", ROUTER)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "images", "persistentVolumeClaim": {"claimName": "shared"}} in volumes


def test_without_persistence_images_live_in_an_empty_dir(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["cpu-dev"]
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    volumes = find(objs, "Deployment", ROUTER)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "images", "emptyDir": {}} in volumes


# --- network policy ------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_only_routers_and_scrapers_reach_workers(
    rendered_sets: dict[str, Objects], set_name: str
) -> None:
    objs = rendered_sets[set_name]
    router_labels = pod_labels(find(objs, "Deployment", ROUTER))
    worker_labels = pod_labels(find(objs, "Deployment", WORKER))
    policy = find(objs, "NetworkPolicy", WORKER)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    target = policy["spec"]["podSelector"]["matchLabels"]
    assert selects(target, worker_labels) and not selects(target, router_labels)

    from_router, from_metrics = policy["spec"]["ingress"]
    peer = from_router["from"][0]["podSelector"]["matchLabels"]
    assert from_router["from"] == [{"podSelector": {"matchLabels": peer}}]
    assert selects(peer, router_labels) and not selects(peer, worker_labels)
    assert from_router["ports"] == [{"port": "http", "protocol": "TCP"}]
    worker = find(objs, "Deployment", WORKER)
    assert port_number(worker, "http") == 8000
    # Scrapers reach the metrics port, which the worker serves apart from its job API.
    assert from_metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert port_number(worker, "metrics") == int(value(env_of(worker), "METRICS_PORT")) == 9090
    assert from_metrics["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]


def test_router_policy_lets_ingress_and_scrapers_in(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["gpu-cluster"]
    policy = find(objs, "NetworkPolicy", ROUTER)
    assert selects(
        policy["spec"]["podSelector"]["matchLabels"], pod_labels(find(objs, "Deployment", ROUTER))
    )
    rule, scrapers = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    namespaces = [
        p["namespaceSelector"]["matchLabels"] for p in rule["from"] if "namespaceSelector" in p
    ]
    assert namespaces == [{"kubernetes.io/metadata.name": "ingress-nginx"}]
    # Scrapers reach the metrics port alone, which the API port (and the ingress) lacks.
    assert scrapers["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert scrapers["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]
    router = find(objs, "Deployment", ROUTER)
    assert port_number(router, "metrics") == int(value(env_of(router), "METRICS_PORT"))
    assert port_number(router, "metrics") != port_number(router, "http")
    # The helm test pod belongs to the release, so it still reaches the router.
    test_pod = find(objs, "Pod")
    release_peer = next(p for p in rule["from"] if "podSelector" in p)
    assert selects(release_peer["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])


def test_network_policy_can_be_turned_off(render_objects: Any) -> None:
    objs = render_objects({"networkPolicy": {"enabled": False}})
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]


# --- ingress -------------------------------------------------------------------------------


def test_ingress_waits_longer_than_a_task(rendered_sets: dict[str, Objects]) -> None:
    ingress = find(rendered_sets["gpu-cluster"], "Ingress")
    annotations = ingress["metadata"]["annotations"]
    task_timeout = VALUE_SETS["gpu-cluster"]["taskTimeoutSeconds"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) > task_timeout
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 1024**2 > 1024**2  # above the router's limit
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "qwen-image-tls", "hosts": ["qwen-image.example.com"]}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "qwen-image.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": ROUTER, "port": {"name": "http"}}


def test_ingress_passes_streamed_events_on_unbuffered(rendered_sets: dict[str, Objects]) -> None:
    annotations = find(rendered_sets["gpu-cluster"], "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_ingress_timeouts_follow_the_task_timeout(render_objects: Any) -> None:
    values = {
        "taskTimeoutSeconds": 1800,
        "router": {"terminationGracePeriodSeconds": 1900, "maxRequestBodyBytes": 5 * 1024**2},
        "ingress": {
            "enabled": True,
            "annotations": {"nginx.ingress.kubernetes.io/proxy-send-timeout": "5000"},
        },
    }
    annotations = find(render_objects(values), "Ingress")["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 1800
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "5000"  # user wins
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"][:-1]) > 5


def test_http_route_waits_longer_than_a_task(render_objects: Any) -> None:
    route = find(
        render_objects({"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}),
        "HTTPRoute",
    )
    timeouts = route["spec"]["rules"][0]["timeouts"]
    assert int(timeouts["request"].removesuffix("s")) > 600
    assert int(timeouts["backendRequest"].removesuffix("s")) > 600


# --- security ------------------------------------------------------------------------------


def pod_specs(objs: Objects) -> list[dict[str, Any]]:
    specs = [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"]
    return specs + [o["spec"] for o in objs if o["kind"] == "Pod"]


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_every_container_is_locked_down(rendered_sets: dict[str, Objects], set_name: str) -> None:
    specs = pod_specs(rendered_sets[set_name])
    # Router, each worker pool, the test pod.
    assert len(specs) == 2 + len(VALUE_SETS[set_name].get("workerPools", {})) + 1
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("deployment", [ROUTER, WORKER])
def test_writable_paths_are_volumes(rendered_sets: dict[str, Objects], deployment: str) -> None:
    d = find(rendered_sets["default"], "Deployment", deployment)
    mounts = {m["mountPath"] for m in container(d)["volumeMounts"]}
    env = env_of(d)
    writable = {"/tmp", value(env, "TMPDIR")}
    if deployment == WORKER:
        writable |= {"/cache", value(env, "HOME")}
        for name in ("XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
            assert value(env, name).startswith("/cache")
    assert writable <= mounts


# --- labels, selectors, scaling ------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_selectors_are_name_instance_component(
    rendered_sets: dict[str, Objects], set_name: str
) -> None:
    objs = rendered_sets[set_name]
    for d in (o for o in objs if o["kind"] == "Deployment"):
        match = d["spec"]["selector"]["matchLabels"]
        assert set(match) == SELECTOR_KEYS
        assert selects(match, pod_labels(d))
    for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
        assert set(pdb["spec"]["selector"]["matchLabels"]) == SELECTOR_KEYS
    for svc in (o for o in objs if o["kind"] == "Service"):
        assert set(svc["spec"]["selector"]) == SELECTOR_KEYS


def test_common_and_pod_labels_do_not_reach_selectors(render_objects: Any) -> None:
    objs = render_objects(
        {"commonLabels": {"team": "ml"}, "worker": {"podLabels": {"gpu": "h100"}}}
    )
    worker = find(objs, "Deployment", WORKER)
    assert worker["metadata"]["labels"]["team"] == "ml"
    assert pod_labels(worker)["gpu"] == "h100"
    assert set(worker["spec"]["selector"]["matchLabels"]) == SELECTOR_KEYS


def test_autoscalers_own_the_replica_counts(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["gpu-cluster"]
    assert "replicas" not in find(objs, "Deployment", WORKER)["spec"]
    assert "replicas" not in find(objs, "Deployment", ROUTER)["spec"]
    hpa = find(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": ROUTER,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)

    scaled = find(objs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == WORKER
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (3, 8)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "qwen_image_worker_queue_depth" in query and "qwen_image_worker_running_jobs" in query
    assert f'service="{WORKER}"' in query and 'namespace="qwen-image"' in query
    assert trigger["metadata"]["threshold"] == "2"

    replicas = find(rendered_sets["default"], "Deployment", WORKER)["spec"]["replicas"]
    assert replicas == 1


def test_gpu_cluster_runs_three_workers_and_two_routers(render_objects: Any) -> None:
    values = dict(VALUE_SETS["gpu-cluster"])
    values["router"] = values["router"] | {"autoscaling": {"enabled": False}}
    values["worker"] = values["worker"] | {"autoscaling": {"enabled": False}}
    objs = render_objects(values)
    assert find(objs, "Deployment", ROUTER)["spec"]["replicas"] == 2
    assert find(objs, "Deployment", WORKER)["spec"]["replicas"] == 3


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_disruption_budgets_follow_values(rendered_sets: dict[str, Objects], set_name: str) -> None:
    budgets = [o for o in rendered_sets[set_name] if o["kind"] == "PodDisruptionBudget"]
    expected = 0 if set_name == "cpu-dev" else 2
    assert len(budgets) == expected
    assert all(b["spec"]["maxUnavailable"] == 1 for b in budgets)


# --- images and the helm test --------------------------------------------------------------


def test_image_references(render_objects: Any, rendered_sets: dict[str, Objects]) -> None:
    default = rendered_sets["default"]
    assert container(find(default, "Deployment", ROUTER))["image"] == "qwen-image-router:0.1.0"
    digest = "sha256:" + "a" * 64
    objs = render_objects(
        {
            "imageRegistry": "registry.example.com/ml/",
            "imagePullSecrets": [{"name": "regcred"}],
            "router": {"image": {"tag": "1.2.3"}},
            "worker": {"image": {"digest": digest}},
        }
    )
    router, worker = find(objs, "Deployment", ROUTER), find(objs, "Deployment", WORKER)
    assert container(router)["image"] == "registry.example.com/ml/qwen-image-router:1.2.3"
    assert container(worker)["image"] == f"registry.example.com/ml/qwen-image-worker@{digest}"
    for d in (router, worker):
        assert d["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_helm_test_pod_calls_router_healthz(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["default"]
    pod = find(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    service = find(objs, "Service", ROUTER)
    url = f"http://{ROUTER}:{service['spec']['ports'][0]['port']}/healthz"
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "curl" and "--fail" in command and command[-1] == url
    assert service["spec"]["ports"][0]["targetPort"] == "http"
