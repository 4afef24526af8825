"""The public API's request and response bodies (DESIGN.md §2, the user's spec).

Types are strict: "5" is no integer and `true` no number. Fields this API does not know
(OpenAI's `style`, `moderation`, ...) are accepted and ignored, and `null` means "the
default", as OpenAI's own API and SDK treat it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from qwen_image_common.contract import MAX_IMAGES_PER_JOB, MAX_PARTIAL_IMAGES, MAX_PROMPT_CHARS
from qwen_image_common.encoding import DEFAULT_COMPRESSION, ImageFormat

Size = Literal["256x256", "512x512", "1024x1024"]
AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4"]
# Every value OpenAI's models take; none changes what Qwen-Image draws.
Quality = Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"]
Background = Literal["auto", "opaque", "transparent"]

SIZES: dict[str, tuple[int, int]] = {
    "256x256": (256, 256),
    "512x512": (512, 512),
    "1024x1024": (1024, 1024),
}
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1140),
    "3:4": (1140, 1472),
}

# Every image's seed (seed + i) stays a 32-bit unsigned value, which every RNG accepts.
MAX_SEED = 2**32 - 1


def _document_nulls(schema: dict[str, Any]) -> None:
    """The JSON schema says what `_null_means_default` does: every optional field takes null."""
    required = set(schema.get("required", ()))
    for name, field in schema["properties"].items():
        nullable = any(option.get("type") == "null" for option in field.get("anyOf", ()))
        if name not in required and not nullable:
            schema["properties"][name] = {"anyOf": [field, {"type": "null"}]}


class ImageGenerationRequest(BaseModel):
    """POST /v1/images/generations."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=_document_nulls)

    model: str | None = Field(
        None, description="Must name the served model (any letter case); default: it."
    )
    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="What to draw; not blank.",
        # For the OpenAPI document only; `_prompt_not_blank` enforces it with a clearer message.
        json_schema_extra={"minLength": 1, "pattern": r"\S"},
    )
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_JOB, description="Number of images.")
    size: Size = "1024x1024"
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: str | None = Field(None, description="Caller's end-user id; not used to generate.")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Image i uses seed + i; random when absent. seed + n - 1 <= 2**32 - 1.",
    )
    guidance_scale: float = Field(4.0, ge=3.0, le=6.0, description="True CFG scale.")
    num_inference_steps: int = Field(50, ge=1, le=50)
    aspect_ratio: AspectRatio | None = Field(
        None, description="Exact output size by ratio; wins over `size`."
    )
    output_format: ImageFormat = Field("png", description="File format of every image.")
    output_compression: int = Field(
        DEFAULT_COMPRESSION, ge=0, le=100, description="Quality of jpeg and webp (png: ignored)."
    )
    quality: Quality = Field("auto", description="Accepted and echoed; changes nothing.")
    background: Background = Field(
        "auto", description="Qwen-Image makes opaque pictures: transparent is refused."
    )
    stream: bool = Field(
        False, description="Answer with server-sent events: partial images, then each image."
    )
    partial_images: int = Field(
        0, ge=0, le=MAX_PARTIAL_IMAGES, description="Previews per image of a streamed answer."
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "prompt"}
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("must not be empty")
        return prompt

    @field_validator("seed")
    @classmethod
    def _last_seed_fits(cls, seed: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n")
        if seed is not None and isinstance(n, int) and seed + n - 1 > MAX_SEED:
            raise ValueError(f"seed + n - 1 must be at most {MAX_SEED}")
        return seed

    @field_validator("background")
    @classmethod
    def _opaque(cls, background: str) -> str:
        if background == "transparent":
            raise ValueError("Qwen-Image makes opaque pictures; use opaque or auto")
        return background

    def dimensions(self) -> tuple[int, int]:
        """Width and height of every image: the aspect ratio's if given, else the size's."""
        if self.aspect_ratio is not None:
            return ASPECT_RATIOS[self.aspect_ratio]
        return SIZES[self.size]

    def job_size(self) -> tuple[int, int] | None:
        """The exact size the worker makes; None lets an edit pipeline choose."""
        return self.dimensions()


class ImageEditRequest(ImageGenerationRequest):
    """POST /v1/images/edits: the same fields as form fields, so "2" is an integer. Without
    `size` or `aspect_ratio` the output takes the last picture's aspect at about one
    megapixel, as Qwen-Image-Edit chooses ("auto" says the same)."""

    model_config = ConfigDict(strict=False, extra="ignore")

    size: Literal["256x256", "512x512", "1024x1024", "auto"] | None = None  # type: ignore[assignment]
    model: str | None = Field(
        None, description="Must name a served edit model (any letter case); default: it."
    )

    def job_size(self) -> tuple[int, int] | None:
        if self.aspect_ratio is None and self.size in (None, "auto"):
            return None
        return self.dimensions()

    def dimensions(self) -> tuple[int, int]:
        """Only for a request that names its size (`job_size` is not None)."""
        if self.aspect_ratio is not None:
            return ASPECT_RATIOS[self.aspect_ratio]
        assert self.size not in (None, "auto")
        return SIZES[self.size]


class ImageData(BaseModel):
    b64_json: str | None = Field(
        None, description="The image file, base64 (response_format=b64_json)."
    )
    url: str | None = Field(None, description="Where the file is served (response_format=url).")
    revised_prompt: str | None = Field(None, description="The prompt after rewriting, if any.")


class ImagesResponse(BaseModel):
    """OpenAI's answer: the images and, as its API does, the settings they were made with."""

    created: int = Field(description="Unix time of the answer.")
    data: list[ImageData]
    output_format: ImageFormat
    size: str = Field(description="WIDTHxHEIGHT of every image (the aspect ratio's, if given).")
    quality: Quality = Field(description="As asked; Qwen-Image has one quality.")
    background: Literal["opaque"] = Field(description="Always opaque.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"
    model: str


class ReadyStatus(BaseModel):
    status: Literal["ready"] = "ready"
    ready_workers: int
