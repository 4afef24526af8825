"""Settings loading for both services: a bad variable stops start-up with one readable line
per variable instead of a pydantic traceback."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def describe_settings_error(error: ValidationError, service: str) -> str:
    """Name each bad setting by its environment variable, for a start-up message."""
    lines = [f"invalid {service} configuration:"]
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["loc"]:
            lines.append(f"  {str(item['loc'][0]).upper()}: {message}")
        else:
            lines.append(f"  {message}")
    return "\n".join(lines)


def load_settings(settings_class: type[SettingsT], service: str) -> SettingsT:
    """Read the environment once; a bad value stops the process with a readable message."""
    try:
        return settings_class()
    except ValidationError as error:
        raise SystemExit(describe_settings_error(error, service)) from None
