"""A scheduler's options, checked once and kept in their normal form.

:class:`~anysched.Scheduler` declares the options and their defaults (``open_scheduler`` is the
same class); they are checked here, so a bad value fails at construction with an error that names
the option, and every part of the scheduler reads the same normalised values.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from ._retry import Backoff, RetryPolicy
from ._store import JobStore, KnowsNextDueTime
from ._time import Seconds, require_utc, to_seconds


@dataclass(frozen=True)
class Settings:
    """The options of one scheduler, checked and normalised (durations in seconds).

    :param workers: how many handlers may run at once
    :param fetch_interval: how long to sleep when no job is due (at most)
    :param visibility_timeout: how long a lease lasts
    :param shutdown_timeout: the bound on a stop's store calls
    :param buffer_size: how many leased jobs may wait for a free worker
    :param store_backoff: the backoff between retries of a failed store call
    :param retry: how failed jobs are retried (``None``: they are not)
    :param job_timeout: how long a handler may run (``None``: no limit)
    :param clock: the wall clock, for what is stored
    :param wake_ups: listen to the store's wake-ups, when it sends them
    """

    workers: int
    fetch_interval: float
    visibility_timeout: timedelta
    shutdown_timeout: float
    buffer_size: int
    store_backoff: Backoff
    retry: RetryPolicy | None
    job_timeout: float | None
    clock: Callable[[], datetime]
    wake_ups: bool = True

    @classmethod
    def of(
        cls,
        *,
        workers: int,
        fetch_interval: Seconds,
        visibility_timeout: Seconds,
        shutdown_timeout: Seconds,
        buffer_size: int | None,
        store_backoff: Backoff,
        retry: RetryPolicy | None,
        job_timeout: Seconds | None,
        clock: Callable[[], datetime],
        wake_ups: bool = True,
    ) -> Settings:
        """The settings for these options; a ``ValueError`` or ``TypeError`` names a bad one."""
        _check_count("workers", workers, minimum=1)
        if not isinstance(store_backoff, Backoff):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"store_backoff must be an anysched.Backoff, not {type(store_backoff).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"retry must be an anysched.RetryPolicy or None, not {type(retry).__name__}")
        if not callable(clock):
            raise TypeError("clock must be a callable returning a timezone-aware datetime")
        if not isinstance(wake_ups, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"wake_ups must be a bool, not {type(wake_ups).__name__}")
        settings = cls(
            workers=workers,
            fetch_interval=to_seconds("fetch_interval", fetch_interval),
            visibility_timeout=timedelta(seconds=to_seconds("visibility_timeout", visibility_timeout)),
            shutdown_timeout=to_seconds("shutdown_timeout", shutdown_timeout),
            buffer_size=workers if buffer_size is None else _check_count("buffer_size", buffer_size, minimum=0),
            store_backoff=store_backoff,
            retry=retry,
            job_timeout=None if job_timeout is None else to_seconds("job_timeout", job_timeout),
            clock=clock,
            wake_ups=wake_ups,
        )
        settings._check_lease_can_be_renewed()
        return settings

    @property
    def capacity(self) -> int:
        """The most jobs the scheduler holds at once: one per worker plus the buffer."""
        return self.workers + self.buffer_size

    def now(self) -> datetime:
        """The wall clock's time, checked: timezone-aware, as UTC."""
        return require_utc("clock()", self.clock())

    def timeout_of(self, job_timeout: float | None) -> float | None:
        """A job's handler timeout: its own, else the scheduler's."""
        return self.job_timeout if job_timeout is None else job_timeout

    def _check_lease_can_be_renewed(self) -> None:
        """A lease is renewed when a third of it has passed; a renewal that fails must have time
        to be retried before the lease runs out, or one blip of the store loses every lease."""
        initial = to_seconds("store_backoff.initial", self.store_backoff.initial)
        lease = self.visibility_timeout.total_seconds()
        if lease <= 3 * initial:
            raise ValueError(
                f"visibility_timeout ({lease:g}s) must be more than 3 x store_backoff.initial ({initial:g}s): "
                "leases are renewed when a third of them has passed, and a failed renewal must be retried "
                "before the lease runs out"
            )


def check_store(store: object) -> None:
    """A ``TypeError`` unless ``store`` has the three methods of the store contract."""
    if not isinstance(store, JobStore):
        raise TypeError(
            f"store must implement the JobStore protocol (fetch_pending_jobs, update_job, add_job), "
            f"not {type(store).__name__}"
        )


def next_due_time_of(store: object) -> Callable[[], object] | None:
    """The store's ``next_due_time``, if it has the optional capability."""
    return store.next_due_time if isinstance(store, KnowsNextDueTime) else None


def check_handler(handler: object) -> None:
    """A ``TypeError`` unless ``handler`` is an async function (or has an async ``__call__``) that
    can be called with one positional argument, the job."""
    call = getattr(handler, "__call__", None)  # noqa: B004 -- an async __call__ counts too
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise TypeError(f"handler must be an async function (async def handler(job): ...), got {handler!r}")
    signature = _signature_of(handler)
    if signature is None:
        return
    try:
        signature.bind(None)  # as the worker calls it: handler(job)
    except TypeError as error:
        # Found now rather than at run time, where every job would fail with this same error.
        raise TypeError(
            f"handler must take the job as its one positional argument (async def handler(job): ...), "
            f"but {handler!r} has the signature {signature}: {error}"
        ) from None


def _signature_of(handler: object) -> inspect.Signature | None:
    """The signature a call of ``handler`` binds to; ``None`` for what cannot be inspected (some
    callables written in C): those are given the benefit of the doubt."""
    try:
        return inspect.signature(cast("Callable[..., object]", handler))  # callable: check_handler saw to it
    except (TypeError, ValueError):
        return None


def _check_count(name: str, value: int, *, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
