"""The Grafana dashboard and the alert rules speak the services' metric names."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from render_k8s_base import REPO_ROOT

from qwen_image_router.metrics import RouterMetrics
from qwen_image_worker.metrics import WorkerMetrics

MONITORING = REPO_ROOT / "k8s" / "monitoring"


def exported() -> set[str]:
    """The series names both services' registries export, labelled ones included."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix
        for registry in (RouterMetrics().registry, WorkerMetrics().registry)
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


EXPORTED = exported()
METRIC = re.compile(r"\bqwen_image_[a-z_]+")


def known(name: str) -> bool:
    return name in EXPORTED


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return loaded


def test_dashboard_queries_use_real_metrics() -> None:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and all(known(m) for m in used), sorted(m for m in used if not known(m))


def test_dashboard_has_the_operator_panels() -> None:
    panels = {p["title"]: p for p in dashboard()["panels"]}
    exprs = {title: " ".join(t["expr"] for t in p["targets"]) for title, p in panels.items()}
    assert "qwen_image_router_requests_total" in exprs["Requests by status"]
    latency = panels["Request latency"]["targets"]
    assert [t["legendFormat"] for t in latency] == ["p50", "p95", "p99"]
    assert all("histogram_quantile" in t["expr"] for t in latency)
    assert "qwen_image_worker_queue_depth" in exprs["Queue depth per worker"]
    assert "qwen_image_router_ready_workers" in exprs["Ready workers"]
    assert "qwen_image_worker_busy" in exprs["Worker busy"]
    assert "qwen_image_worker_running_jobs" in exprs["Jobs queued + running"]
    assert "qwen_image_router_queue_full_total" in exprs["Queue-full rate"]
    ids = [p["id"] for p in panels.values()]
    assert len(set(ids)) == len(ids)
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    assert all('namespace="$namespace"' in e for e in exprs.values())


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    return {r["alert"]: r for g in doc["spec"]["groups"] for r in g["rules"]}


def test_alerts_cover_availability_saturation_and_latency() -> None:
    alerts = rules()
    assert {"QwenImageNoReadyWorkers", "QwenImageQueueFull", "QwenImageHighLatency"} <= set(alerts)
    assert "qwen_image_router_ready_workers" in alerts["QwenImageNoReadyWorkers"]["expr"]
    assert "qwen_image_router_queue_full_total" in alerts["QwenImageQueueFull"]["expr"]
    assert (
        "qwen_image_router_request_duration_seconds_bucket"
        in alerts["QwenImageHighLatency"]["expr"]
    )
    for name, rule in alerts.items():
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        used = METRIC.findall(rule["expr"])
        assert all(known(m) for m in used), (name, used)
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
