"""The checker's rules over one job's record: how its claims may follow each other, and whether the store's
record of a lease fits how its run ended. Pure functions of the records, tested on hand-made ones."""

from __future__ import annotations

from datetime import timedelta

from .records import Claim, Ending, Run
from .workload import FAIL_REASON, RunEnd

ENDING_FITS: dict[Ending, frozenset[RunEnd]] = {
    "completed": frozenset({"completed"}),
    "retry": frozenset({"error", "timeout"}),
    "postpone": frozenset({"retry"}),
    "failed": frozenset({"fail", "error", "timeout"}),
    "release": frozenset({"interrupted"}),
}


AFTER_CANCEL_FITS: dict[str | None, frozenset[Ending]] = {
    "raised": frozenset({"retry", "failed", "release"}),
    "swallowed": frozenset({"completed", "retry", "failed", "release"}),
}
"""A handler that raised something else, or returned, after we cancelled it: the scheduler may record
that as the attempt's outcome, or as the interruption it caused."""


def succession_anomalies(job_id: str, previous: Claim, claim: Claim) -> list[str]:
    """What is wrong with ``claim`` taking the job over from ``previous``, if the store made them in that order."""
    found: list[str] = []
    late = [w for w in previous.writes if w.start_seq > claim.end_seq]
    if late:
        found.append(f"{job_id}: {len(late)} write(s) accepted under lease {previous.lease} after it was superseded")
    ending = previous.ending(before_seq=claim.end_seq)
    if ending in ("completed", "failed"):
        found.append(f"{job_id}: claimed again after it was {ending} (lease {claim.lease})")
    elif ending == "expired" and claim.now < previous.lease_end(before_seq=claim.end_seq):
        found.append(
            f"{job_id}: claimed at {claim.now} while lease {previous.lease} held until "
            f"{previous.lease_end(before_seq=claim.end_seq)}"
        )
    return found


def in_server_order(job_id: str, claims: list[Claim]) -> list[Claim]:
    """A job's claims in the order the store made them, as far as the record can tell.

    Claims are recorded when their ``fetch_pending_jobs`` returns, and a store may claim in
    rounds: ``MongoStore``'s batch claim makes up to three find and ``update_many`` rounds, each
    at the call's one ``now``, seconds apart on a loaded machine. A call that began first and
    claimed a job in an early round can then return after a call that began later and claimed
    the same job, legitimately, once the first lease had ended: recorded second, claimed first.

    So two neighbours whose calls overlapped (the later-recorded one began before the other
    returned: the store may have made either claim first) are swapped when the recorded order
    breaks the lease rules and the swapped order keeps them. A pair that no order explains
    stays as recorded, and is reported.
    """
    ordered = list(claims)
    for _ in range(len(ordered)):
        swapped = False
        for i in range(len(ordered) - 1):
            first, second = ordered[i], ordered[i + 1]
            overlapped = second.start_seq < first.end_seq
            if (
                overlapped
                and succession_anomalies(job_id, first, second)
                and not succession_anomalies(job_id, second, first)
            ):
                ordered[i], ordered[i + 1] = second, first
                swapped = True
        if not swapped:
            break
    return ordered


DROPPED = "dropped"
TIMED_OUT_IN_DOUBT = "timed out in doubt"


def inconsistency(run: Run, claim: Claim, *, killed: bool, lease: timedelta) -> str | None:
    """Why the store's record of ``run``'s lease does not fit how the handler ended, if it does not."""
    ending = claim.ending()
    if ending == "expired":  # nothing written: only a death or a lost lease explains that
        if killed or run.kind == "lost":
            return None
        end = run.end or run.start
        if claim.renewing_at(end) or end >= claim.lease_end() or any(at >= end for at in claim.outcome_attempts):
            return DROPPED  # a renewal that gave up, a lease gone before the result, or a write that never landed
        if run.kind == "timeout" and end >= claim.holder_lease_end(end, lease):
            return TIMED_OUT_IN_DOUBT  # cut off at its timeout as its holder's lease ran out: in doubt, no outcome
        return f"run {run.kind} under {run.lease} on live {run.incarnation}, but nothing was written"
    if run.kind in ENDING_FITS[ending] or ending in AFTER_CANCEL_FITS.get(run.after_cancel, frozenset[Ending]()):
        return None
    return f"run {run.kind} ({run.action}) under {run.lease} on {run.incarnation}, but the store recorded {ending}"


def failure_reason(last_error: str | None) -> str:
    if last_error is None:
        return "no error recorded"
    if last_error.startswith("gave up after"):
        return "poison"
    if last_error == FAIL_REASON:
        return "FailJob"
    if "JobTimeoutError" in last_error:
        return "timed out on last attempt"
    return "retries exhausted"
