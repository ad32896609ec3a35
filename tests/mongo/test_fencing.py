"""An outcome ends its lease: a write sent before it with the same token (a renewal abandoned in a
worker thread, a late reply) never lands after it, so a finished job never comes back."""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mongo_support import Server, open_collection
from pymongo import monitoring

from anysched import Backoff, Job, JobStatus, LeaseLostError, open_scheduler
from anysched.stores.mongo import MongoStore
from anysched.testing import _T0 as T0
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job

pytestmark = pytest.mark.anyio

OUTCOMES: dict[str, Callable[[Job[Payload]], Job[Payload]]] = {
    "completed": lambda leased: replace(leased, status=JobStatus.COMPLETED, processed_at=at(2), visible_after=None),
    "failed": lambda leased: replace(
        leased, status=JobStatus.FAILED, processed_at=at(2), visible_after=None, last_error="boom"
    ),
    "retry": lambda leased: replace(leased, process_after=at(60), visible_after=None, last_error="boom"),
    "release": lambda leased: replace(leased, visible_after=None, attempts=leased.attempts - 1),
}


@pytest.mark.parametrize("outcome", list(OUTCOMES))
async def test_a_renewal_sent_before_an_outcome_cannot_land_after_it(
    payload_store: MongoStore[Payload], outcome: str
) -> None:
    await payload_store.add_job(job(1, job_id="j1"))
    [leased] = await payload_store.fetch_pending_jobs(T0, 1, VT)
    renewal = replace(leased, visible_after=at(10) + VT)  # sent before the outcome, it lands after it
    await payload_store.update_job(OUTCOMES[outcome](leased))
    written = await payload_store.get_job("j1")
    with pytest.raises(LeaseLostError):
        await payload_store.update_job(renewal)
    assert await payload_store.get_job("j1") == written


class SlowRenewal(monitoring.CommandListener):
    """Holds the first lease renewal in its worker thread until the job's outcome has been written.

    PyMongo publishes a command's start in the thread that sends it, so blocking here is an
    ``update_one`` that is slow in its thread: the scheduler abandons it at the lease's end.
    """

    def __init__(self) -> None:
        self.renewal_blocked = threading.Event()
        self.outcome_written = threading.Event()
        self.renewal_landed = threading.Event()
        self.renewal_matched: int | None = None
        self._watching: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        kind = _update_kind(event.command)
        if kind == "renewal" and not self.renewal_blocked.is_set():
            self._watching[event.request_id] = kind
            self.renewal_blocked.set()
            self.outcome_written.wait(timeout=30)
        elif kind == "outcome":
            self._watching[event.request_id] = kind

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        kind = self._watching.pop(event.request_id, None)
        if kind == "outcome":
            self.outcome_written.set()
        elif kind == "renewal":
            self.renewal_matched = int(event.reply.get("n", -1))
            self.renewal_landed.set()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._watching.pop(event.request_id, None)

    def let_go(self) -> None:
        self.outcome_written.set()


def _update_kind(command: Mapping[str, Any]) -> str | None:
    """``"renewal"`` for update_job of a pending, leased job; ``"outcome"`` for a completed one."""
    if "update" not in command or len(command.get("updates", [])) != 1:
        return None
    written = command["updates"][0].get("u", {}).get("$set", {})
    if written.get("status") == "completed":
        return "outcome"
    if written.get("status") == "pending" and written.get("visible_after") is not None:
        return "renewal"
    return None


@pytest.mark.parametrize("flavour", ["pymongo-sync", "pymongo-sync-trio"])
async def test_a_renewal_abandoned_in_its_thread_does_not_bring_a_completed_job_back(
    flavour: str, mongo_server: Server, collection_name: str
) -> None:
    listener = SlowRenewal()
    runs: Counter[str] = Counter()

    async def handler(job: Job[Payload]) -> None:
        runs[job.id] += 1
        # finish while the renewal hangs: the outcome then waits for the renewal's deadline
        await anyio.to_thread.run_sync(listener.renewal_blocked.wait, 30, abandon_on_cancel=True)

    options: dict[str, Any] = {"fetch_interval": 0.2, "store_backoff": Backoff(initial=0.05, maximum=0.2)}
    try:
        with anyio.fail_after(60):
            async with open_collection(flavour, mongo_server.uri, collection_name, event_listeners=[listener]) as coll:
                store = MongoStore(coll, Payload)
                await store.add_job(Job.create(Payload(1), id="once"))  # due now
                async with open_scheduler(store, handler, visibility_timeout=1.5, **options):
                    await anyio.to_thread.run_sync(listener.renewal_landed.wait, 30, abandon_on_cancel=True)
                assert listener.renewal_landed.is_set(), "the held renewal never reached the server"
                stored = await store.get_job("once")
                assert stored.status is JobStatus.COMPLETED
                assert listener.renewal_matched == 0  # the stale renewal matched nothing
                assert await store.fetch_pending_jobs(stored.process_after + timedelta(days=1), 10, VT) == []
    finally:
        listener.let_go()
    assert runs == {"once": 1}
