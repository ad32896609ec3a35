"""The checker: the store's record and the handlers' judged against the rules, into a :class:`ChaosResult`."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from anysched import Job, JobStatus

from .clock import LAG_EXCUSE, STEPPED_SLOT
from .records import Cause, Claim, Ending, Run
from .result import ChaosResult
from .workload import FAIL_REASON, RunEnd, Work

if TYPE_CHECKING:
    from .controller import ChaosRun

TRACED = 5
"""The table traces this many of the jobs that anomalies name."""


@dataclass
class Tally:
    """What the checks of the runs found so far."""

    anomalies: list[str] = field(default_factory=list[str])
    extra: Counter[Cause] = field(default_factory=Counter[Cause])
    overlaps: int = 0
    long_runs_renewed: int = 0
    dropped: int = 0
    timed_out_in_doubt: int = 0


class Checker:
    """Judges one finished :class:`ChaosRun`'s record (it reorders each job's claims into the store's order)."""

    def __init__(self, chaos: ChaosRun) -> None:
        self.config = chaos.config
        self.backend = chaos.backend
        self.store_name = chaos.store_name
        self.store = chaos.store
        self.ids = chaos.ids
        self.poison = chaos.poison
        self.runs = chaos.runs
        self.actions = chaos.actions
        self.incarnations = chaos.incarnations
        self.violations = chaos.violations
        self.adds = chaos.adds
        self.stepped_clock = chaos.stepped_clock
        self.lag = chaos.lag
        self.killed = {incarnation.name: incarnation.dead for incarnation in self.incarnations}

    def check(
        self, final: dict[str, Job[Work] | None], *, finished_in_drain: int, elapsed: float, wall: float, cpu: float
    ) -> ChaosResult:
        """The run's figures and verdicts, given every job as the store has it at the end."""
        lost, failed_by_reason, tally = self._final_states(final)
        tally.anomalies += self._claim_order_anomalies()
        tally.anomalies += self._writes_after_outcome()
        runs_by_job: dict[str, list[Run]] = {}
        for run in self.runs:
            runs_by_job.setdefault(run.job_id, []).append(run)
        for job_id, runs in runs_by_job.items():
            self._check_runs(job_id, runs, tally)
        return self._result(
            final, lost, failed_by_reason, tally, runs_by_job, finished_in_drain, elapsed=elapsed, wall=wall, cpu=cpu
        )

    def _final_states(self, final: dict[str, Job[Work] | None]) -> tuple[int, Counter[str], Tally]:
        """Jobs lost (an anomaly each), and those failed for good by reason."""
        tally = Tally()
        lost = 0
        failed_by_reason: Counter[str] = Counter()
        for job_id in self.ids:
            job = final[job_id]
            if job is None or job.status is JobStatus.PENDING:
                lost += 1
                tally.anomalies.append(f"{job_id}: lost ({'missing' if job is None else 'still pending'})")
            elif job.status is JobStatus.FAILED:
                reason = _failure_reason(job.last_error)
                if reason == "poison":
                    reason = "poison job" if job_id in self.poison else "out of attempts after lease expiries"
                failed_by_reason[reason] += 1
        return lost, failed_by_reason, tally

    def _claim_order_anomalies(self) -> list[str]:
        """Every claim after a job's first must follow a release, a retry, or the real end of the previous lease."""
        found: list[str] = []
        for job_id, claims in self.store.claims.items():
            claims[:] = in_server_order(job_id, claims)  # in place: _cause and trace read this order too
            for previous, claim in itertools.pairwise(claims):
                found += succession_anomalies(job_id, previous, claim)
        return found

    def _check_runs(self, job_id: str, runs: list[Run], tally: Tally) -> None:
        """One job's runs: each against its lease's record, each re-run's cause, and any two that overlapped."""
        for run in runs:
            self._check_run(job_id, run, tally)
        claims = self.store.claims.get(job_id, [])
        for earlier, later in itertools.pairwise(runs):
            tally.extra[self._cause(job_id, earlier, later, claims, tally.anomalies)] += 1
        for i, earlier in enumerate(runs):
            for later in runs[i + 1 :]:
                overlap = self._overlap(job_id, earlier, later)
                if overlap:
                    tally.overlaps += 1
                    tally.anomalies.append(overlap)

    def _check_run(self, job_id: str, run: Run, tally: Tally) -> None:
        """Whether the store's record of ``run``'s lease fits how the handler ended."""
        held = self.store.by_lease.get((job_id, run.lease or ""))
        if held is None:
            tally.anomalies.append(f"{job_id}: a run under lease {run.lease} the store never handed out")
            return
        lease = timedelta(seconds=self.config.visibility_timeout)
        problem = _inconsistency(run, held, killed=self.killed.get(run.incarnation, False), lease=lease)
        if problem == DROPPED:
            tally.dropped += 1
        elif problem == TIMED_OUT_IN_DOUBT:
            tally.timed_out_in_doubt += 1
        elif problem:
            tally.anomalies.append(f"{job_id}: {problem}")
        if run.action == "long" and run.kind == "completed" and any(w.kind == "renew" for w in held.writes):
            tally.long_runs_renewed += 1

    def _overlap(self, job_id: str, earlier: Run, later: Run) -> str | None:
        """Why two runs of a job overlapped when they must not have, if they did."""
        if earlier.end is not None and later.start >= earlier.end:
            return None
        first = self.store.by_lease.get((job_id, earlier.lease or ""))
        second = self.store.by_lease.get((job_id, later.lease or ""))
        if first is None or second is None or second.now < first.lease_end():
            return f"{job_id}: runs on {earlier.lease} and {later.lease} overlapped while leased"
        grace = timedelta(seconds=self.config.visibility_timeout)  # how long past its lease a handler may take to end
        if earlier.end is None or earlier.end > first.lease_end() + grace:
            return (
                f"{job_id}: run on {earlier.lease} ({earlier.incarnation}) went on past its lease's end "
                f"while {later.lease} held the job (two holders)"
            )
        return None

    def _result(
        self,
        final: dict[str, Job[Work] | None],
        lost: int,
        failed_by_reason: Counter[str],
        tally: Tally,
        runs_by_job: dict[str, list[Run]],
        finished_in_drain: int,
        *,
        elapsed: float,
        wall: float,
        cpu: float,
    ) -> ChaosResult:
        runs_per_job: Counter[int] = Counter(len(runs_by_job.get(job_id, [])) for job_id in self.ids)
        step_violations, steps_excused = self._step_verdicts()
        named = dict.fromkeys(a.split(":", 1)[0] for a in tally.anomalies if a.startswith("chaos-"))
        traces = {job_id: self.trace(job_id) for job_id in list(named)[:TRACED]}
        stop_violations, stops_excused = self._stop_verdicts()
        return ChaosResult(
            backend=self.backend,
            store=self.store_name,
            jobs=len(self.ids),
            lost=lost,
            completed=sum(1 for job in final.values() if job is not None and job.status is JobStatus.COMPLETED),
            failed=sum(failed_by_reason.values()),
            failed_by_reason=failed_by_reason,
            runs=len(self.runs),
            runs_per_job=runs_per_job,
            extra_runs=tally.extra,
            overlaps=tally.overlaps,
            anomalies=tally.anomalies,
            run_ends=Counter(run.kind for run in self.runs),
            actions=self.actions,
            events=self.store.events,
            long_runs_renewed=tally.long_runs_renewed,
            dropped_outcomes=tally.dropped,
            timed_out_in_doubt=tally.timed_out_in_doubt,
            finished_in_drain=finished_in_drain,
            elapsed=elapsed,
            wall=wall,
            cpu=cpu,
            behaviours=Counter(run.action for run in self.runs),
            after_cancel=Counter(f"{run.after_cancel} ({run.kind})" for run in self.runs if run.after_cancel),
            adds=self.adds + Counter({"added twice or more": self._added_twice()}),
            stops=self._stop_figures(),
            clock_steps=len(self.stepped_clock.steps),
            lost_after_steps=self._lost_after_steps(),
            run_violations=self.violations + stop_violations + self._add_violations() + step_violations,
            excused_for_lag=steps_excused + stops_excused,
            traces=traces,
            lag_excused=Counter(
                {"clock step lost-lease rule": len(steps_excused), "stop bound rule": len(stops_excused)}
            ),
            loop_lag=(self.lag.max_late(), self.lag.lag(-math.inf, math.inf), self.lag.ticks),
        )

    def trace(self, job_id: str) -> str:
        """Every claim, accepted write and run of one job, in order: the material of a bug report."""
        lines: list[str] = []
        for claim in self.store.claims.get(job_id, []):
            lost = ", reply lost" if claim.reply_lost else ""
            lines.append(
                f"claim #{claim.end_seq} by {claim.process} at {claim.now:%H:%M:%S.%f}: lease {claim.lease[:8]}, "
                f"attempt {claim.attempts}, leased until {claim.visible_after:%H:%M:%S.%f}{lost}"
            )
            for write in claim.writes:
                until = "" if write.visible_after is None else f", until {write.visible_after:%H:%M:%S.%f}"
                how = ", landed late" if write.late else ", reply lost" if write.reply_lost else ""
                lines.append(
                    f"  write #{write.end_seq} {write.kind} at {write.at:%H:%M:%S.%f}: {write.status}, "
                    f"attempts {write.attempts}{until}{how}"
                )
            for run in self.runs:
                if run.lease == claim.lease:
                    end = "-" if run.end is None else f"{run.end:%H:%M:%S.%f}"
                    lines.append(
                        f"  run on {run.incarnation} ({run.action}): {run.start:%H:%M:%S.%f} - {end}, ended {run.kind}"
                    )
        return "\n".join(lines)

    def _writes_after_outcome(self) -> list[str]:
        """A write accepted under a lease after that lease's outcome (or release) was: the fence let it in."""
        found: list[str] = []
        for claims in self.store.claims.values():
            for claim in claims:
                ends = [w for w in claim.writes if w.kind != "renew"]
                if ends:
                    after = [w for w in claim.writes if w.start_seq > ends[0].end_seq]
                    found += [
                        f"{claim.job_id}: {'late ' if w.late else ''}{w.kind} accepted under lease {claim.lease} "
                        f"after its {ends[0].kind}"
                        for w in after
                    ]
        return found

    def _added_twice(self) -> int:
        return sum(1 for job_id in self.ids if self.store.inserted[job_id] > 1)

    def _add_violations(self) -> list[str]:
        return [f"{job_id}: inserted {n} times" for job_id in self.ids if (n := self.store.inserted[job_id]) != 1]

    def _stop_figures(self) -> Counter[str]:
        """Stops by kind, how many overran their bound, and the longest (ms) and the tightest bound (ms) of each."""
        figures: Counter[str] = Counter()
        for incarnation in self.incarnations:
            if not incarnation.stops or incarnation.stopped_at is None:
                continue
            first = incarnation.stops[0]
            took = incarnation.stopped_at - first.at
            figures[f"{first.how}s"] += 1
            figures[f"{first.how}s over bound"] += took > first.bound
            figures[f"longest {first.how} ms"] = max(figures[f"longest {first.how} ms"], round(took * 1000))
        return figures

    def _stop_verdicts(self) -> tuple[list[str], list[str]]:
        """Every stop request that the incarnation outlived by more than its bound: (violations, those
        excused because the event loop lost at least the overrun to lag during the stop)."""
        found: list[str] = []
        excused: list[str] = []
        for incarnation in self.incarnations:
            end = incarnation.stopped_at
            for request in incarnation.stops:
                took = math.inf if end is None else end - request.at
                if took > request.bound:
                    lag = 0.0 if end is None else self.lag.lag(request.at, end)
                    what = (
                        f"{incarnation.name}: {request.how} took {took:.2f}s, over its bound of {request.bound:.2f}s "
                        f"(event loop {lag:.2f}s late meanwhile)"
                    )
                    (excused if took - request.bound <= lag else found).append(what)
        return found, excused

    def _stepped_runs_at(self, moment: float) -> list[Run]:
        """The stepped instance's runs going on at event-loop time ``moment``."""
        prefix = f"i{STEPPED_SLOT}."
        return [
            run
            for run in self.runs
            if run.incarnation.startswith(prefix) and run.began <= moment and (run.ended is None or run.ended > moment)
        ]

    def _lost_after_step(self, at: float) -> tuple[int, int]:
        """(handlers cancelled for a lost lease within one lease after the step at ``at``, handlers at risk):
        at risk are those running at the step and still running a third of a lease later, or lost."""
        vt = self.config.visibility_timeout
        running = self._stepped_runs_at(at)
        lost = [r for r in running if r.kind == "lost" and r.ended is not None and r.ended <= at + vt]
        lost = [r for r in lost if not self._renewal_hung(r)]  # lost to the store, not to the step
        at_risk = [r for r in running if r in lost or r.ended is None or r.ended > at + vt / 3]
        return len(lost), len(at_risk)

    def _renewal_hung(self, run: Run) -> bool:
        claim = self.store.by_lease.get((run.job_id, run.lease or ""))
        return claim is not None and claim.renewal_hung

    def _lost_after_steps(self) -> tuple[int, int]:
        pairs = [self._lost_after_step(at) for at, _ in self.stepped_clock.steps]
        return sum(lost for lost, _ in pairs), sum(at_risk for _, at_risk in pairs)

    def _step_verdicts(self) -> tuple[list[str], list[str]]:
        """The rule "a clock step must not cancel (nearly) every running handler of the stepped
        instance for a lost lease": (violations, cases excused because the event loop stalled for
        more than ``LAG_EXCUSE`` of a lease within a lease of the step, which alone loses renewals)."""
        vt = self.config.visibility_timeout
        found: list[str] = []
        excused: list[str] = []
        for at, offset in self.stepped_clock.steps:
            lost, at_risk = self._lost_after_step(at)
            if lost >= 2 and 2 * lost >= at_risk:
                lag = self.lag.longest(at - vt, at + vt)
                what = (
                    f"clock step to {offset:+.2f}s at {at:.2f}s: {lost} of {at_risk} running handlers on "
                    f"i{STEPPED_SLOT} cancelled for a lost lease"
                )
                stall = f"{what} (longest event-loop stall within a lease of it: {lag * 1000:.0f} ms)"
                (excused if lag > LAG_EXCUSE * vt else found).append(stall)
        return found, excused

    def _cause(self, job_id: str, earlier: Run, later: Run, claims: list[Claim], anomalies: list[str]) -> Cause:
        """Why ``later`` ran although ``earlier`` had run: what ended ``earlier``'s lease."""
        if earlier.lease == later.lease:
            anomalies.append(f"{job_id}: two runs under one lease {later.lease}")
            return "unexplained"
        claim = self.store.by_lease.get((job_id, earlier.lease or ""))
        if claim is None:
            return "unexplained"
        ending = claim.ending()
        if ending in ("retry", "postpone"):
            return "retry"
        if ending == "release":
            return "interrupted"
        if ending == "expired":
            following = claims[claims.index(claim) + 1 :]
            if following and following[0].now >= claim.lease_end():
                return "lease expiry"
            anomalies.append(f"{job_id}: run again under {later.lease} before lease {claim.lease} expired")
            return "unexplained"
        anomalies.append(f"{job_id}: run again under {later.lease} after lease {claim.lease} recorded {ending}")
        return "unexplained"


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


def _inconsistency(run: Run, claim: Claim, *, killed: bool, lease: timedelta) -> str | None:
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


def _failure_reason(last_error: str | None) -> str:
    if last_error is None:
        return "no error recorded"
    if last_error.startswith("gave up after"):
        return "poison"
    if last_error == FAIL_REASON:
        return "FailJob"
    if "JobTimeoutError" in last_error:
        return "timed out on last attempt"
    return "retries exhausted"
