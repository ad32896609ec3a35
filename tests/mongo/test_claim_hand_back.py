"""A claim that fails or is cancelled part-way hands back what it won: nothing stays leased to nobody.

Faults are injected into the store's own driver (``store._driver``), at the call after which
jobs are won but not yet returned: the batch's read-back (or its ``update_many`` whose reply
is lost), or the k-th ``find_one_and_update``, before it reaches the server or after.
"""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from mongo_support import FaultyDriver, cancelling, raise_injected

from anysched import TransientStoreError
from anysched.stores.mongo import ClaimMode, MongoStore
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job

pytestmark = pytest.mark.anyio

JOBS = 5


@dataclass(frozen=True)
class Point:
    """Where the fault strikes: the ``nth`` call of ``method`` that is ``matching``, before or after it ran."""

    claim: ClaimMode
    method: str
    nth: int = 1
    after_call: bool = False
    matching: Callable[..., bool] = lambda *args: True


def _read_back(query: dict[str, Any], *args: Any) -> bool:
    return "lease" in query


def _claiming(query: dict[str, Any], update: dict[str, Any], *args: Any) -> bool:
    return update.get("$inc") == {"attempts": 1}


POINTS = {
    "batch, read-back fails": Point("batch", "find", matching=_read_back),
    "batch, update_many reply lost": Point("batch", "update_many", after_call=True, matching=_claiming),
    "one by one, 3rd claim fails": Point("one_by_one", "claim_one", nth=3),
    "one by one, 3rd claim's reply lost": Point("one_by_one", "claim_one", nth=3, after_call=True),
}


async def _fetch_with_fault(store: MongoStore[Payload], point: Point, fault: str) -> FaultyDriver:
    """Run one fetch that meets the fault; check it raised (or was cancelled) as the fault says."""
    scope = anyio.CancelScope()
    inject: Callable[[], Awaitable[None]] = raise_injected if fault == "error" else cancelling(scope)
    faulty = FaultyDriver(
        store._driver, point.method, inject, nth=point.nth, after_call=point.after_call, matching=point.matching
    )
    store._driver = faulty  # pyright: ignore[reportAttributeAccessIssue]
    try:
        with scope:
            if fault == "error":
                with pytest.raises(TransientStoreError):
                    await store.fetch_pending_jobs(at(10), JOBS, VT)
            else:
                await store.fetch_pending_jobs(at(10), JOBS, VT)
    finally:
        store._driver = faulty.inner
    assert faulty.injected
    assert scope.cancelled_caught is (fault == "cancel")
    return faulty


@pytest.mark.parametrize("fault", ["error", "cancel"])
@pytest.mark.parametrize("where", list(POINTS))
async def test_a_claim_that_fails_part_way_hands_back_what_it_won(
    collection: Any, where: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="anysched")
    point = POINTS[where]
    store = MongoStore(collection, Payload, claim=point.claim)
    for n in range(JOBS):
        await store.add_job(job(n, due=at(n), job_id=f"j{n}"))
    with anyio.fail_after(30):
        await _fetch_with_fault(store, point, fault)
        again = await store.fetch_pending_jobs(at(10), 10, VT)  # same moment: nothing may still be leased
    assert sorted(j.id for j in again) == [f"j{n}" for n in range(JOBS)]
    assert [j.attempts for j in again] == [1] * JOBS
    assert "handed back the" in caplog.text
    assert "mongodb://" not in caplog.text


@pytest.mark.parametrize("flavour", ["pymongo-sync"])
async def test_a_hand_back_that_fails_too_is_logged_and_the_claims_error_raised(
    collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = MongoStore(collection, Payload)
    for n in range(JOBS):
        await store.add_job(job(n, job_id=f"j{n}"))

    # the 1st update_many with an $inc is the claim's, the 2nd the hand-back's
    def increments(_query: object, update: dict[str, Any]) -> bool:
        return "$inc" in update

    releasing = FaultyDriver(store._driver, "update_many", raise_injected, nth=2, matching=increments)
    store._driver = releasing  # pyright: ignore[reportAttributeAccessIssue]
    with anyio.fail_after(30):
        await _fetch_with_fault(store, POINTS["batch, read-back fails"], "error")
    assert releasing.injected
    assert "could not hand back the job(s) it won (0 known): Injected" in caplog.text
