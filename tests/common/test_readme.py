"""README documents every setting both services read, under the name the environment uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from qwen_image_router.settings import RouterSettings
from qwen_image_worker.settings import WorkerSettings

README = (Path(__file__).parents[2] / "README.md").read_text()


def env_names(settings: type[BaseSettings]) -> list[str]:
    names = []
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        names.append((alias if isinstance(alias, str) else name).upper())
    return names


@pytest.mark.parametrize("settings", [RouterSettings, WorkerSettings])
def test_every_environment_variable_is_in_the_readme(settings: type[BaseSettings]) -> None:
    missing = [name for name in env_names(settings) if f"`{name}`" not in README]
    assert not missing, f"README lacks {missing}"
