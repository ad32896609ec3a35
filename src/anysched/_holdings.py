"""What a scheduler holds: each leased job with its lease timed on the monotonic clock, and the count.

A lease is stored in wall-clock time (``visible_after``), because every process that shares
the store compares it with its own clock. But when to renew it, and when to give up on it, this
process decides on the monotonic clock (``anyio.current_time()``), measured from the call that
set the lease: a step of the wall clock (backwards: leases look fresh and renewals stop; forwards:
every lease looks lost and every handler is cancelled) changes nothing here. A renewal writes
the lease's new end as the claim's ``visible_after`` advanced by the monotonic time since, so a
step during a run does not move the stored lease either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import anyio

from ._job import Job, evolved

T = TypeVar("T")


@dataclass(eq=False, slots=True)  # slots: read and written several times per job
class Held(Generic[T]):
    """A leased job, from the claim until its outcome is written or it is handed back.

    :param job: the job as this scheduler last wrote (or claimed) it
    :param anchor: the monotonic time just before the call that set ``job.visible_after``
    """

    job: Job[T]
    anchor: float
    worker: int = -1
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """The handler's scope: its deadline is the job's timeout; cancelled when the lease is lost."""
    renewal: anyio.CancelScope | None = None
    """The scope of the renewal in flight, if any; cancelled when the handler finishes."""
    finished: bool = False
    refused: bool = False
    """The store refused a renewal: someone else may own the job, so no outcome is written."""
    in_doubt: bool = False
    """The lease ran out while a renewal went unanswered; the handler was cancelled."""

    def lease_left(self, visibility_timeout: timedelta, now: float) -> float:
        """The fraction of the visibility timeout left on the lease at monotonic time ``now``."""
        length = visibility_timeout.total_seconds()
        return (self.anchor + length - now) / length

    def lease_end(self, visibility_timeout: timedelta) -> float:
        """When the lease ends, on the monotonic clock."""
        return self.anchor + visibility_timeout.total_seconds()

    def renewed(self, now: float, visibility_timeout: timedelta, wall_now: datetime) -> Job[T]:
        """The job with its lease extended to ``visibility_timeout`` from monotonic time ``now``.

        The new end is the lease's stored end advanced by the monotonic time since the anchor,
        so it stays in the time line the claim was made in whatever the wall clock did since.
        ``wall_now`` serves only a job that came back from its store without a lease end.
        """
        visible_after = self.job.visible_after
        if visible_after is None:
            return evolved(self.job, visible_after=wall_now + visibility_timeout)
        return evolved(self.job, visible_after=visible_after + timedelta(seconds=now - self.anchor))


class Holdings(Generic[T]):
    """The jobs a scheduler holds, shared by its parts: the fetcher adds, the workers take away.

    ``held`` is counted here rather than read off the stream, whose statistics miss a job
    handed to a worker that has not resumed yet; it never exceeds the scheduler's capacity,
    and the fetcher claims exactly the difference.
    """

    def __init__(self) -> None:
        self.held = 0
        self.by_id: dict[str, Held[T]] = {}
        """Every held job (buffered or running), by id: a claim that returns one of them again
        must not run it twice."""
        self.running: set[Held[T]] = set()
        """Jobs whose handler is running: the lease keeper renews their leases."""
        self.stopping = False
        self.stop_deadline: float | None = None
        """When a stop's store calls must be over (monotonic), but for outcomes of handlers still running."""

    def take(self, held: Held[T]) -> None:
        """A job leaves the scheduler's hands: finished, handed back, or dropped."""
        self.held -= 1
        self.by_id.pop(held.job.id, None)
