"""Property-based tests of the router's validators: the request schema and its error text,
image names, and API-key matching. Bounded by max_examples, derandomized for CI."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from qwen_image_common.contract import MAX_IMAGES_PER_JOB, MAX_PROMPT_CHARS
from qwen_image_common.requests import describe_validation_errors
from qwen_image_router.api.auth import key_matches
from qwen_image_router.schemas import (
    ASPECT_RATIOS,
    MAX_SEED,
    SIZES,
    ImageGenerationRequest,
)
from qwen_image_router.storage import IMAGE_NAME, ImageStorage

BOUNDED = settings(max_examples=200, deadline=None, derandomize=True, database=None)

FIELDS = list(ImageGenerationRequest.model_fields)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies the spec says must be accepted (for the served model)."""
    n = draw(st.integers(1, MAX_IMAGES_PER_JOB))
    body: dict[str, Any] = {
        "prompt": draw(st.text(min_size=1, max_size=200).filter(lambda p: p.strip())),
    }
    optional = {
        "model": st.sampled_from(["Qwen-Image", "qwen-image", None]),
        "n": st.just(n),
        "size": st.sampled_from(list(SIZES)),
        "response_format": st.sampled_from(["b64_json", "url"]),
        "user": st.text(max_size=30),
        "negative_prompt": st.text(max_size=100),
        "seed": st.integers(0, MAX_SEED - n + 1),
        "guidance_scale": st.floats(3.0, 6.0),
        "num_inference_steps": st.integers(1, 50),
        "aspect_ratio": st.sampled_from(list(ASPECT_RATIOS)),
        "stream": st.booleans(),
        "partial_images": st.integers(0, 3),
        "output_format": st.sampled_from(["png", "jpeg", "webp"]),
        "output_compression": st.integers(0, 100),
        "quality": st.sampled_from(
            ["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"]
        ),
        "background": st.sampled_from(["auto", "opaque"]),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            body[name] = draw(values)
    return body


@BOUNDED
@given(valid_requests())
def test_every_valid_request_is_accepted_with_a_served_size(body: dict[str, Any]) -> None:
    request = ImageGenerationRequest.model_validate(body)
    width, height = request.dimensions()
    assert (width, height) in [*SIZES.values(), *ASPECT_RATIOS.values()]
    if "aspect_ratio" in body:
        assert (width, height) == ASPECT_RATIOS[body["aspect_ratio"]]
    seed = request.seed if request.seed is not None else 0
    assert seed >= 0 and seed + request.n - 1 <= MAX_SEED


@BOUNDED
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON_VALUES, max_size=8))
def test_any_json_object_validates_or_fails_naming_each_bad_field(body: dict[str, Any]) -> None:
    try:
        ImageGenerationRequest.model_validate(body)
    except ValidationError as error:
        message = describe_validation_errors(error.errors())
        assert message and "\n" not in message
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else ""
            assert field in FIELDS
            assert field in message


@BOUNDED
@given(
    st.sampled_from(["n", "num_inference_steps", "guidance_scale", "seed"]),
    st.integers(-(10**30), 10**30) | st.floats(allow_nan=True, allow_infinity=True),
)
def test_numbers_out_of_their_range_are_refused(field: str, value: float) -> None:
    limits = {
        "n": (1, MAX_IMAGES_PER_JOB),
        "num_inference_steps": (1, 50),
        "guidance_scale": (3.0, 6.0),
        "seed": (0, MAX_SEED),
    }
    low, high = limits[field]
    integral = field != "guidance_scale"
    fits = (
        (isinstance(value, int) or not integral)
        and value == value  # NaN fits nowhere
        and low <= value <= high
    )
    try:
        ImageGenerationRequest.model_validate({"prompt": "x", field: value})
    except ValidationError as error:
        assert not fits, (field, value)
        assert describe_validation_errors(error.errors()).startswith(f"{field}: ")
    else:
        assert fits, (field, value)


@BOUNDED
@given(
    st.text(max_size=MAX_PROMPT_CHARS + 50).filter(lambda p: len(p) > MAX_PROMPT_CHARS)
    | st.text(alphabet=string.whitespace, max_size=20)
)
def test_blank_or_overlong_prompts_are_refused(prompt: str) -> None:
    try:
        ImageGenerationRequest.model_validate({"prompt": prompt})
    except ValidationError as error:
        assert describe_validation_errors(error.errors()).startswith("prompt: ")
    else:
        raise AssertionError(f"accepted a prompt of {len(prompt)} characters: {prompt[:20]!r}")


@BOUNDED
@given(st.text(max_size=80))
def test_only_names_the_router_writes_can_be_served(name: str) -> None:
    storage = ImageStorage(Path("/nonexistent-image-folder"), 60.0, 1024)
    assert storage.path_for(name) is None  # nothing exists there, and no name escapes it
    if IMAGE_NAME.fullmatch(name):
        assert set(name[:32]) <= set("0123456789abcdef") and name.endswith(".png")
        assert "/" not in name and ".." not in name


KEYS = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=40),
    min_size=1,
    max_size=4,
)


@BOUNDED
@given(KEYS, st.text(max_size=50))
def test_a_key_matches_only_when_it_is_exactly_one_of_the_keys(
    keys: list[str], presented: str
) -> None:
    encoded = [key.encode() for key in keys]
    assert key_matches(f"Bearer {presented}", encoded) == (presented.strip() in keys)
    for key in keys:
        assert key_matches(f"Bearer {key}", encoded)
        assert key_matches(f"bearer {key}", encoded)  # the scheme is case-insensitive
        assert not key_matches(key, encoded)  # no scheme
        assert not key_matches(f"Basic {key}", encoded)
        assert not key_matches(f"Bearer {key}x", encoded) or f"{key}x" in keys
        assert not key_matches(f"Bearer {key[:-1]}", encoded) or key[:-1] in keys
