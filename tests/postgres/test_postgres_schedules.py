"""Schedules kept in PostgreSQL: the stored-schedule tests of ``tests/schedules/test_stored.py`` on two
PostgresStore objects on one table (the scheduler's, and another process's stand-in), on asyncio
and trio; and what only Postgres has: the tables an older anysched made, and a change marker
that moves with its transaction."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

from anysched import PayloadError, Schedule
from anysched.stores.postgres import PostgresStore

sys.path.insert(0, str(Path(__file__).parent.parent / "schedules"))
from test_stored import (
    test_a_schedule_added_paused_changed_and_removed_elsewhere_is_followed as test_followed_on_postgres,
)
from test_stored import (
    test_changing_a_schedule_never_makes_a_second_job_for_a_slot as test_no_second_job_on_postgres,
)
from test_stored import (
    test_declared_schedules_are_put_into_the_store_at_start as test_declared_put_on_postgres,
)
from test_stored import test_put_list_remove_and_the_marker as test_put_list_remove_on_postgres

pytestmark = pytest.mark.anyio

__all__ = [
    "test_declared_put_on_postgres",
    "test_followed_on_postgres",
    "test_no_second_job_on_postgres",
    "test_put_list_remove_on_postgres",
]


@pytest.fixture
async def stores(postgres_url: str, schema: str) -> AsyncIterator[tuple[PostgresStore[str], PostgresStore[str]]]:
    """Two handles on one table: the scheduler's, and another process's stand-in."""
    async with (
        PostgresStore(postgres_url, str, schema=schema) as mine,
        PostgresStore(postgres_url, str, schema=schema) as theirs,
    ):
        yield mine, theirs


def every(seconds: float, schedule_id: str = "tick") -> Schedule[str]:
    return Schedule(id=schedule_id, payload="p", every=timedelta(seconds=seconds))


async def test_the_marker_moves_once_per_write_and_not_for_a_missing_id(
    stores: tuple[PostgresStore[str], PostgresStore[str]],
) -> None:
    mine, theirs = stores
    start = await mine.schedules_marker()
    await theirs.put_schedule(every(60))
    await theirs.put_schedule(every(60))  # the same again: still a write, which schedulers re-read
    assert await mine.schedules_marker() == start + 2
    assert not await theirs.remove_schedule("missing")
    assert await mine.schedules_marker() == start + 2
    assert await theirs.remove_schedule("tick")
    assert await mine.schedules_marker() == start + 3
    assert await mine.list_schedules() == []


async def test_ids_are_listed_by_code_point_whatever_the_collation(
    stores: tuple[PostgresStore[str], PostgresStore[str]],
) -> None:
    mine, _ = stores
    ids = ["b", "B", "a-1", "a_1", "Z", "é"]
    for schedule_id in ids:
        await mine.put_schedule(every(60, schedule_id))
    assert [schedule.id for schedule in await mine.list_schedules()] == sorted(ids)


async def test_a_payload_that_is_not_json_is_refused_and_nothing_is_written(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, float, schema=schema) as store:
        marker = await store.schedules_marker()
        with pytest.raises(PayloadError, match="schedule 'nan'") as raised:
            await store.put_schedule(Schedule(id="nan", payload=float("nan"), every=timedelta(seconds=1)))
        assert "nan" not in str(raised.value).replace("'nan'", "")  # the id, never the value
        assert await store.list_schedules() == []
        assert await store.schedules_marker() == marker


async def test_tables_an_older_anysched_made_get_the_schedules_table_at_open(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, str, schema=schema, table="jobs"):
        pass
    with psycopg.connect(postgres_url, autocommit=True) as connection:  # as anysched before schedules
        connection.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "jobs_schedules")))
        connection.execute(
            sql.SQL("DELETE FROM {} WHERE key = 'schedules_marker'").format(sql.Identifier(schema, "jobs_meta"))
        )
    async with PostgresStore(postgres_url, str, schema=schema, table="jobs") as store:
        assert await store.list_schedules() == []
        await store.put_schedule(every(60))
        assert await store.list_schedules() == [every(60)]
        assert await store.schedules_marker() == 1


async def test_a_put_rolled_back_by_the_server_leaves_schedules_and_marker_as_they_were(
    stores: tuple[PostgresStore[str], PostgresStore[str]], postgres_url: str, schema: str
) -> None:
    mine, _ = stores
    await mine.put_schedule(every(60))
    marker = await mine.schedules_marker()
    table = sql.Identifier(schema, "jobs_schedules")
    with psycopg.connect(postgres_url, autocommit=True) as connection:  # the upsert fails after the bump
        connection.execute(sql.SQL("ALTER TABLE {} ADD CHECK (id <> 'refused')").format(table))
    with pytest.raises(Exception, match="put_schedule"):
        await mine.put_schedule(every(60, "refused"))
    assert await mine.schedules_marker() == marker
    assert await mine.list_schedules() == [every(60)]


async def test_concurrent_puts_and_removes_of_one_id_never_deadlock_and_each_moves_the_marker(
    stores: tuple[PostgresStore[str], PostgresStore[str]],
) -> None:
    mine, theirs = stores
    start = await mine.schedules_marker()
    removed: list[bool] = []

    async def writes(store: PostgresStore[str], rounds: int) -> None:
        for _ in range(rounds):
            await store.put_schedule(every(60))
            removed.append(await store.remove_schedule("tick"))

    with anyio.fail_after(60):  # a deadlock would be broken by the server, failing one write
        async with anyio.create_task_group() as group:
            for store in (mine, theirs, mine, theirs):
                group.start_soon(writes, store, 10)
    assert await mine.schedules_marker() == start + 40 + sum(removed)  # every put, and every remove that found one
    assert await mine.list_schedules() == []  # every round ended with a remove, and the last one found it
