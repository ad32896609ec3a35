"""What happened: the store's record of every lease and accepted write, the handlers' of every run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from anysched import Job, JobStatus

from .workload import Action, RunEnd, Work

WriteKind = Literal["renew", "release", "retry", "postpone", "completed", "failed"]
Ending = Literal["release", "retry", "postpone", "completed", "failed", "expired"]
Cause = Literal["retry", "interrupted", "lease expiry", "unexplained"]


@dataclass(eq=False)
class Write:
    """An update the store accepted, for one lease."""

    kind: WriteKind
    at: datetime
    visible_after: datetime | None
    attempts: int
    status: JobStatus
    start_seq: int
    end_seq: int
    late: bool = False
    """Landed from the background after its caller had given up on it."""
    reply_lost: bool = False
    """Its caller got an error instead of the reply (it learns of the write only if a retry lands too)."""


@dataclass(eq=False)
class Claim:
    """One lease the store handed out, and every write it accepted under that lease."""

    job_id: str
    lease: str
    now: datetime
    visible_after: datetime
    attempts: int
    process_after: datetime
    start_seq: int
    end_seq: int
    process: str
    reply_lost: bool = False
    renewal_hung: bool = False
    """A renewal under this lease hung until its caller gave up (the lease was then lost for a store's reason)."""
    writes: list[Write] = field(default_factory=list[Write])
    renew_attempts: list[datetime] = field(default_factory=list[datetime])
    """When the holder tried to renew the lease (every try, failed ones included)."""
    outcome_attempts: list[datetime] = field(default_factory=list[datetime])
    """When the holder tried to write anything else under the lease (failed tries included)."""

    def ending(self, before_seq: int | None = None) -> Ending:
        """How the lease ended: its last outcome or release, or ``expired`` (only renewals, or nothing)."""
        for write in reversed(self.writes):
            if before_seq is not None and write.start_seq > before_seq:
                continue
            if write.kind != "renew":
                return write.kind
        return "expired"

    def renewing_at(self, moment: datetime) -> bool:
        """Whether a renewal may have been under way at ``moment``: one began before it, and the
        lease it was renewing (its deadline) had not ended by then."""
        for attempt in self.renew_attempts:
            if attempt <= moment:
                ends = [self.visible_after]
                ends += [w.visible_after for w in self.writes if w.visible_after is not None and w.at < attempt]
                if moment <= max(ends):
                    return True
        return False

    def holder_lease_end(self, moment: datetime, length: timedelta) -> datetime:
        """The latest the holder can have reckoned this lease to end, as of ``moment``.

        A scheduler times its lease on its own clock: ``length`` after the start of the last
        renewal it heard back from (or before its claim), which is never later than the end the
        store wrote for it. Bounded here by the claim's end and, for each renewal the store
        accepted by ``moment`` and answered (not landed late after its caller gave up on it, nor
        with its reply lost), the lower of its stored end and ``length`` after the last renewal
        try made before it landed.
        """
        ends = [self.visible_after]
        for write in self.writes:
            unheard = write.late or write.reply_lost
            if write.kind != "renew" or unheard or write.visible_after is None or write.at > moment:
                continue
            tries = [at for at in self.renew_attempts if at <= write.at]
            ends.append(min(write.visible_after, max(tries) + length) if tries else write.visible_after)
        return max(ends)

    def lease_end(self, before_seq: int | None = None) -> datetime:
        """The last ``visible_after`` the store accepted for this lease."""
        ends = [self.visible_after]
        ends += [
            w.visible_after
            for w in self.writes
            if w.visible_after is not None and (before_seq is None or w.start_seq <= before_seq)
        ]
        return max(ends)


@dataclass(eq=False)
class Run:
    """One handler call."""

    job_id: str
    lease: str | None
    attempts: int
    incarnation: str
    action: Action
    start: datetime
    end: datetime | None = None
    kind: RunEnd = "running"
    began: float = 0.0
    """Event-loop time of ``start``."""
    ended: float | None = None
    after_cancel: Literal["raised", "swallowed"] | None = None
    """The handler raised something else, or returned, after we had cancelled it (``kind`` says why we did)."""


@dataclass(eq=False)
class StopRequest:
    """The controller asked an incarnation to stop (or it died): when, how, and the bound on how long it may take."""

    how: Literal["cancel", "shutdown", "kill"]
    at: float
    bound: float


def write_kind(claim: Claim, job: Job[Work]) -> WriteKind:
    """What an accepted update did, judged against the claim it was made under."""
    if job.status is JobStatus.COMPLETED:
        return "completed"
    if job.status is JobStatus.FAILED:
        return "failed"
    if job.visible_after is not None:
        return "renew"
    if job.process_after == claim.process_after:
        return "release"
    return "retry" if job.attempts == claim.attempts else "postpone"
