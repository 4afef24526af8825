"""Worker configuration: one pydantic-settings class, read once at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from qwen_image_common.logs import LogFormat


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    model_path: str = Field(
        default="demo",
        description="Diffusers folder of Qwen/Qwen-Image, or 'demo' (or empty) for the tiny "
        "built-in model with random weights.",
    )
    model_name: str = Field(default="Qwen-Image", description="Name reported in logs.")
    task_queue_size: int = Field(
        default=4, ge=0, le=1024, description="Jobs that may wait behind the running one."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the model runs; auto picks CUDA when available."
    )
    host: str = Field(default="0.0.0.0", description="Address the internal API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the internal API.")
    drain_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="On SIGTERM, how long running and queued jobs may take to finish.",
    )
    warmup_size_pixels: int = Field(
        default=256, ge=16, le=2048, description="Side of the warm-up image made before ready."
    )
    warmup_steps: int = Field(default=2, ge=1, le=50, description="Steps of the warm-up image.")
    log_level: str = Field(default="INFO", description="Python logging level.")
    log_format: LogFormat = Field(default="text", description="text, or json in production.")

    @property
    def uses_demo_model(self) -> bool:
        return self.model_path.strip().lower() in ("", "demo")
