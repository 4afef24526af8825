"""Suite-wide collection rules, and fixtures more than one test folder uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.k8s_api_stub import EndpointSliceApiStub


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only when a marker expression names them (`-m gpu` on the GPU
    machine). Elsewhere they are deselected, not skipped: a CPU run neither fails on them nor
    reports them as if they had been considered."""
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
        config.hook.pytest_deselected(items=gpu)


@pytest.fixture
def api() -> Iterator[EndpointSliceApiStub]:
    """A running EndpointSlice list/watch stub (tests/support/k8s_api_stub.py)."""
    stub = EndpointSliceApiStub()
    stub.start()
    yield stub
    stub.stop()
