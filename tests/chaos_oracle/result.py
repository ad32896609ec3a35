"""The figures of one chaos run, what in them must be zero, and the table the runner prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .records import Cause


@dataclass
class ChaosResult:
    """The figures of one chaos run."""

    backend: str
    store: str
    jobs: int
    lost: int
    completed: int
    failed: int
    failed_by_reason: Counter[str]
    runs: int
    runs_per_job: Counter[int]
    extra_runs: Counter[Cause]
    overlaps: int
    anomalies: list[str]
    run_ends: Counter[str]
    actions: Counter[str]
    events: Counter[str]
    long_runs_renewed: int
    dropped_outcomes: int
    """Runs with a result that the store never recorded because the lease ran out first: it ended
    after the lease did, or during a renewal that went unanswered, or the write of its outcome
    kept failing until the lease was gone (the job runs again: a lease-expiry re-run)."""
    timed_out_in_doubt: int
    """Runs cut off at their job timeout once their holder's lease had run out by the holder's own
    clock (a renewal unanswered, or none sent, until then), with nothing written: the scheduler
    puts such a lease in doubt and records no outcome for a handler it cut off. The store's end of
    the lease may be later: a renewal abandoned then and landing late, or the store's end running
    ahead of the holder's by the renewal's delay (the job runs again: a lease-expiry re-run)."""
    finished_in_drain: int
    elapsed: float
    """Event-loop seconds (virtual on trio's mock clock)."""
    wall: float
    cpu: float = 0.0
    """CPU seconds of this process (threads included): about the wall time on an idle machine."""
    behaviours: Counter[str] = field(default_factory=Counter[str])
    """Handler runs by drawn behaviour."""
    after_cancel: Counter[str] = field(default_factory=Counter[str])
    """Runs that raised something else, or returned, after we cancelled them (and why we did)."""
    adds: Counter[str] = field(default_factory=Counter[str])
    """Jobs the producer added during the run through Scheduler.add_job, and how those adds went."""
    stops: Counter[str] = field(default_factory=Counter[str])
    clock_steps: int = 0
    lost_after_steps: tuple[int, int] = (0, 0)
    """(handlers of the stepped instance cancelled for a lost lease within a lease after a step, at risk)."""
    run_violations: list[str] = field(default_factory=list[str])
    """Crashes, stops nobody asked for, stops past their bound, adds that raised or inserted twice, clock
    steps that cancelled (nearly) every running handler."""
    excused_for_lag: list[str] = field(default_factory=list[str])
    """Breaches of a timing-sensitive rule that the event loop's lag explains (never on a mock clock)."""
    lag_excused: Counter[str] = field(default_factory=Counter[str])
    """How many breaches of each timing-sensitive rule the event loop's lag excused."""
    loop_lag: tuple[float, float, int] = (0.0, 0.0, 0)
    traces: dict[str, str] = field(default_factory=dict[str, str])
    """``Checker.trace`` of the first few jobs an anomaly names: the material of a bug report."""
    """The event loop's lag: (longest single stall, total seconds lost, heartbeats)."""

    @property
    def unexplained(self) -> int:
        return self.extra_runs["unexplained"]

    @property
    def mean_runs(self) -> float:
        return self.runs / self.jobs

    @property
    def ok(self) -> bool:
        return not self.violations()

    def violations(self) -> list[str]:
        """What must never happen and did: a lost job, an unexplained or overlapping run, an anomaly."""
        problems = [f"{count} {what}" for what, count in self._must_be_zero().items() if count]
        if self.completed + self.failed + self.lost != self.jobs:
            problems.append(f"{self.completed} completed + {self.failed} failed + {self.lost} lost != {self.jobs}")
        return problems + self.anomalies + self.run_violations

    def _must_be_zero(self) -> dict[str, int]:
        return {"lost": self.lost, "unexplained": self.unexplained, "overlapping": self.overlaps}

    def new_fault_events(self) -> dict[str, int]:
        """How often each misbehaving handler and each store fault beyond failures happened."""
        return self.handler_fault_events() | self.store_fault_events()

    def handler_fault_events(self) -> dict[str, int]:
        """How often each misbehaving handler happened. Rare draws: a run of a few hundred jobs (the
        database stores' runs) may see none of one, and the scheduler's handling of them does not
        depend on the store, so only the memory store's 10,000-job run requires each."""
        return {
            "handler raised a foreign cancellation": self.behaviours["foreign cancel"],
            "handler's task group raised several errors": self.behaviours["group"],
            "handler's task group: error while a sibling was cancelled": self.behaviours["group with cancel"],
            "handler raised from its clean-up after our cancellation": sum(
                n for what, n in self.after_cancel.items() if what.startswith("raised")
            ),
            "handler swallowed our cancellation": sum(
                n for what, n in self.after_cancel.items() if what.startswith("swallowed")
            ),
        }

    def store_fault_events(self) -> dict[str, int]:
        """How often each store fault beyond failures happened."""
        return {
            "store call hung until cancelled": self.events["store calls hung"],
            "renewal hung until cancelled": self.events["renewals hung"],
            "abandoned write landed late": self.events["late renewals landed"]
            + self.events["late other writes landed"]
            + self.events["late renewals refused"]
            + self.events["late other writes refused"],
            "claim cancelled after the store claimed": self.events["claims cancelled after the store claimed"],
            "job added during the run": self.adds["added during the run"],
            "add_job reply lost after the insert": self.events["lost add_job replies"],
            "clock step": self.clock_steps,
        }

    def missing_on_a_database(self) -> list[str]:
        """The kinds of chaos a database store's run (:func:`~chaos_oracle.database_config`) should
        see that did not happen: a test wants none."""
        happened = (
            self.common_events()
            | {"job timeout": self.run_ends["timeout"], "re-run after an interruption": self.extra_runs["interrupted"]}
            | self.store_fault_events()
        )
        return [name for name, count in happened.items() if count == 0]

    def common_events(self) -> dict[str, int]:
        """How often each kind of chaos every run should see happened (a test wants none at 0)."""
        return {
            "store failure before the store": self.events["store failures before"],
            "store failure after it (a lost reply)": self.events["store failures after (lost reply)"],
            "handler error": self.run_ends["error"],
            "instance cancelled from outside": self.actions["cancel"],
            "graceful shutdown": self.actions["shutdown"],
            "process death": self.actions["kill"] + self.actions["death by poison job"],
            "re-run after a retry": self.extra_runs["retry"],
            "re-run after a lease expiry": self.extra_runs["lease expiry"],
        }

    def table(self) -> str:
        histogram = "  ".join(f"{runs}: {count:,}" for runs, count in sorted(self.runs_per_job.items()))
        failed = ", ".join(f"{reason} {count:,}" for reason, count in sorted(self.failed_by_reason.items()))
        extra = ", ".join(f"{cause} {self.extra_runs[cause]:,}" for cause in CAUSES)
        ends = ", ".join(f"{end} {count:,}" for end, count in sorted(self.run_ends.items()))
        actions = ", ".join(f"{action} {count:,}" for action, count in sorted(self.actions.items()))
        store = ", ".join(
            f"{name} {self.events[name]:,}"
            for name in (
                "store failures before",
                "store failures after (lost reply)",
                "lost fetch replies",
                "jobs in lost fetch replies",
            )
        )
        behaviours = ", ".join(f"{name} {n:,}" for name, n in sorted(self.behaviours.items()))
        after_cancel = ", ".join(f"{name} {n:,}" for name, n in sorted(self.after_cancel.items()))
        hangs = ", ".join(
            f"{name} {self.events[name]:,}"
            for name in (
                "store calls hung",
                "renewals hung",
                "claims cancelled after the store claimed",
                "jobs in cancelled claims",
                "abandoned writes",
                "late renewals landed",
                "late renewals refused",
                "late renewals refused after the lease's outcome",
                "late other writes landed",
                "late other writes refused",
            )
        )
        adds = (
            f"{self.adds['added during the run']:,} through Scheduler.add_job, "
            f"{self.events['lost add_job replies']:,} replies lost after the insert, "
            f"{self.adds['adds that raised']:,} raised, {self.adds['added twice or more']:,} inserted twice"
        )
        lost, at_risk = self.lost_after_steps
        steps = f"{self.clock_steps:,}; handlers cancelled for a lost lease right after one: {lost:,} of {at_risk:,}"
        stops = ", ".join(
            f"{how} {self.stops[how + 's']:,} ({self.stops[how + 's over bound']:,} over bound, "
            f"longest {self.stops['longest ' + how + ' ms'] / 1000:.2f}s)"
            for how in ("cancel", "shutdown", "kill")
        )
        longest, total, ticks = self.loop_lag
        lag = f"longest stall {longest * 1000:.0f} ms, {total:.2f}s lost in all, over {ticks:,} heartbeats"
        excused = ", ".join(f"{rule} {n:,}" for rule, n in sorted(self.lag_excused.items())) or "none"
        rows = [
            ("backend / store", f"{self.backend} / {self.store}"),
            ("jobs", f"{self.jobs:,}"),
            ("jobs lost (must be 0)", f"{self.lost:,}"),
            ("completed", f"{self.completed:,}"),
            ("failed for good", f"{self.failed:,} ({failed or 'none'})"),
            ("handler runs", f"{self.runs:,} (mean {self.mean_runs:.3f} per job)"),
            ("runs per job", histogram),
            ("extra runs by cause", extra),
            ("unexplained runs (must be 0)", f"{self.unexplained:,}"),
            ("overlapping runs (must be 0)", f"{self.overlaps:,}"),
            ("other anomalies (must be 0)", f"{len(self.anomalies):,}"),
            ("runs ended", ends),
            ("long runs renewed, run once", f"{self.long_runs_renewed:,}"),
            ("outcomes not recorded, lease ran out first", f"{self.dropped_outcomes:,}"),
            ("timeouts not recorded, lease in doubt by then", f"{self.timed_out_in_doubt:,}"),
            ("instance events", actions),
            ("store chaos", store),
            ("handler behaviours", behaviours),
            ("raised/returned after our cancel", after_cancel or "none"),
            ("store hangs and late writes", hangs),
            ("jobs added during the run", adds),
            ("clock steps (instance 0)", steps),
            ("stops", stops),
            ("violations (must be 0)", f"{len(self.run_violations):,}"),
            ("event-loop lag", lag),
            ("excused for lag", excused),
            ("finished in the drain", f"{self.finished_in_drain:,}"),
            ("time", f"{self.elapsed:.2f}s event loop, {self.wall:.2f}s wall, {self.cpu:.2f}s CPU"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  ANOMALY: {anomaly}" for anomaly in self.anomalies[:20]]
        lines += [f"  VIOLATION: {violation}" for violation in self.run_violations[:20]]
        lines += [f"  EXCUSED (lag): {excused}" for excused in self.excused_for_lag[:20]]
        for job_id, trace in self.traces.items():
            lines.append(f"  TRACE {job_id}:")
            lines += [f"    {line}" for line in trace.splitlines()]
        return "\n".join(lines)


CAUSES: tuple[Cause, ...] = ("retry", "interrupted", "lease expiry", "unexplained")
