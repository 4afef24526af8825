"""Fixtures: the chart rendered by the real Helm engine, once per session where possible."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from chart_helpers import VALUE_SETS, Objects
from render_k8s_base import NAMESPACE, RELEASE, objects, render


@pytest.fixture(scope="session")
def render_objects() -> Callable[..., Objects]:
    """Render values into objects (tests included) with release and namespace `qwen-image`."""

    def _render(values: dict[str, Any], *, name: str = RELEASE) -> Objects:
        return objects(render(values, name=name, namespace=NAMESPACE), include_tests=True)

    return _render


@pytest.fixture(scope="session")
def rendered_sets() -> dict[str, Objects]:
    """Each shipped value set rendered once for the whole session."""
    return {
        name: objects(render(values), include_tests=True) for name, values in VALUE_SETS.items()
    }
