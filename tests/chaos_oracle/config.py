"""Every knob of a chaos run, with the defaults for a memory store and those for a real server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anysched import Backoff


@dataclass(frozen=True)
class ChaosConfig:
    """Every knob of a chaos run. Durations are seconds of the event loop's clock."""

    jobs: int = 10_000
    instances: int = 3
    workers: int = 16
    buffer_size: int | None = None
    seed: int = 1
    fail_rate: float = 0.2
    """Chance that a store call raises TransientStoreError (half before, half after the store)."""
    store_delay: float = 0.002
    """Other store calls sleep up to this long first."""
    visibility_timeout: float = 0.25
    job_timeout: float = 0.6
    fetch_interval: float = 0.05
    shutdown_timeout: float = 2.0
    store_backoff: Backoff = Backoff(initial=0.01, maximum=0.05, jitter=0.005)  # noqa: RUF009 -- immutable
    max_attempts: int = 4
    retry_backoff: Backoff = Backoff(initial=0.005, maximum=0.05, jitter=0.005)  # noqa: RUF009 -- immutable
    quick_run: float = 0.002
    """A successful run sleeps up to this long."""
    p_error: float = 0.06
    p_retry: float = 0.03
    p_fail: float = 0.005
    p_timeout: float = 0.006
    p_long: float = 0.006
    p_foreign_cancel: float = 0.01
    """A handler raises a cancellation of its own (asyncio) or an error after its inner nursery was cancelled (trio)."""
    p_group: float = 0.01
    """A handler's own task group raises several errors."""
    p_group_with_cancel: float = 0.01
    """A handler's own task group: one task raises while its sibling is cancelled (and cleans up)."""
    p_error_in_cancel: float = 0.004
    """A handler runs until we cancel it (timeout, lost lease, shutdown) and raises from its clean-up."""
    p_swallow_cancel: float = 0.004
    """A handler runs until we cancel it, catches the cancellation, waits a shielded moment, returns."""
    retry_delay: float = 0.03
    """A handler's RetryJob asks for up to this delay."""
    p_hang: float = 0.0005
    """Chance that a store call (fetch or write) blocks until its caller cancels it."""
    p_renew_hang: float = 0.03
    """The same for a lease renewal (whose caller gives up when the lease runs out)."""
    p_claim_cancelled: float = 0.006
    """Chance that a fetch claims its jobs and then blocks until its caller cancels it (jobs never delivered).
    At 0.002 a trio run of 10,000 jobs now and then had none, and the test that each fault happened failed."""
    p_late_landing: float = 0.7
    """Chance that an update_job whose caller gave up on it still lands, from a background task."""
    late_delay: float = 0.5
    """... after up to this long."""
    added_during_run: float = 0.05
    """Fraction of the jobs a producer adds during the run through ``Scheduler.add_job`` (not before it)."""
    p_add_lost_reply: float = 0.3
    """Chance that the producer's add_job inserts the job and then loses its reply."""
    clock_step: float = 3.0
    """Instance 0's wall clock steps by this many visibility timeouts (forward, back to 0, back, to 0, ...)."""
    clock_step_interval: float = 1.0
    """About this long between steps (0: no steps)."""
    stop_margin: float = 1.0
    """Slack on every stop's bound (shutdown_timeout, plus the handlers' time left for a graceful one)."""
    stall_after: float = 1.0
    """The controller also acts when no handler has started for this long (every instance may be stuck)."""
    poison_jobs: int = 3
    """Jobs that kill their process every time they run (failed once out of attempts)."""
    chaos_events: int = 30
    """About how many cancellations, shutdowns and deaths the controller causes in all."""
    action_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    """Weights of (cancel from outside, graceful shutdown, process death)."""
    restart_delay: float = 0.02
    stop_at: float = 0.99
    """The chaos phase ends once this fraction of the jobs has finished; the drain does the rest."""
    chaos_timeout: float = 120.0
    """Bound on the chaos phase; the drain finishes whatever is left."""
    drain_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.instances < 1 or self.workers < 1:
            raise ValueError("jobs, instances and workers must be >= 1")
        if not 0.0 < self.stop_at <= 1.0:
            raise ValueError("stop_at must be in (0, 1]")
        if not 0.0 <= self.fail_rate < 1.0:
            raise ValueError("fail_rate must be in [0, 1)")
        if not self.visibility_timeout * 1.2 < self.job_timeout * 0.8:
            raise ValueError("a long run (between 1.2 x visibility_timeout and 0.8 x job_timeout) must fit")
        if self.poison_jobs > self.jobs:
            raise ValueError("poison_jobs must be <= jobs")


def mongo_config(**changes: Any) -> ChaosConfig:
    """Timings for a Mongo server (slower than memory, real I/O), at a size a test server takes."""
    settings: dict[str, Any] = {
        "jobs": 250,
        "workers": 8,
        "store_delay": 0.005,
        "visibility_timeout": 1.0,
        "job_timeout": 2.5,
        "fetch_interval": 0.2,
        "shutdown_timeout": 5.0,
        "store_backoff": Backoff(initial=0.05, maximum=0.5, jitter=0.05),
        "retry_backoff": Backoff(initial=0.05, maximum=0.2, jitter=0.02),
        "quick_run": 0.01,
        "retry_delay": 0.1,
        "p_fail": 0.02,
        "p_timeout": 0.02,
        "p_long": 0.02,
        "poison_jobs": 1,
        "chaos_events": 10,
        "restart_delay": 0.1,
        "stop_at": 0.95,
        "chaos_timeout": 60.0,
        "p_error_in_cancel": 0.01,
        "p_swallow_cancel": 0.01,
        "p_hang": 0.003,
        "p_renew_hang": 0.15,
        "p_claim_cancelled": 0.02,
        "late_delay": 2.0,
        "clock_step_interval": 3.0,
        "stop_margin": 2.0,
        "stall_after": 3.0,
    }
    settings.update(changes)
    return ChaosConfig(**settings)


def database_config(jobs: int) -> ChaosConfig:
    """The SQLite and Postgres runs: :func:`mongo_config`'s timings for ``jobs`` jobs, the rarest store
    faults' odds raised (measured at mongo_config's: 3-5 hangs and 2-10 cancelled claims a run) so that
    each happens in every run; not more: each hang stalls an instance until it is stopped (at twice these
    odds a run took 3 x as long)."""
    return mongo_config(
        jobs=jobs, store_delay=0.002, chaos_events=20, p_hang=0.005, p_claim_cancelled=0.03, p_add_lost_reply=0.5
    )
