"""The demo editor with the default levers on a CUDA GPU, and the limits of CUDA graphs and
CFG's join raised past its pictures' tokens so both act: the stock edit's latents and
pixels, one and two pictures (graphs keyed by their shapes).

Selected with `-m gpu` on the GPU machine; a CPU run deselects them (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import VAE_IMAGE_SIZE

from qwen_image_worker.engine.acceleration import (
    Accelerated,
    Levers,
    accelerate,
)
from qwen_image_worker.engine.editing import EditEngine
from qwen_image_worker.engine.loading import load_pipeline
from qwen_image_worker.engine.model_kind import DEMO_EDIT_MODEL_PATH
from qwen_image_worker.settings import WorkerSettings

from .conftest import GRAPHED, assert_matches_stock, captured, spec
from .test_editing import picture

pytestmark = pytest.mark.gpu

# Room for two pictures' tokens beside the image's.
COVERS_TWO_PICTURES = 3 * VAE_IMAGE_SIZE


@pytest.fixture(scope="module")
def plain(cuda: torch.device) -> EditEngine:
    return EditEngine(load_pipeline(DEMO_EDIT_MODEL_PATH, cuda))


@pytest.fixture(scope="module")
def fast(cuda: torch.device) -> tuple[EditEngine, Accelerated]:
    pipe = load_pipeline(DEMO_EDIT_MODEL_PATH, cuda)
    settings = WorkerSettings.model_construct(
        cuda_graph_max_pixels=COVERS_TWO_PICTURES, paired_cfg_max_pixels=COVERS_TWO_PICTURES
    )
    done = accelerate(pipe, Levers.from_settings(settings))
    engine = EditEngine(pipe, warmup_sizes=[GRAPHED])
    engine.warm_up(spec(prompt="warm-up", width=GRAPHED[0], height=GRAPHED[1]))
    return engine, done


@pytest.mark.parametrize("pictures", [1, 2])
def test_an_accelerated_edit_matches_stock_with_graphs_and_cfg_joined(
    fast: tuple[EditEngine, Accelerated], plain: EditEngine, pictures: int
) -> None:
    engine, done = fast
    assert {"compile_transformer", "cuda_graphs", "paired_cfg"} <= set(done.active)
    assert done.forward is not None and done.paired is not None
    replayed, joined = done.forward.stats.replayed, done.paired.joined
    sources = (picture(64, 64, 1), picture(80, 48, 3))[:pictures]
    job = spec(seed=21, width=GRAPHED[0], height=GRAPHED[1], pictures=sources)
    with captured(engine) as ours:
        engine.generate(job, lambda: False)
    assert done.forward.stats.replayed > replayed and done.forward.stats.failed == 0
    assert done.paired.joined - joined == job.num_inference_steps
    assert_matches_stock(ours, plain, job)
