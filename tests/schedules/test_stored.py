"""Schedules kept in the store (StoresSchedules): put, changed, paused and removed at run time, on
MemoryStore and SQLiteStore, followed by every scheduler on the store within ``schedule_refresh``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from anysched import MemoryStore, Schedule, StoresSchedules, open_scheduler, slot_of
from anysched.stores.sqlite import SQLiteStore
from support import Recorder, until

pytestmark = pytest.mark.anyio

UTC = timezone.utc
Clock = Callable[[], datetime]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # real time: SQLite works in threads, which a mock clock would outrun


@pytest.fixture(params=["memory", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """Two handles on one store: the scheduler's, and another process's stand-in."""
    if request.param == "memory":
        store = MemoryStore[str]()
        yield store, store
        return
    db = tmp_path / "jobs.db"
    async with SQLiteStore(db, str) as mine, SQLiteStore(db, str) as theirs:
        yield mine, theirs


def every(seconds: float, **options: Any) -> Schedule[str]:
    return Schedule(id="tick", payload="p", every=timedelta(seconds=seconds), **options)


async def test_put_list_remove_and_the_marker(stores: tuple[Any, Any]) -> None:
    mine, _ = stores
    assert isinstance(mine, StoresSchedules)
    store = cast("StoresSchedules[str]", mine)  # isinstance cannot check its payload type
    assert await store.list_schedules() == []
    first = await store.schedules_marker()
    full = Schedule(
        id="digest", payload="weekly", cron="0 8 * * MON", zone="Europe/Paris",
        start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2027, 1, 1, tzinfo=UTC), jitter=timedelta(seconds=30),
        max_attempts=3, timeout=60, misfire="each", misfire_grace=timedelta(hours=2), catch_up_limit=5,
    )  # fmt: skip
    await store.put_schedule(full)
    await store.put_schedule(every(60))
    assert await store.list_schedules() == [full, every(60)]
    second = await store.schedules_marker()
    assert second != first
    await store.put_schedule(replace(full, paused=True))
    assert (await store.list_schedules())[0] == replace(full, paused=True)
    assert await store.schedules_marker() != second
    assert await store.remove_schedule("digest")
    assert not await store.remove_schedule("digest")
    assert await store.list_schedules() == [every(60)]
    with pytest.raises(TypeError, match="schedule"):
        await store.put_schedule("not a schedule")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_declared_schedules_are_put_into_the_store_at_start(stores: tuple[Any, Any]) -> None:
    store, theirs = stores
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(store, recorder, schedules=[every(3600)], schedule_refresh=0.05):
            await until(lambda: recorder.finished >= 1)
    assert await theirs.list_schedules() == [every(3600)]


def reached_the_scheduler(store: Any, applied: Callable[[list[Schedule[str]]], bool]) -> anyio.Event:
    """An event set when ``store`` (the scheduler's) hands its schedule sync a list for which
    ``applied`` holds: the sync gives the list to the ticker without awaiting, so from then on the
    ticker enqueues no slot of what the list no longer has."""
    reached = anyio.Event()
    listed = store.list_schedules

    async def list_schedules() -> list[Schedule[str]]:
        schedules: list[Schedule[str]] = await listed()
        if applied(schedules):
            reached.set()
        return schedules

    store.list_schedules = list_schedules
    return reached


async def test_a_schedule_added_paused_changed_and_removed_elsewhere_is_followed(stores: tuple[Any, Any]) -> None:
    store, theirs = stores
    recorder = Recorder[str]()

    def slots_after(moment: datetime) -> list[datetime]:
        slots = (slot_of(job) for job in recorder.started)
        return [slot.slot for slot in slots if slot is not None and slot.slot > moment]

    with anyio.fail_after(20):
        async with open_scheduler(store, recorder, schedule_refresh=0.05, fetch_interval=0.05):
            await theirs.put_schedule(every(0.1))
            await recorder.wait_finished(3)  # added elsewhere: followed

            paused = reached_the_scheduler(store, lambda schedules: any(schedule.paused for schedule in schedules))
            await theirs.put_schedule(every(0.1, paused=True))
            await paused.wait()
            paused_at = datetime.now(UTC)
            await anyio.sleep(0.5)  # five slots' time, for any that a paused schedule would still enqueue
            assert slots_after(paused_at) == []

            await theirs.put_schedule(replace(every(0.1), payload="changed"))
            await until(lambda: "changed" in [job.payload for job in recorder.started])

            removed = reached_the_scheduler(store, lambda schedules: schedules == [])
            await theirs.remove_schedule("tick")
            await removed.wait()
            removed_at = datetime.now(UTC)
            await anyio.sleep(0.5)
            assert slots_after(removed_at) == []
    assert set(recorder.runs.values()) == {1}  # no slot twice, changes or not
    slots = [slot.slot for slot in map(slot_of, recorder.started) if slot is not None]
    assert len(set(slots)) == len(slots) == len(recorder.started)


async def test_changing_a_schedule_never_makes_a_second_job_for_a_slot(stores: tuple[Any, Any]) -> None:
    store, theirs = stores
    recorder = Recorder[str]()
    with anyio.fail_after(20):
        async with (
            open_scheduler(store, recorder, schedules=[every(0.1)], schedule_refresh=0.03),
            open_scheduler(theirs, recorder, schedules=[every(0.1)], schedule_refresh=0.03),
        ):
            for version in range(6):  # change it under both schedulers, slot after slot
                await recorder.wait_finished(2 * (version + 1))
                await theirs.put_schedule(every(0.1, jitter=timedelta(milliseconds=version), max_attempts=version + 1))
    assert set(recorder.runs.values()) == {1}
