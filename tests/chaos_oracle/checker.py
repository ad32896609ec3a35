"""The checker: the store's record and the handlers' judged against the rules, into a :class:`ChaosResult`."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from anysched import Job, JobStatus

from .records import Cause, Claim, Run
from .result import ChaosResult
from .rules import DROPPED, TIMED_OUT_IN_DOUBT, failure_reason, in_server_order, inconsistency, succession_anomalies
from .timing import TimingRules
from .workload import Work

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
        self.timing = TimingRules(chaos)
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
                reason = failure_reason(job.last_error)
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
        problem = inconsistency(run, held, killed=self.killed.get(run.incarnation, False), lease=lease)
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
        step_violations, steps_excused = self.timing.step_verdicts()
        named = dict.fromkeys(a.split(":", 1)[0] for a in tally.anomalies if a.startswith("chaos-"))
        traces = {job_id: self.trace(job_id) for job_id in list(named)[:TRACED]}
        stop_violations, stops_excused = self.timing.stop_verdicts()
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
            stops=self.timing.stop_figures(),
            clock_steps=len(self.stepped_clock.steps),
            lost_after_steps=self.timing.lost_after_steps(),
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
