"""uv.lock is what `make install` and both Dockerfiles install: it must say what pyproject.toml
asks for (`make lock` rewrites it), and the venv must hold exactly its versions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"UV_PROJECT_ENVIRONMENT": sys.prefix, "UV_OFFLINE": "1"}
    return subprocess.run(
        [str(UV), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_lock_matches_pyproject() -> None:
    checked = uv("lock", "--check")
    assert checked.returncode == 0, f"uv.lock is stale, run `make lock`:\n{checked.stderr}"


def test_venv_holds_the_locked_versions() -> None:
    # The project itself is installed editable: uv would rebuild it whenever a checkout
    # touches pyproject.toml, which says nothing about the versions installed.
    checked = uv("sync", "--frozen", "--inexact", "--all-extras", "--no-install-project", "--check")
    assert checked.returncode == 0, f"the venv differs from uv.lock:\n{checked.stderr}"
