"""Suite-wide collection rules."""

from __future__ import annotations

import pytest


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
