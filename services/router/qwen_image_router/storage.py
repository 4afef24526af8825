"""url-format images on disk: atomic writes, safe names, and a retention rule.

Names are random 128-bit hex, so a URL is as good as a capability and cannot be guessed.
A file appears under its final name only once complete (temp file, fsync, rename), so a
half-written image is never served. Retention deletes by age and, oldest first, by total
size, so the disk cannot fill; several router replicas may share the folder.

Saving never lists the folder: an index in memory (oldest first) knows what is stored and
how much, so a save over the size cap deletes the oldest at once whatever the folder holds.
The index is rebuilt from the folder at start-up and at every sweep, off the request path,
which also picks up what other replicas wrote.
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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from qwen_image_common.encoding import IMAGE_FORMATS
from qwen_image_common.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

_EXTENSIONS = "|".join(IMAGE_FORMATS)
IMAGE_NAME = re.compile(rf"[0-9a-f]{{32}}\.(?:{_EXTENSIONS})")
_TEMP_NAME = re.compile(rf"\.[0-9a-f]{{32}}\.(?:{_EXTENSIONS})\.part")
# A temp file this old belongs to a write that died with its process.
_ABANDONED_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class SweepReport:
    removed: int
    kept: int
    kept_bytes: int


class _Stored(NamedTuple):
    mtime: float
    size: int
    name: str


class ImageStorage:
    """Writes, finds and expires the image files of one folder. Its methods block: call them in a
    thread from async code (`save_all_async`, `sweep_async`).

    It keeps the index of stored images (oldest first) and their total size, and the names
    of the newest response, which size retention never deletes: a cap smaller than one
    response must not hand out URLs that are already gone.
    """

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
        self._lock = threading.Lock()  # guards the index, its total and the newest names
        self._sweep_lock = threading.Lock()  # one sweep at a time
        self._index: deque[_Stored] = deque()
        self._total_bytes = 0
        self._newest: frozenset[str] = frozenset()
        # Saved while a sweep scans the folder: the scan may have missed them.
        self._saved_during_scan: list[_Stored] | None = None
        # Entries that retention cannot handle (a folder named like an image, a file it may
        # not delete): logged the first time only, then skipped.
        self._reported: set[str] = set()

    def prepare(self) -> None:
        """Create the folder and index it; fails at start-up if it is not writable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK):
            raise PermissionError(f"image folder {self.directory} is not writable")
        self.sweep()

    def save(self, data: bytes, extension: str = "png") -> str:
        """Store one image file; returns its name, which ends in `extension` (a format)."""
        (name,) = self.save_all([data], extension)
        return name

    def save_all(self, files: Sequence[bytes], extension: str = "png") -> list[str]:
        """Store the image files of one response (named `*.extension`), then delete the
        oldest others while over the cap."""
        stored: list[_Stored] = []
        try:
            for data in files:
                stored.append(self._write(data, extension))
        except BaseException:
            for entry in stored:  # all of a response or none of it
                with contextlib.suppress(OSError):
                    (self.directory / entry.name).unlink()
            raise
        with self._lock:
            self._index.extend(stored)
            self._total_bytes += sum(entry.size for entry in stored)
            if self._saved_during_scan is not None:
                self._saved_during_scan.extend(stored)
            self._newest = frozenset(entry.name for entry in stored)
            removed = self._evict_over_cap()
        if removed:
            logger.debug("image retention removed %d files over the size cap", removed)
        return [entry.name for entry in stored]

    async def save_all_async(self, files: Sequence[bytes], extension: str = "png") -> list[str]:
        return await asyncio.to_thread(self.save_all, files, extension)

    def _write(self, data: bytes, extension: str) -> _Stored:
        name = f"{uuid.uuid4().hex}.{extension}"
        temp = self.directory / f".{name}.part"
        try:
            with open(temp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                written = os.fstat(handle.fileno())
            os.replace(temp, self.directory / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        return _Stored(written.st_mtime, written.st_size, name)

    def _evict_over_cap(self) -> int:
        """Delete the oldest indexed images, never the newest response's, until the total
        fits; the caller holds the lock."""
        removed = 0
        while self._total_bytes > self.max_total_bytes and self._index:
            oldest = self._index[0]
            if oldest.name in self._newest:
                break
            self._index.popleft()
            self._total_bytes -= oldest.size
            removed += self._remove(oldest.name)
        return removed

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
        """Rebuild the index from the folder: delete images past their age, then the
        oldest while the total is too large. Lists the folder without holding up saves."""
        with self._sweep_lock:
            with self._lock:
                self._saved_during_scan = []
            try:
                scanned, removed = self._scan(self._clock())
            finally:
                with self._lock:
                    saved, self._saved_during_scan = self._saved_during_scan or [], None
            with self._lock:
                seen = {entry.name for entry in scanned}
                entries = scanned + [entry for entry in saved if entry.name not in seen]
                entries.sort()
                self._index = deque(entries)
                self._total_bytes = sum(entry.size for entry in entries)
                removed += self._evict_over_cap()
                kept, total = len(self._index), self._total_bytes
        if removed:
            logger.info(
                "image retention removed %d files; %d kept (%d bytes)", removed, kept, total
            )
        return SweepReport(removed=removed, kept=kept, kept_bytes=total)

    def _scan(self, now: float) -> tuple[list[_Stored], int]:
        """The folder's images within their age; deletes the expired and abandoned temps."""
        images: list[_Stored] = []
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                is_image = IMAGE_NAME.fullmatch(entry.name) is not None
                if not is_image and not _TEMP_NAME.fullmatch(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    self._report_once(entry.name, "it is not a regular file")
                    continue
                age = now - info.st_mtime
                if is_image and age <= self.max_age_seconds:
                    images.append(_Stored(info.st_mtime, info.st_size, entry.name))
                elif is_image or age > _ABANDONED_TEMP_SECONDS:
                    removed += self._remove(entry.name)
        return images, removed

    def _remove(self, name: str) -> int:
        """1 if this call removed the file; another replica may have been first, and what
        cannot be removed is logged once and left."""
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            self._report_once(name, f"it cannot be deleted ({exc.strerror})")
            return 0
        return 1

    def _report_once(self, name: str, why: str) -> None:
        if name not in self._reported:
            self._reported.add(name)
            logger.warning("image retention skips %s in %s: %s", name, self.directory, why)

    async def sweep_async(self) -> SweepReport:
        return await asyncio.to_thread(self.sweep)


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
