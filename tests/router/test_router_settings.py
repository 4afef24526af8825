"""RouterSettings from the environment: names, parsing, and clear start-up failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_image_common.settings import load_settings
from qwen_image_router.discovery.factory import build_discovery, pod_namespace
from qwen_image_router.discovery.static import StaticDiscovery
from qwen_image_router.registry import WorkerRegistry
from qwen_image_router.settings import RouterSettings

ROUTER_ENV = (
    "MODEL_NAME",
    "TASK_TIMEOUT",
    "IMAGE_OUTPUT_DIR",
    "IMAGE_DOWNLOAD_URL_PREFIX",
    "ENABLE_PROMPT_REWRITE",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "PROMPT_REWRITE_TIMEOUT_SECONDS",
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "API_KEYS",
    "DISCOVERY",
    "WORKER_URLS",
    "WORKER_SERVICE_NAME",
    "WORKER_NAMESPACE",
    "WORKER_PORT_NAME",
    "KUBECONFIG",
    "LOAD_POLL_INTERVAL_SECONDS",
    "LOAD_STALE_AFTER_SECONDS",
    "IMAGE_RETENTION_SECONDS",
    "IMAGE_RETENTION_MAX_BYTES",
    "MAX_REQUEST_BODY_BYTES",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean router environment with one worker, so each test sets only what it checks."""
    for name in ROUTER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORKER_URLS", "http://127.0.0.1:6101")
    return monkeypatch


def test_environment_names_and_comma_lists(env: pytest.MonkeyPatch) -> None:
    env.setenv("TASK_TIMEOUT", "12.5")
    env.setenv("WORKER_URLS", " http://w1:6101/ ,http://w2:6102,, ")
    env.setenv("API_KEYS", "key-one, key-two")
    env.setenv("MODEL_NAME", "qwen-image-fast")
    env.setenv("IMAGE_DOWNLOAD_URL_PREFIX", "https://cdn.example.com/img/")
    env.setenv("ENABLE_PROMPT_REWRITE", "true")
    env.setenv("OPENAI_MODEL", "qwen-plus")
    env.setenv("OPENAI_API_KEY", "sk-secret")
    env.setenv("LOG_LEVEL", "debug")
    settings = RouterSettings()
    assert settings.task_timeout_seconds == 12.5
    assert settings.worker_urls == ["http://w1:6101", "http://w2:6102"]
    assert settings.api_keys == ["key-one", "key-two"]
    assert settings.model_name == "qwen-image-fast"
    assert settings.image_download_url_prefix == "https://cdn.example.com/img"
    assert settings.enable_prompt_rewrite is True
    assert settings.log_level == "DEBUG"
    assert "sk-secret" not in repr(settings) and "key-one" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TASK_TIMEOUT", "0", "TASK_TIMEOUT: Input should be greater than 0"),
        ("TASK_TIMEOUT", "soon", "TASK_TIMEOUT: Input should be a valid number"),
        ("PORT", "70000", "PORT: Input should be less than or equal to 65535"),
        ("WORKER_URLS", "w1:6101", "WORKER_URLS: every worker URL must be an http"),
        ("DISCOVERY", "consul", "DISCOVERY: Input should be 'static' or 'kubernetes'"),
        ("LOG_LEVEL", "chatty", "LOG_LEVEL: must be one of"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: Input should be 'text' or 'json'"),
        ("IMAGE_DOWNLOAD_URL_PREFIX", "cdn/img", "IMAGE_DOWNLOAD_URL_PREFIX: the URL must be"),
        ("MAX_REQUEST_BODY_BYTES", "-1", "MAX_REQUEST_BODY_BYTES: Input should be greater"),
        ("ENABLE_PROMPT_REWRITE", "maybe", "ENABLE_PROMPT_REWRITE: Input should be a valid bool"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(
    env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(RouterSettings, "router")
    assert message in str(stopped.value.code)
    assert str(stopped.value.code).startswith("invalid router configuration:")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"WORKER_URLS": ""}, "WORKER_URLS must list at least one worker"),
        ({"DISCOVERY": "kubernetes"}, "WORKER_SERVICE_NAME is required"),
        ({"ENABLE_PROMPT_REWRITE": "1"}, "OPENAI_MODEL is required"),
        (
            {"LOAD_POLL_INTERVAL_SECONDS": "5", "LOAD_STALE_AFTER_SECONDS": "3"},
            "LOAD_STALE_AFTER_SECONDS must be longer than LOAD_POLL_INTERVAL_SECONDS",
        ),
    ],
)
def test_inconsistent_settings_stop_start_up(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(RouterSettings, "router")
    assert message in str(stopped.value.code)


def test_kubernetes_discovery_needs_no_worker_urls(env: pytest.MonkeyPatch) -> None:
    env.delenv("WORKER_URLS")
    env.setenv("DISCOVERY", "kubernetes")
    env.setenv("WORKER_SERVICE_NAME", "qwen-image-worker")
    settings = RouterSettings()
    assert settings.worker_service_name == "qwen-image-worker"
    assert settings.worker_port_name == "http"


async def test_static_discovery_hands_the_registry_the_urls(env: pytest.MonkeyPatch) -> None:
    env.setenv("WORKER_URLS", "http://w1:6101,http://w2:6102/")
    discovery = build_discovery(RouterSettings())
    assert isinstance(discovery, StaticDiscovery)
    registry = WorkerRegistry()
    await discovery.start(registry)
    assert [w.endpoint.url for w in registry.workers()] == ["http://w1:6101", "http://w2:6102"]


def test_kubernetes_discovery_is_built_from_the_settings(env: pytest.MonkeyPatch) -> None:
    from qwen_image_router.discovery.kubernetes import KubernetesDiscovery

    env.delenv("WORKER_URLS")
    env.setenv("DISCOVERY", "kubernetes")
    env.setenv("WORKER_SERVICE_NAME", "qwen-image-worker")
    env.setenv("WORKER_NAMESPACE", "image-gen")
    assert isinstance(build_discovery(RouterSettings()), KubernetesDiscovery)


def test_the_pod_namespace_comes_from_the_service_account_file(tmp_path: Path) -> None:
    path = tmp_path / "namespace"
    assert pod_namespace(path) == "default"
    path.write_text("image-gen\n")
    assert pod_namespace(path) == "image-gen"
