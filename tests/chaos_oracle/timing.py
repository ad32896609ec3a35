"""The timing-sensitive rules: every stop ends within its bound, and a clock step does not cancel (nearly) every
running handler of the stepped instance; a breach that the event loop's measured lag explains is excused."""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

from .clock import LAG_EXCUSE, STEPPED_SLOT
from .records import Run

if TYPE_CHECKING:
    from .controller import ChaosRun


class TimingRules:
    """The stops and clock steps of one finished :class:`ChaosRun`, judged."""

    def __init__(self, chaos: ChaosRun) -> None:
        self.config = chaos.config
        self.store = chaos.store
        self.runs = chaos.runs
        self.incarnations = chaos.incarnations
        self.stepped_clock = chaos.stepped_clock
        self.lag = chaos.lag

    def stop_figures(self) -> Counter[str]:
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

    def stop_verdicts(self) -> tuple[list[str], list[str]]:
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

    def stepped_runs_at(self, moment: float) -> list[Run]:
        """The stepped instance's runs going on at event-loop time ``moment``."""
        prefix = f"i{STEPPED_SLOT}."
        return [
            run
            for run in self.runs
            if run.incarnation.startswith(prefix) and run.began <= moment and (run.ended is None or run.ended > moment)
        ]

    def lost_after_step(self, at: float) -> tuple[int, int]:
        """(handlers cancelled for a lost lease within one lease after the step at ``at``, handlers at risk):
        at risk are those running at the step and still running a third of a lease later, or lost."""
        vt = self.config.visibility_timeout
        running = self.stepped_runs_at(at)
        lost = [r for r in running if r.kind == "lost" and r.ended is not None and r.ended <= at + vt]
        lost = [r for r in lost if not self.renewal_hung(r)]  # lost to the store, not to the step
        at_risk = [r for r in running if r in lost or r.ended is None or r.ended > at + vt / 3]
        return len(lost), len(at_risk)

    def renewal_hung(self, run: Run) -> bool:
        claim = self.store.by_lease.get((run.job_id, run.lease or ""))
        return claim is not None and claim.renewal_hung

    def lost_after_steps(self) -> tuple[int, int]:
        pairs = [self.lost_after_step(at) for at, _ in self.stepped_clock.steps]
        return sum(lost for lost, _ in pairs), sum(at_risk for _, at_risk in pairs)

    def step_verdicts(self) -> tuple[list[str], list[str]]:
        """The rule "a clock step must not cancel (nearly) every running handler of the stepped
        instance for a lost lease": (violations, cases excused because the event loop stalled for
        more than ``LAG_EXCUSE`` of a lease within a lease of the step, which alone loses renewals)."""
        vt = self.config.visibility_timeout
        found: list[str] = []
        excused: list[str] = []
        for at, offset in self.stepped_clock.steps:
            lost, at_risk = self.lost_after_step(at)
            if lost >= 2 and 2 * lost >= at_risk:
                lag = self.lag.longest(at - vt, at + vt)
                what = (
                    f"clock step to {offset:+.2f}s at {at:.2f}s: {lost} of {at_risk} running handlers on "
                    f"i{STEPPED_SLOT} cancelled for a lost lease"
                )
                stall = f"{what} (longest event-loop stall within a lease of it: {lag * 1000:.0f} ms)"
                (excused if lag > LAG_EXCUSE * vt else found).append(stall)
        return found, excused
