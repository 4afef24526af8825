"""url-format images on disk: atomic writes, safe names, and a retention rule.

Names are random 128-bit hex, so a URL is as good as a capability and cannot be guessed.
A file appears under its final name only once complete (temp file, fsync, rename), so a
half-written image is never served. Retention deletes by age and, oldest first, by total
size, so the disk cannot fill; several router replicas may share the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwen_image_common.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

IMAGE_NAME = re.compile(r"[0-9a-f]{32}\.png")
_TEMP_NAME = re.compile(r"\.[0-9a-f]{32}\.png\.part")
# A temp file this old belongs to a write that died with its process.
_ABANDONED_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class SweepReport:
    removed: int
    kept: int
    kept_bytes: int


class ImageStorage:
    """Writes, finds and expires the PNGs of one folder. Its methods block: call them in a
    thread from async code (`save_async`, `sweep_async`)."""

    def __init__(
        self,
        directory: Path,
        max_age_seconds: float,
        max_total_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_age_seconds = max_age_seconds
        self.max_total_bytes = max_total_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # Bytes on disk as of the last sweep plus what this process wrote since: a cheap
        # check after each write, exact again at every sweep.
        self._estimated_bytes = 0

    def prepare(self) -> None:
        """Create the folder and learn its size; fails at start-up if it is not writable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK):
            raise PermissionError(f"image folder {self.directory} is not writable")
        self.sweep()

    def save(self, png: bytes) -> str:
        """Store one PNG; returns its file name."""
        name = f"{uuid.uuid4().hex}.png"
        temp = self.directory / f".{name}.part"
        try:
            with open(temp, "xb") as handle:
                handle.write(png)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.directory / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        with self._lock:
            self._estimated_bytes += len(png)
            over = self._estimated_bytes > self.max_total_bytes
        if over:
            self.sweep()
        return name

    async def save_async(self, png: bytes) -> str:
        return await asyncio.to_thread(self.save, png)

    def path_for(self, name: str) -> Path | None:
        """The file for a name this storage writes, if it exists; None for anything else.

        Only a regular file: this storage never writes links, so a link under an image's
        name (planted in a shared folder) is not followed to wherever it points.
        """
        if not IMAGE_NAME.fullmatch(name):
            return None
        path = self.directory / name
        try:
            mode = path.lstat().st_mode
        except OSError:
            return None
        return path if stat.S_ISREG(mode) else None

    def sweep(self) -> SweepReport:
        """Delete images past their age, then the oldest while the total is too large."""
        with self._lock:
            now = self._clock()
            images: list[tuple[float, int, Path]] = []
            removed = 0
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    is_image = IMAGE_NAME.fullmatch(entry.name) is not None
                    if not is_image and not _TEMP_NAME.fullmatch(entry.name):
                        continue
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    age = now - stat.st_mtime
                    if is_image and age <= self.max_age_seconds:
                        images.append((stat.st_mtime, stat.st_size, Path(entry.path)))
                    elif is_image or age > _ABANDONED_TEMP_SECONDS:
                        removed += _remove(Path(entry.path))
            images.sort()
            total = sum(size for _, size, _ in images)
            kept = len(images)
            for _, size, path in images:
                if total <= self.max_total_bytes:
                    break
                removed += _remove(path)
                total -= size
                kept -= 1
            self._estimated_bytes = total
        if removed:
            logger.info(
                "image retention removed %d files; %d kept (%d bytes)", removed, kept, total
            )
        return SweepReport(removed=removed, kept=kept, kept_bytes=total)

    async def sweep_async(self) -> SweepReport:
        return await asyncio.to_thread(self.sweep)


def _remove(path: Path) -> int:
    """1 if this call removed the file; another replica may have been first."""
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


class RetentionTask:
    """Runs the storage's sweep every `interval` seconds until stopped."""

    def __init__(self, storage: ImageStorage, interval: float) -> None:
        self._storage = storage
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="image-retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._storage.sweep_async()
            except OSError:
                logger.exception("image retention sweep failed")


def sweep_interval(max_age_seconds: float) -> float:
    """Often enough that files outlive their age by at most a tenth of it, at most a minute."""
    return min(60.0, max(1.0, max_age_seconds / 10))
