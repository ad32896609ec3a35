"""A claim whose result is lost after the server committed it (the reply lost with the connection,
or the caller cancelled) hands back what it won, by token: nothing stays leased to nobody."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

from anysched import Job, TransientStoreError
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
VT = timedelta(seconds=30)
JOBS = 5


def _lose_the_claims_reply(store: PostgresStore[Payload], after: Callable[[], None]) -> None:
    """Make the store's next claim run on the server, then call ``after`` (which raises or cancels)."""
    connections = store._connections  # pyright: ignore[reportPrivateUsage]
    assert connections is not None
    real_run = connections.run
    struck = False

    async def run(make_op: Any, *, atomic: bool = False) -> Any:
        nonlocal struck
        result = await real_run(make_op, atomic=atomic)
        if not struck:
            struck = True
            after()
            await anyio.lowlevel.checkpoint()  # where a cancellation lands
        return result

    connections.run = run  # type: ignore[method-assign]


async def _all_handed_back(store: PostgresStore[Payload]) -> None:
    for n in range(JOBS):
        job = await store.get_job(f"j{n}")
        assert job.visible_after is None
        assert job.attempts == 0
    assert len(await store.fetch_pending_jobs(NOW, JOBS, VT)) == JOBS  # claimable at once, not after expiry


async def test_a_lost_reply_hands_back_the_claim(store: PostgresStore[Payload]) -> None:
    await store.add_jobs([Job.create(Payload(n), id=f"j{n}", process_after=NOW) for n in range(JOBS)])

    def connection_lost() -> None:
        raise psycopg.OperationalError("the connection was lost")

    _lose_the_claims_reply(store, connection_lost)
    with pytest.raises(TransientStoreError):
        await store.fetch_pending_jobs(NOW, JOBS, VT)
    await _all_handed_back(store)


async def test_a_cancelled_claim_hands_back_what_it_won(store: PostgresStore[Payload]) -> None:
    await store.add_jobs([Job.create(Payload(n), id=f"j{n}", process_after=NOW) for n in range(JOBS)])
    with anyio.CancelScope() as scope:
        _lose_the_claims_reply(store, scope.cancel)
        await store.fetch_pending_jobs(NOW, JOBS, VT)
    assert scope.cancelled_caught
    await _all_handed_back(store)
