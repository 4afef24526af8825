"""One router in front of one simulated worker, shared by the bad-input tests.

The worker's simulated steps take no time, so valid input gets its images at once and
any 5xx would be the router's own failure, never a full queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.fault_stack import Proc, start_router, start_worker


@pytest.fixture(scope="session")
def fuzz_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="session")
def fuzz_router(fuzz_folder: Path) -> Iterator[Proc]:
    worker = start_worker(fuzz_folder, SIMULATED_STEP_SECONDS="0", TASK_QUEUE_SIZE="64")
    router = start_router(fuzz_folder, [worker.url])
    yield router
    router.stop()
    worker.stop()


@pytest.fixture(scope="session")
def images_dir(fuzz_router: Proc, fuzz_folder: Path) -> Path:
    """The router's IMAGE_OUTPUT_DIR (start_router's default)."""
    return fuzz_folder / "images"
