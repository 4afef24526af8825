"""Image storage on a real folder: atomic writes, safe names, retention by age and size."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from qwen_image_router.storage import IMAGE_NAME, ImageStorage, RetentionTask, sweep_interval

DAY = 86400.0


def make_storage(tmp_path: Path, max_age: float = DAY, max_bytes: int = 10**9) -> ImageStorage:
    storage = ImageStorage(tmp_path / "images", max_age_seconds=max_age, max_total_bytes=max_bytes)
    storage.prepare()
    return storage


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_save_writes_the_bytes_under_a_random_name_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    storage = make_storage(tmp_path)
    first = storage.save(b"\x89PNG one")
    second = storage.save(b"\x89PNG two")
    assert IMAGE_NAME.fullmatch(first) and IMAGE_NAME.fullmatch(second)
    assert first != second
    assert (storage.directory / first).read_bytes() == b"\x89PNG one"
    assert sorted(os.listdir(storage.directory)) == sorted([first, second])


def test_prepare_creates_nested_folders(tmp_path: Path) -> None:
    storage = ImageStorage(tmp_path / "a" / "b", max_age_seconds=DAY, max_total_bytes=100)
    storage.prepare()
    assert storage.directory.is_dir()


def test_path_for_finds_only_names_the_storage_writes(tmp_path: Path) -> None:
    storage = make_storage(tmp_path)
    name = storage.save(b"png")
    assert storage.path_for(name) == storage.directory / name
    (tmp_path / "secret.png").write_bytes(b"secret")
    (storage.directory / "notes.txt").write_text("x")
    for bad in (
        "../secret.png",
        "..%2Fsecret.png",
        "notes.txt",
        name.upper(),
        name + ".part",
        "/etc/passwd",
        "",
        f".{name}.part",
    ):
        assert storage.path_for(bad) is None, bad
    assert storage.path_for("0" * 32 + ".png") is None  # well-formed but unknown


def test_sweep_deletes_images_older_than_the_retention_age(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_age=3600)
    old = storage.save(b"old")
    new = storage.save(b"new")
    age(storage.directory / old, 3601)
    age(storage.directory / new, 3000)
    report = storage.sweep()
    assert report.removed == 1 and report.kept == 1
    assert storage.path_for(old) is None and storage.path_for(new) is not None


def test_sweep_deletes_the_oldest_until_the_total_fits(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_bytes=250)
    names = [storage.save(bytes(100)) for _ in range(2)]
    names.append(storage.save(bytes(100)))  # over 250 now: the write itself sweeps
    for index, name in enumerate(names):
        path = storage.directory / name
        if path.exists():
            age(path, 100 - index)
    storage.sweep()
    remaining = sorted(os.listdir(storage.directory))
    assert sum((storage.directory / n).stat().st_size for n in remaining) <= 250
    assert names[-1] in remaining  # the newest image survives


def test_oldest_files_go_first_when_over_the_byte_limit(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_bytes=10**6)
    names = [storage.save(bytes(100)) for _ in range(4)]
    for index, name in enumerate(names):
        age(storage.directory / name, 1000 - index * 10)  # names[0] is the oldest
    storage.max_total_bytes = 250
    report = storage.sweep()
    assert report.removed == 2 and report.kept_bytes == 200
    assert sorted(os.listdir(storage.directory)) == sorted(names[2:])


def test_a_write_over_the_limit_triggers_a_sweep_at_once(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_bytes=150)
    first = storage.save(bytes(100))
    age(storage.directory / first, 60)
    second = storage.save(bytes(100))
    assert os.listdir(storage.directory) == [second]


def test_sweep_removes_abandoned_temp_files_but_not_fresh_ones_or_foreign_files(
    tmp_path: Path,
) -> None:
    storage = make_storage(tmp_path)
    abandoned = storage.directory / f".{'a' * 32}.png.part"
    in_progress = storage.directory / f".{'b' * 32}.png.part"
    foreign = storage.directory / "README"
    for path in (abandoned, in_progress, foreign):
        path.write_bytes(b"x")
    age(abandoned, 7200)
    age(foreign, 10 * DAY)
    storage.sweep()
    assert not abandoned.exists()
    assert in_progress.exists() and foreign.exists()


async def test_async_save_and_sweep_run_in_threads(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_age=10)
    (name,) = await storage.save_all_async([b"png"])
    age(storage.directory / name, 11)
    report = await storage.sweep_async()
    assert report.removed == 1


def test_prepare_fails_clearly_on_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    storage = ImageStorage(blocker / "images", max_age_seconds=DAY, max_total_bytes=100)
    with pytest.raises(OSError):
        storage.prepare()


async def test_the_retention_task_sweeps_in_the_background(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_age=60)
    name = storage.save(b"old")
    age(storage.directory / name, 61)
    task = RetentionTask(storage, interval=0.02)
    task.start()
    try:
        async with asyncio.timeout(5):
            while (storage.directory / name).exists():
                await asyncio.sleep(0.01)
    finally:
        await task.stop()


def test_sweep_interval_is_a_tenth_of_the_age_within_bounds() -> None:
    assert sweep_interval(86400) == 60.0
    assert sweep_interval(100) == 10.0
    assert sweep_interval(2) == 1.0


def test_saving_never_lists_the_folder_even_over_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make_storage(tmp_path, max_bytes=250)
    for _ in range(50):
        (storage.directory / f"{os.urandom(16).hex()}.png").write_bytes(bytes(5))
    storage.sweep()
    listings: list[object] = []
    real_scandir = os.scandir

    def counting(path: object) -> object:
        listings.append(path)
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", counting)
    names = [storage.save(bytes(100)) for _ in range(5)]
    assert listings == []
    remaining = set(os.listdir(storage.directory))
    assert set(names[-2:]) <= remaining and names[0] not in remaining
    assert sum((storage.directory / n).stat().st_size for n in remaining) <= 250


def test_a_response_larger_than_the_cap_is_kept_whole_until_the_next(tmp_path: Path) -> None:
    storage = make_storage(tmp_path, max_bytes=300)
    first = storage.save_all([bytes(405), bytes(405)])
    assert all(storage.path_for(name) for name in first)
    storage.sweep()
    assert all(storage.path_for(name) for name in first)
    second = storage.save_all([bytes(405)])
    assert [storage.path_for(name) is not None for name in first + second] == [False] * 2 + [True]


def test_what_retention_cannot_delete_is_skipped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = make_storage(tmp_path, max_bytes=250)
    planted = storage.directory / f"{'c' * 32}.png"
    planted.mkdir()
    age(planted, 10 * DAY)
    names = [storage.save(bytes(100)) for _ in range(6)]
    storage.sweep()
    storage.sweep()
    assert planted.is_dir() and storage.path_for(names[-1]) is not None
    assert sum(storage.path_for(n) is not None for n in names) == 2
    skipped = [r for r in caplog.records if planted.name in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelname == "WARNING"
