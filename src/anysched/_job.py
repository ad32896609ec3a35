"""Jobs: an immutable, generic record of a payload and its scheduling state."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._time import Seconds, require_utc, to_seconds, utc_now

T = TypeVar("T")
P = TypeVar("P")  # `Job.create`'s own: a static method cannot use the class's T


class JobStatus(str, Enum):
    """Where a job is in its life. The values are the strings stores persist."""

    PENDING = "pending"
    """Waiting to run (due or not yet due), or running under a lease."""
    COMPLETED = "completed"
    """The handler returned."""
    FAILED = "failed"
    """The handler raised; ``last_error`` says what."""

    def __str__(self) -> str:
        return self.value


def new_job_id() -> str:
    """A fresh job id: a random UUID4 as a string."""
    return str(uuid.uuid4())


def new_lease_token() -> str:
    """A fresh lease token. A store sets one on every claim, so an old holder is fenced out."""
    return secrets.token_hex(16)  # as unguessable as uuid4, at a fifth of the cost


@dataclass(frozen=True, slots=True)
class Job(Generic[T]):
    """One unit of work: a typed payload, a due time and the state a store keeps for it.

    Jobs are immutable: the scheduler and the stores make changed copies with
    :func:`dataclasses.replace`. Every datetime is timezone-aware UTC; a naive one is a
    ``ValueError`` and an aware one in another zone is converted to UTC.

    :param payload: what the handler works on
    :param id: unique within a store (a UUID4 string by default)
    :param status: pending, completed or failed
    :param process_after: the job is due from this moment
    :param visible_after: while set and in the future, the job is leased to someone
    :param processed_at: when the handler finished (completed or failed)
    :param attempts: the attempts that count against ``max_attempts``: a claim adds one;
        the scheduler gives it back when it hands a job back unstarted or interrupted, or when
        the handler postpones it with :class:`~anysched.RetryJob`
    :param lease: the token of the current (or last) lease; updates are fenced by it
    :param last_error: the last handler error, as text
    :param max_attempts: this job's attempt budget, overriding the scheduler's retry policy
        (``None``: the policy's)
    :param timeout: seconds this job's handler may run before it is cancelled and the
        attempt fails, overriding the scheduler's ``job_timeout`` (``None``: the scheduler's)
    """

    payload: T = field(repr=False)  # a payload may hold secrets: a logged repr of a job must not show it
    id: str = field(default_factory=new_job_id)
    status: JobStatus = JobStatus.PENDING
    process_after: datetime = field(default_factory=utc_now)
    visible_after: datetime | None = None
    processed_at: datetime | None = None
    attempts: int = 0
    lease: str | None = None
    last_error: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"id must be a non-empty string, got {self.id!r}")
        status = cast("object", self.status)  # a plain string is welcome: stores read statuses back as text
        if not isinstance(status, JobStatus):
            object.__setattr__(self, "status", JobStatus(status))
        if type(self.attempts) is not int or self.attempts < 0:
            raise ValueError(f"attempts must be an int >= 0, got {self.attempts!r}")
        if self.max_attempts is not None and (type(self.max_attempts) is not int or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be None or an int >= 1, got {self.max_attempts!r}")
        if self.timeout is not None:
            object.__setattr__(self, "timeout", to_seconds("timeout", self.timeout))
        self._set_utc("process_after", self.process_after)
        if self.visible_after is not None:
            self._set_utc("visible_after", self.visible_after)
        if self.processed_at is not None:
            self._set_utc("processed_at", self.processed_at)

    def _set_utc(self, name: str, value: datetime) -> None:
        utc = require_utc(name, value)
        if utc is not value:
            object.__setattr__(self, name, utc)

    @staticmethod
    def create(
        payload: P,
        *,
        process_after: datetime | None = None,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout: Seconds | None = None,
    ) -> Job[P]:
        """A new pending job, due at ``process_after`` (now by default).

        :param payload: what the handler will receive as ``job.payload``
        :param process_after: when the job becomes due; timezone-aware
        :param id: the job's id; a fresh UUID4 string by default
        :param max_attempts: the job's attempt budget (default: the scheduler's retry policy)
        :param timeout: how long the job's handler may run (default: the scheduler's ``job_timeout``)
        """
        return Job(
            payload=payload,
            id=new_job_id() if id is None else id,
            process_after=utc_now() if process_after is None else process_after,
            max_attempts=max_attempts,
            timeout=None if timeout is None else to_seconds("timeout", timeout),
        )

    @property
    def claimable_at(self) -> datetime | None:
        """When a store may next hand this job out: its due time, or its lease's end if later.

        ``None`` for a finished (completed or failed) job, which is never claimed again.
        """
        if self.status is not JobStatus.PENDING:
            return None
        if self.visible_after is not None and self.visible_after > self.process_after:
            return self.visible_after
        return self.process_after

    def accepts_write_fenced_by(self, lease: str | None) -> bool:
        """Whether a store may apply an update fenced by ``lease`` to this, the stored job.

        Only while the lease is held: the job is pending, leased (``visible_after`` set) and
        carries this token. An outcome (completed, failed, a retry's or a release's
        ``visible_after=None``) ends the lease, so a write sent earlier with the same token (a
        renewal abandoned in a worker thread, a late reply) can never land after it.
        """
        return (
            lease is not None
            and self.lease == lease
            and self.status is JobStatus.PENDING
            and self.visible_after is not None
        )

    def is_due(self, now: datetime) -> bool:
        """Whether a store may hand this job out at ``now``: pending, due and not leased."""
        return (
            self.status is JobStatus.PENDING
            and self.process_after <= now
            and (self.visible_after is None or self.visible_after <= now)
        )


def claimed(job: Job[T], now: datetime, visibility_timeout: timedelta) -> Job[T]:
    """The job as a store hands it out: leased until ``now + visibility_timeout``, one more attempt.

    ``now`` must already be aware UTC (the stores check it): the copy skips the checks.
    """
    return evolved(job, visible_after=now + visibility_timeout, lease=new_lease_token(), attempts=job.attempts + 1)


def _compile_evolved() -> Callable[..., Any]:
    """Compile :func:`evolved`: one keyword-only parameter per field, one straight-line store per slot.

    As :mod:`dataclasses` writes ``__init__``: generated from the field list, so the list is
    still declared once (on :class:`Job`). A loop over the fields with ``object.__setattr__``
    cost three times as much, and ``evolved`` runs two or three times per job.
    """
    names = [field.name for field in fields(Job)]
    slots = {f"_set_{name}": getattr(Job, name).__set__ for name in names}  # frozen: bypass __setattr__
    parameters = ", ".join(f"{name}=_KEEP" for name in names)
    stores = "".join(f"    _set_{name}(copy, job.{name} if {name} is _KEEP else {name})\n" for name in names)
    source = f"def evolved(job, /, *, {parameters}):\n    copy = _new(_Job)\n{stores}    return copy\n"
    namespace: dict[str, Any] = {"_new": object.__new__, "_Job": Job, "_KEEP": object(), **slots}
    exec(compile(source, "<anysched._job.evolved>", "exec"), namespace)  # our own source, built above
    return cast("Callable[..., Any]", namespace["evolved"])


if TYPE_CHECKING:

    def evolved(job: Job[T], /, **changes: Any) -> Job[T]:
        """``dataclasses.replace`` for changes whose values are already checked, without checking them again.

        The scheduler and the stores copy a job two or three times per run (claim, renewal, outcome);
        ``replace`` re-runs every check of ``__post_init__`` each time, which the hot path pays for in
        throughput. Times given here must be aware UTC and counts ints >= 0. An unknown field is a
        ``TypeError``.
        """
        ...

else:
    evolved = _compile_evolved()
