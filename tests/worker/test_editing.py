"""The edit pipeline on the worker: the demo editor, loading by model_index.json, EditEngine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions
from PIL import Image

from qwen_image_worker.engine.base import edit_output_size
from qwen_image_worker.engine.demo_edit_model import build_demo_edit_pipeline
from qwen_image_worker.engine.editing import EditEngine
from qwen_image_worker.engine.loading import load_pipeline
from qwen_image_worker.engine.model_kind import pipeline_kind

from .conftest import spec


def picture(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def saved_editor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("editor") / "model"
    build_demo_edit_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def editor(saved_editor: Path) -> EditEngine:
    torch.set_num_threads(1)
    return EditEngine(load_pipeline(str(saved_editor), torch.device("cpu")))


def test_template_prefix_is_exactly_what_the_edit_pipeline_drops() -> None:
    pipe = build_demo_edit_pipeline()
    prompt = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>make it blue"
    full = pipe.tokenizer(pipe.prompt_template_encode.format(prompt))["input_ids"]
    prompt_ids = pipe.tokenizer(prompt)["input_ids"]
    drop = pipe.prompt_template_encode_start_idx
    assert full[drop : drop + len(prompt_ids)] == prompt_ids


def test_the_one_picture_editor_keeps_its_picture_after_what_it_drops() -> None:
    # QwenImageEditPipeline's template puts the picture at the start of the user's turn;
    # the real model's embeddings keep it, so the demo's must too.
    pipe = build_demo_edit_pipeline(pipeline_class=QwenImageEditPipeline)
    full = pipe.tokenizer(pipe.prompt_template_encode.format("make it blue"))["input_ids"]
    kept = pipe.tokenizer.convert_ids_to_tokens(full[pipe.prompt_template_encode_start_idx :])
    assert kept[:4] == ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "m"]


def test_the_saved_folder_names_its_pipeline_and_loads_as_the_editor(
    saved_editor: Path, editor: EditEngine
) -> None:
    assert pipeline_kind(str(saved_editor)).task == "edit"
    assert isinstance(editor.pipe, QwenImageEditPlusPipeline)


def test_an_unknown_pipeline_class_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(RuntimeError, match="holds a FluxPipeline"):
        pipeline_kind(str(tmp_path))


@pytest.mark.parametrize(
    "aspect", [(1, 1), (3, 2), (2, 3), (16, 9), (9, 16), (4, 3), (4, 1), (1, 4)]
)
def test_default_edit_size_is_the_pipelines_own_choice(aspect: tuple[int, int]) -> None:
    width, height = 300 * aspect[0], 300 * aspect[1]
    assert edit_output_size(width, height) == calculate_dimensions(1024 * 1024, width / height)


def test_a_very_long_picture_keeps_both_sides_within_bounds() -> None:
    width, height = edit_output_size(10_000, 100)
    assert width <= 2048 and 32 <= height < 64


def test_the_editor_is_the_same_model_built_or_loaded(editor: EditEngine) -> None:
    built = EditEngine(build_demo_edit_pipeline())
    job = spec(seed=5, width=64, height=48, num_inference_steps=2, pictures=(picture(96, 64, 1),))
    ours = np.asarray(built.generate(job, lambda: False))
    theirs = np.asarray(editor.generate(job, lambda: False))
    assert ours.shape == (48, 64, 3)
    assert np.array_equal(ours, theirs)


def test_the_pictures_change_the_edit(editor: EditEngine) -> None:
    one = spec(seed=5, width=64, height=64, num_inference_steps=2, pictures=(picture(64, 64, 1),))
    other = spec(seed=5, width=64, height=64, num_inference_steps=2, pictures=(picture(64, 64, 2),))
    two = spec(
        seed=5,
        width=64,
        height=64,
        num_inference_steps=2,
        pictures=(picture(64, 64, 1), picture(80, 48, 3)),
    )
    made = [np.asarray(editor.generate(job, lambda: False)) for job in (one, other, two)]
    assert not np.array_equal(made[0], made[1])
    assert not np.array_equal(made[0], made[2])


def test_an_editor_makes_one_image_a_call(editor: EditEngine) -> None:
    assert editor.batch_size(spec()) == 1


def test_edit_previews_are_the_outputs_alone_and_approach_it(editor: EditEngine) -> None:
    # The pipeline feeds the pictures' latents beside the output's; the step callback and
    # the scheduler see the output's only, so a preview decodes at the output's size.
    job = spec(seed=5, width=64, height=48, num_inference_steps=8, pictures=(picture(96, 96, 1),))
    plain = np.asarray(editor.generate(job, lambda: False), dtype=np.float64)
    previews: list[tuple[int, int, Image.Image]] = []
    streamed = editor.generate_batch(
        [replace(job, partial_images=3)],
        lambda: False,
        lambda position, index, image: previews.append((position, index, image)),
    )[0]
    assert np.array_equal(np.asarray(streamed, dtype=np.float64), plain)
    assert [(position, index) for position, index, _ in previews] == [(0, 0), (0, 1), (0, 2)]
    assert all(image.size == (64, 48) for _, _, image in previews)
    distances = [
        np.abs(np.asarray(image, dtype=np.float64) - plain).mean() for *_, image in previews
    ]
    assert distances[0] > distances[1] > distances[2] > 0
