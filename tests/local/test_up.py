"""`qwen-image up` as a user starts it: what it runs by default, and flags that cannot work
refused before anything runs."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image

from qwen_image_local.supervisor import plan_stack
from support.processes import Service, answers, free_port, wait_until
from support.stack import router_ready_workers

EDITOR = "Qwen-Image-Edit-2509"


def test_a_router_port_among_the_worker_ports_is_refused_naming_the_flags() -> None:
    # Worker 1 of two would take 6102, the router's port.
    done = subprocess.run(
        [sys.executable, "-m", "qwen_image_local", "up", "--port", "6102", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--port 6102 is also worker 1's port" in done.stderr
    assert "--worker-base-port" in done.stderr
    assert "started" not in done.stderr


def served(
    gpus: int, env: dict[str, str], workers: int | None = None, edit_workers: int | None = None
) -> list[tuple[str, str, str]]:
    """Each worker `up` would run: its model name, MODEL_PATH (none: the generator's
    default) and GPU ('' on the CPU)."""
    specs = plan_stack(6002, workers, 6101, "0.0.0.0", edit_workers, gpus=gpus, env=env)
    return [
        (spec.model, spec.env.get("MODEL_PATH", ""), spec.env.get("CUDA_VISIBLE_DEVICES", ""))
        for spec in specs
        if spec.model
    ]


@pytest.mark.parametrize(
    ("gpus", "env", "workers", "edit_workers", "expected"),
    [
        # The CPU demo: the demo generator and the demo editor.
        (0, {}, None, None, [("Qwen-Image", "", ""), (EDITOR, "demo-edit", "")]),
        (0, {}, None, 0, [("Qwen-Image", "", "")]),
        # A real generator on the CPU gets an editor only of EDIT_MODEL_PATH.
        (0, {"MODEL_PATH": "/m/gen"}, None, None, [("Qwen-Image", "", "")]),
        (0, {"EDIT_MODEL_PATH": "/m/ed"}, 2, None,
         [("Qwen-Image", "", "")] * 2 + [(EDITOR, "/m/ed", "")]),
        # GPUs: no editor without EDIT_MODEL_PATH, so never twice the GPUs.
        (4, {}, None, None, [("Qwen-Image", "", str(i)) for i in range(4)]),
        # With it the GPUs are split: half each, or what --workers leaves.
        (4, {"EDIT_MODEL_PATH": "/m/ed"}, None, None,
         [("Qwen-Image", "", "0"), ("Qwen-Image", "", "1"),
          (EDITOR, "/m/ed", "2"), (EDITOR, "/m/ed", "3")]),
        (4, {"EDIT_MODEL_PATH": "/m/ed"}, 3, None,
         [("Qwen-Image", "", str(i)) for i in range(3)] + [(EDITOR, "/m/ed", "3")]),
        (3, {"EDIT_MODEL_PATH": "/m/ed", "NUM_GPUS_TO_USE": "2"}, None, None,
         [("Qwen-Image", "", "0"), (EDITOR, "/m/ed", "1")]),
        (1, {"EDIT_MODEL_PATH": "/m/ed"}, None, None, [("Qwen-Image", "", "0")]),
        (2, {"EDIT_MODEL_PATH": "/m/ed"}, None, 0,
         [("Qwen-Image", "", "0"), ("Qwen-Image", "", "1")]),
        (2, {"MODEL_NAME": "qwen-image-2512"}, None, 1,
         [("qwen-image-2512", "", "0"), (EDITOR, "demo-edit", "1")]),
    ],
)  # fmt: skip
def test_what_up_serves_by_default_and_how_the_gpus_are_split(
    gpus: int,
    env: dict[str, str],
    workers: int | None,
    edit_workers: int | None,
    expected: list[tuple[str, str, str]],
) -> None:
    assert served(gpus, env, workers, edit_workers) == expected


def test_more_workers_than_gpus_is_refused_naming_both_counts() -> None:
    with pytest.raises(SystemExit, match=r"1 generator and 2 edit worker.* 2 GPUs are visible"):
        served(2, {}, workers=1, edit_workers=2)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Service]]:
    """`qwen-image up` with no flags but the ports, on this CPU-only machine."""
    directory: Path = tmp_path_factory.mktemp("up")
    port, base = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    service = Service(
        ["up", "--port", str(port), "--worker-base-port", str(base), "--host", "127.0.0.1"],
        {"IMAGE_OUTPUT_DIR": str(directory / "images"), "WARMUP_SIZE_PIXELS": "64"},
        directory / "up.log",
    )
    service.start()
    try:
        for worker_port in (base, base + 1):
            wait_until(
                lambda p=worker_port: answers(f"http://127.0.0.1:{p}/readyz"), 120, "workers"
            )
        wait_until(lambda: answers(url + "/readyz"), 30, "the router")
        # Its readyz needs one ready worker: wait until it has polled both.
        wait_until(lambda: router_ready_workers(url) == 2, 30, "the router to see both workers")
        yield url, service
    except AssertionError:
        raise AssertionError(f"up did not start; its log:\n{service.log()}") from None
    finally:
        service.stop()


def test_up_serves_the_generator_and_the_editor_by_default(
    defaults: tuple[str, Service],
) -> None:
    url, service = defaults
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        assert sorted(model.id for model in client.models.list()) == ["Qwen-Image", EDITOR]
        fast = {"num_inference_steps": 2, "seed": 5}
        made = client.images.generate(prompt="a kite", size="256x256", extra_body=fast)
        assert made.data is not None and made.data[0].b64_json
        picture = io.BytesIO()
        Image.new("RGB", (64, 48), (20, 120, 200)).save(picture, format="PNG")
        edited = client.images.edit(
            model=EDITOR,
            image=("sky.png", picture.getvalue(), "image/png"),
            prompt="add a kite",
            size="256x256",
            extra_body=fast,
        )
        assert edited.data is not None and edited.data[0].b64_json
    log = service.log()
    # The start-up log says where to send requests and which worker serves which model.
    assert f"serving {url}/v1:" in log
    assert "Qwen-Image: worker-0" in log
    assert f"{EDITOR}: edit-worker-0" in log
