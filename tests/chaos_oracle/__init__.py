"""The chaos run: many jobs through several schedulers on a flaky store, with cancellations and process deaths.

One run, on one backend:

- **jobs** (10,000 by default) on a shared store (a ``MemoryStore``, or a ``MongoStore``);
- a **flaky store**: each call fails with ``TransientStoreError`` with probability ``fail_rate``
  (half of those before the call reaches the store, half after it succeeded: a lost reply,
  fetches of jobs included, whose jobs then wait out their lease); every other call is delayed by a
  random sleep of up to ``store_delay``;
- **handlers** that, by a seeded draw per (job, run), mostly succeed at once, or raise (retried by the
  ``RetryPolicy``), postpone themselves (``RetryJob``), fail for good (``FailJob``), run past the job
  timeout (``JobTimeoutError``) or run long (longer than the visibility timeout, shorter than the job
  timeout: their leases must be renewed and they must not run twice); a few **poison jobs** kill
  their process every time they run. Misbehaving handlers too (the table ``HANDLERS``): a **foreign
  cancellation** (asyncio: a ``CancelledError`` of an inner task the handler cancelled itself; trio: an
  inner nursery cancelled, then an error), **exception groups** of the handler's own task group (with
  and without a sibling cancelled inside it), **errors raised while being cancelled** (the clean-up
  after our timeout, lost lease or shutdown raises a ``ValueError`` or a group) and **swallowed
  cancellations** (caught, a shielded moment, a normal return);
- **store faults** beyond failures (the ``StoreFaults`` draw): calls that **hang** until their caller
  cancels them (renewals most often), writes that an abandoned caller left behind **landing late**
  from a background task (as a sync driver's worker thread would), claims **cancelled after the store
  made them**, and ``add_job`` replies lost after the insert, for jobs a producer adds during the run
  through ``Scheduler.add_job``;
- **instances** schedulers, each through its own "process" (a proxy in front of the store); a seeded
  controller, every so many handler runs, picks an instance and cancels it from outside (its clean-up
  hands jobs back through the flaky store), shuts it down gracefully, or **kills** it: its process
  proxy drops every later call (fetches return nothing, writes vanish), its task group is torn down,
  its leases are left to expire. A fresh incarnation with a fresh proxy then starts in its place.
  Instance 0's wall clock is **stepped** forward and back by a few visibility timeouts (the store
  decides claims by its own clock, as a database server does).

When every job has finished (or ``chaos_timeout`` passed) everything is cancelled, the run waits out
the visibility timeout and drains the store with one clean scheduler on a non-flaky proxy. The store
wrapper records every claim (lease token, claim time, lease end) and every write the store accepted,
the handlers record every run (job, lease, attempt, incarnation, start, end, how it ended); the checker
then reports jobs lost (must be 0), completed, failed for good by reason, handler runs per job, and
every run beyond a job's first classified by its cause: a retry, an interruption (handed back), a real
lease expiry, or **unexplained** (must be 0). It also checks that no two runs of a job overlapped while
the earlier one's lease held, that no claim happened while another lease held or after the job
finished, and that each run's recorded ending matches what its handler did. And that no
scheduler stopped or crashed unless told to, that every stop ended within its bound, that every job
added during the run was added exactly once without an error, that no write landed after its lease's
outcome, and that a clock step did not cancel every running handler of the stepped instance.

Two of those rules are timing-sensitive on a real clock: a loaded machine's event loop may wake
late enough to lose renewals (a 0.25 s lease) or to stretch a stop. A heartbeat measures the loop's
lag; a clock step's lost-lease cancellations, or a stop's overrun, that the lag around it explains
are excused, shown and counted in the table ("excused for lag"), never hidden. On trio's mock clock
there is no lag, so there both rules are enforced in full.

The modules, one job each: ``config`` (the knobs), ``clock`` (the event loop's time as a wall clock, the
stepped clock, the lag monitor), ``workload`` (the payload and the handlers' behaviours), ``records`` (what
the store and the handlers record), ``proxy`` (the flaky store and each incarnation's process),
``incarnation`` (one life of an instance, and how a handler run on it is performed and recorded),
``controller`` (the instances, their stops and deaths, the producer, the drain), ``checker`` (the record
judged, into the figures), ``rules`` (the pure rules over one job's claims and runs), ``timing`` (the
rules on stops and clock steps, with the lag's excuses) and ``result`` (the figures and the table).
``bench/chaos.py`` is the command line.
"""

from __future__ import annotations

from .config import ChaosConfig as ChaosConfig
from .config import database_config as database_config
from .config import mongo_config as mongo_config
from .controller import run_chaos as run_chaos
from .result import ChaosResult as ChaosResult
from .workload import Work as Work

__all__ = ("ChaosConfig", "ChaosResult", "Work", "database_config", "mongo_config", "run_chaos")
