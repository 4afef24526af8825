"""Packs a folder into a wheel: build.sh's FA3 extension, so pip can install it and
`importlib.metadata` (which diffusers asks whether flash_attn_3 is there) can find it.

    python pack_wheel.py TREE WHEEL_PATH SUMMARY REQUIREMENT

The name, version and build tag are WHEEL_PATH's: NAME-VERSION-BUILD-cp39-abi3-linux_x86_64.whl.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

TAG = "cp39-abi3-linux_x86_64"  # stable C ABI of Python and PyTorch, x86-64 Linux


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def pack(tree: Path, wheel: Path, summary: str, requirement: str) -> None:
    name, version, build, *tag = wheel.name.removesuffix(".whl").split("-")
    if "-".join(tag) != TAG or not build[:1].isdigit():
        raise SystemExit(f"{wheel.name}: not NAME-VERSION-BUILD-{TAG}.whl")
    info = f"{name}-{version}.dist-info"
    files = {
        path.relative_to(tree).as_posix(): path.read_bytes()
        for path in sorted(tree.rglob("*"))
        if path.is_file()
    }
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: {summary}\n"
        f"Requires-Dist: {requirement}\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: qwen-image-serving\nRoot-Is-Purelib: false\n"
        f"Build: {build}\nTag: {TAG}\n"
    ).encode()
    record = [record_line(path, data) for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    partial = wheel.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    partial.rename(wheel)


if __name__ == "__main__":
    tree_arg, wheel_arg, summary_arg, requirement_arg = sys.argv[1:]
    pack(Path(tree_arg), Path(wheel_arg), summary_arg, requirement_arg)
