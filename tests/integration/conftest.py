from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Router + 2 demo-model workers, shared by a module's tests."""
    running = Stack(tmp_path_factory.mktemp("stack"), workers=2, TASK_QUEUE_SIZE="2").start()
    yield running
    running.stop()
