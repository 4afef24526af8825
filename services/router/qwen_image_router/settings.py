"""The router's configuration: read once from the environment, checked before serving."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qwen_image_router.scheduling.balancer import SchedulingPolicy

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_http_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


class RouterSettings(BaseSettings):
    """Every knob of the router, named as the environment names it (see README)."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(6002, ge=1, le=65535, description="Port to listen on.")
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="When set, /metrics is served on this port instead of PORT, so an ingress "
        "in front of PORT never exposes it; 0: on PORT.",
    )
    enable_api_docs: bool = Field(
        True, description="Serve /docs, /redoc and /openapi.json on PORT; false: 404."
    )
    request_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A connection must send a request's headers within this many seconds of "
        "opening or of the request's first byte, or it is closed.",
    )
    request_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A request's whole body must arrive within this many seconds of its "
        "headers, or the connection is closed.",
    )
    log_level: str = Field("INFO", description="Python log level name.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: plain lines; json: one JSON object a line."
    )

    model_name: str = Field(
        "Qwen-Image",
        min_length=1,
        description="The served model's name; requests naming another model get a 400 "
        "(compared case-insensitively).",
    )
    task_timeout_seconds: float = Field(
        600.0,
        gt=0,
        validation_alias="TASK_TIMEOUT",
        description="Bound on a whole generation request (rewrite, queueing, inference), "
        "in seconds; past it the client gets 500 `Task timeout` and the worker cancels.",
    )

    image_output_dir: Path = Field(
        Path("./data/images"), description="Where url-format PNGs are written and served from."
    )
    image_download_url_prefix: str | None = Field(
        None,
        description="Public base of image URLs (`<prefix>/<file>`); unset: built from the "
        "request's own base URL plus `images/`.",
    )
    image_retention_seconds: float = Field(
        86400.0, gt=0, description="Stored images older than this are deleted."
    )
    image_retention_max_bytes: int = Field(
        10 * 1024**3,
        gt=0,
        description="When stored images exceed this total, the oldest are deleted first.",
    )

    enable_prompt_rewrite: bool = Field(
        False, description="Enrich prompts through an OpenAI-compatible chat API first."
    )
    openai_api_key: SecretStr | None = Field(
        None,
        repr=False,
        description="Key for the chat API; unset sends a placeholder (for servers without auth).",
    )
    openai_base_url: str | None = Field(
        None, description="Base URL of the chat API, e.g. http://llm:8000/v1; unset: OpenAI's."
    )
    openai_model: str | None = Field(
        None, description="Chat model that rewrites prompts; required with the rewrite on."
    )
    prompt_rewrite_timeout_seconds: float = Field(
        20.0, gt=0, description="Bound on one rewrite call; past it the original prompt is used."
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Comma-separated keys; when any is set, /v1/* needs `Authorization: "
        "Bearer <key>`. Empty: no authentication (the spec's default).",
    )
    max_request_body_bytes: int = Field(
        1024**2, gt=0, description="Larger request bodies get 413 without being read."
    )
    max_edit_body_bytes: int = Field(
        48 * 1024**2,
        gt=0,
        description="The same for /v1/images/edits, whose bodies carry up to 3 pictures.",
    )

    discovery: Literal["static", "kubernetes"] = Field(
        "static", description="Where the worker set comes from."
    )
    worker_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated worker base URLs, for DISCOVERY=static.",
    )
    worker_service_name: str | None = Field(
        None,
        description="The workers' Service, or comma-separated Services (one a pool); their "
        "EndpointSlices list the workers (DISCOVERY=kubernetes).",
    )
    worker_namespace: str | None = Field(
        None,
        description="Namespace of the workers; unset: the router pod's own, else `default`.",
    )
    worker_port_name: str = Field(
        "http", min_length=1, description="Name of the workers' port in their EndpointSlices."
    )
    kubeconfig: str | None = Field(
        None, description="Kubeconfig file for discovery; unset: in-cluster configuration."
    )

    load_poll_interval_seconds: float = Field(
        0.5, gt=0, description="How often every worker's load is polled."
    )
    load_stale_after_seconds: float = Field(
        3.0,
        gt=0,
        description="A load report older than this counts as unknown: the worker gets no jobs.",
    )

    scheduling_policy: SchedulingPolicy = Field(
        "least-loaded",
        description="How a worker is chosen among the ready ones with room: least-loaded "
        "(the default), or round-robin / random (for comparison; see docs/reliability.md).",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("api_keys", "worker_urls", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("worker_urls")
    @classmethod
    def _worker_urls_are_urls(cls, urls: list[str]) -> list[str]:
        return [_check_http_url(url, "every worker URL") for url in urls]

    @field_validator("image_download_url_prefix", "openai_base_url")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return _check_http_url(value.strip(), "the URL")

    @field_validator("openai_model", "worker_service_name", "worker_namespace", "kubeconfig")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> RouterSettings:
        if self.discovery == "static" and not self.worker_urls:
            raise ValueError("WORKER_URLS must list at least one worker when DISCOVERY=static")
        if self.discovery == "kubernetes" and self.worker_service_name is None:
            raise ValueError("WORKER_SERVICE_NAME is required when DISCOVERY=kubernetes")
        if self.enable_prompt_rewrite and self.openai_model is None:
            raise ValueError("OPENAI_MODEL is required when ENABLE_PROMPT_REWRITE is true")
        if self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT (or be 0: /metrics on PORT)")
        if self.load_stale_after_seconds <= self.load_poll_interval_seconds:
            raise ValueError(
                "LOAD_STALE_AFTER_SECONDS must be longer than LOAD_POLL_INTERVAL_SECONDS, "
                "or every load report would count as stale"
            )
        return self
