"""The internal HTTP contract between router and gpu-worker.

One place for both sides, so the two services cannot drift apart. The public OpenAI-style
API lives in the router; this is the small job API behind it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from qwen_image_common.encoding import DEFAULT_COMPRESSION, ImageFormat

JOBS_PATH = "/internal/v1/jobs"
LOAD_PATH = "/internal/v1/load"

# Statuses the worker answers a job with, beyond 200. The router maps them onto the spec's
# public errors; 429 and 503 mean "try another worker", the others end the request.
STATUS_QUEUE_FULL = 429
STATUS_NOT_READY = 503
STATUS_TIMEOUT = 504
STATUS_INFERENCE_FAILED = 500

MAX_PROMPT_CHARS = 8192
MAX_IMAGES_PER_JOB = 4
MAX_SIDE_PIXELS = 2048
MAX_PARTIAL_IMAGES = 3
# Pixels of the image per transformer token: 8x VAE downsampling, then 2x2 patches.
PIXELS_PER_TOKEN = 16 * 16

# A streamed job's answer: one JobEvent as JSON a line, flushed as it happens.
EVENTS_MEDIA_TYPE = "application/x-ndjson"
# Qwen-Image-Edit-2509 takes one to three input pictures.
MAX_EDIT_PICTURES = 3

# What a worker's model does: make images from text, or change the pictures it is given.
Task = Literal["generate", "edit"]


class JobRequest(BaseModel):
    """One generation job: every image of it shares the prompt and settings, not the seed."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=64, description="Opaque id for logs.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    width: int | None = Field(
        default=None,
        ge=16,
        le=MAX_SIDE_PIXELS,
        description="Exact width of the result; for an edit, none lets the pipeline choose.",
    )
    height: int | None = Field(
        default=None, ge=16, le=MAX_SIDE_PIXELS, description="Exact height of the result."
    )
    num_inference_steps: int = Field(ge=1, le=50)
    guidance_scale: float = Field(ge=1.0, le=20.0, description="True CFG scale.")
    seeds: list[int] = Field(
        min_length=1,
        max_length=MAX_IMAGES_PER_JOB,
        description="One seed per image; image i of a request uses seed + i.",
    )
    timeout_seconds: float = Field(
        gt=0, description="Time left for the job when it was sent; past it the worker drops it."
    )
    output_format: ImageFormat = Field("png", description="The file format of every image.")
    output_compression: int = Field(
        DEFAULT_COMPRESSION, ge=0, le=100, description="Quality of jpeg and webp files."
    )
    stream: bool = Field(
        False, description="Answer with JobEvent lines (EVENTS_MEDIA_TYPE), not a JobResult."
    )
    partial_images: int = Field(
        0, ge=0, le=MAX_PARTIAL_IMAGES, description="Previews per image of a streamed job."
    )
    pictures: list[str] = Field(
        default_factory=list,
        max_length=MAX_EDIT_PICTURES,
        description="An edit's input pictures, base64 PNG files; none for text-to-image.",
    )

    @model_validator(mode="after")
    def _size_given_unless_edit(self) -> JobRequest:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height: give both or neither")
        if self.width is None and not self.pictures:
            raise ValueError("width and height: required without pictures")
        return self


class GeneratedImage(BaseModel):
    seed: int
    b64: str = Field(description="The image file in the job's output_format, base64-encoded.")


class JobResult(BaseModel):
    job_id: str
    images: list[GeneratedImage]
    queue_seconds: float = Field(description="Time the job waited before it ran.")
    run_seconds: float = Field(description="Time from start of the job to its last image file.")


class PartialImage(BaseModel):
    """A preview of one image of the job: the picture predicted at a step, in its format."""

    type: Literal["partial_image"] = "partial_image"
    image_index: int = Field(ge=0, description="Which image of the job (seed + image_index).")
    partial_image_index: int = Field(ge=0, lt=MAX_PARTIAL_IMAGES)
    b64: str


class JobCompleted(BaseModel):
    """The last event of a job that made its images."""

    type: Literal["completed"] = "completed"
    result: JobResult


class JobFailed(BaseModel):
    """The last event of a job that failed after its stream began: the status and detail a
    non-streamed job would have been answered with."""

    type: Literal["failed"] = "failed"
    status: int
    detail: str


JobEvent = Annotated[PartialImage | JobCompleted | JobFailed, Field(discriminator="type")]
JOB_EVENT: TypeAdapter[PartialImage | JobCompleted | JobFailed] = TypeAdapter(JobEvent)


class WorkerLoad(BaseModel):
    """What a worker reports of itself; the router learns its pools and schedules on it."""

    model: str = Field(default="Qwen-Image", description="The worker's MODEL_NAME.")
    task: Task = Field(default="generate", description="What its pipeline does.")
    max_pictures: int = Field(
        default=0,
        ge=0,
        le=MAX_EDIT_PICTURES,
        description="Input pictures a job takes at most: none for a generator; an editor "
        "reports its pipeline's (unreported: MAX_EDIT_PICTURES, Qwen-Image-Edit-2509's).",
    )
    ready: bool = Field(description="Model loaded, warmed up and not draining.")
    running: int = Field(ge=0, description="Jobs in the batch on the GPU now.")
    waiting: int = Field(ge=0, description="Jobs accepted and waiting for the GPU.")
    capacity: int = Field(
        ge=1,
        description="Running plus waiting jobs the worker accepts now: the running batch (one "
        "slot when idle) plus TASK_QUEUE_SIZE.",
    )

    @model_validator(mode="after")
    def _an_editor_takes_pictures(self) -> WorkerLoad:
        if self.task == "edit" and "max_pictures" not in self.model_fields_set:
            self.max_pictures = MAX_EDIT_PICTURES
        return self


class ErrorBody(BaseModel):
    """The spec's error shape, used by both services."""

    detail: str
