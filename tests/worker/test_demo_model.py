from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qwen_image_worker.engine.demo_model import build_demo_pipeline
from qwen_image_worker.engine.diffusers_engine import Engine
from qwen_image_worker.engine.loading import load_pipeline

from .conftest import spec


def test_template_prefix_is_exactly_what_the_pipeline_drops() -> None:
    pipe = build_demo_pipeline()
    template = pipe.prompt_template_encode
    drop = pipe.prompt_template_encode_start_idx
    prompt = "一只猫 and a dog"
    full = pipe.tokenizer(template.format(prompt))["input_ids"]
    prompt_ids = pipe.tokenizer(prompt)["input_ids"]
    assert full[drop : drop + len(prompt_ids)] == prompt_ids


def test_two_builds_hold_identical_weights() -> None:
    a = build_demo_pipeline().transformer.state_dict()
    b = build_demo_pipeline().transformer.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_demo_model_loads_through_model_path_and_gives_the_same_pixels(
    tmp_path: Path, engine: Engine
) -> None:
    build_demo_pipeline().save_pretrained(tmp_path / "model")
    loaded = Engine(load_pipeline(str(tmp_path / "model"), torch.device("cpu")))
    job = spec(seed=11)
    ours = np.asarray(engine.generate(job, lambda: False))
    theirs = np.asarray(loaded.generate(job, lambda: False))
    assert np.array_equal(ours, theirs)


def test_a_folder_that_is_no_model_gets_an_error_that_says_what_to_fix(tmp_path: Path) -> None:
    try:
        load_pipeline(str(tmp_path), torch.device("cpu"))
    except RuntimeError as exc:
        assert "missing model_index.json" in str(exc)
        assert "MODEL_PATH=demo" in str(exc)
    else:
        raise AssertionError("loading an empty folder must fail")
