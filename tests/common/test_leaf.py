"""services/common is a leaf: importing all of it loads neither service nor torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import qwen_image_common


def test_importing_every_common_module_loads_no_service_and_no_torch() -> None:
    package = Path(qwen_image_common.__file__).parent
    modules = sorted(f"qwen_image_common.{p.stem}" for p in package.glob("*.py"))
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'qwen_image_router', 'qwen_image_worker', 'qwen_image_local')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
