"""Retries: of store calls (exponential backoff through stamina, until cancelled) and of failed jobs."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import stamina

from ._exceptions import TransientStoreError
from ._time import Seconds, to_seconds

R = TypeVar("R")

logger = logging.getLogger("anysched")

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (TransientStoreError, ConnectionError, TimeoutError)
"""What a store raises for a failure that may pass; everything else is permanent."""


def is_transient(error: Exception) -> bool:
    """Whether a store error is worth retrying (lost leases and duplicate ids never are)."""
    return isinstance(error, TRANSIENT_ERRORS)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, in stamina's meaning, used for every retry anysched makes.

    The delay before retry *n* (1-based) is ``initial * 2 ** (n - 1)`` plus a random jitter of
    up to ``jitter`` seconds (so that many workers do not retry in step), the sum capped at
    ``maximum``. The default is go-sched's policy: 100 ms doubling up to 5 s, with up to 100 ms
    of jitter.
    """

    initial: Seconds = 0.1
    maximum: Seconds = 5.0
    jitter: Seconds = 0.1

    def __post_init__(self) -> None:
        initial = to_seconds("initial", self.initial)
        maximum = to_seconds("maximum", self.maximum)
        to_seconds("jitter", self.jitter, allow_zero=True)
        if maximum < initial:
            raise ValueError(f"maximum ({self.maximum!r}) must be >= initial ({self.initial!r})")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based), jitter included."""
        initial, maximum = to_seconds("initial", self.initial), to_seconds("maximum", self.maximum)
        jitter = to_seconds("jitter", self.jitter, allow_zero=True)
        exponential = initial * 2.0 ** min(attempt - 1, 64)  # no float overflow at attempt 1025
        return min(maximum, exponential + (random.uniform(0.0, jitter) if jitter else 0.0))


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed job is retried: at most ``max_attempts`` attempts in all, ``backoff`` apart.

    Attempts are counted when a job is claimed, so every attempt counts: one whose handler
    raised or timed out, and one whose process died (its lease expired). A failed attempt
    with attempts left puts the job back to pending, due after the backoff delay (plus
    random jitter); the last one leaves it failed. A job claimed once more after its last
    attempt (a job that kills its process every time) is failed without running.

    :param max_attempts: attempts per job, the first one included (``1``: no retries)
    :param backoff: the delay before retry *n* is ``backoff.initial * 2 ** (n - 1)`` plus up
        to ``backoff.jitter`` seconds, capped at ``backoff.maximum`` (see :class:`Backoff`)
    """

    max_attempts: int = 3
    backoff: Backoff = Backoff(initial=1.0, maximum=300.0, jitter=1.0)

    def __post_init__(self) -> None:
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not isinstance(self.backoff, Backoff):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"backoff must be an anysched.Backoff, not {type(self.backoff).__name__}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): ``backoff.delay(attempt)``."""
        return self.backoff.delay(attempt)


class CountedCall(Generic[R]):
    """A store call that counts how often it was made: when a retry is refused, an earlier
    attempt whose reply was lost may have landed (an insert, an outcome that ended its lease)."""

    def __init__(self, call: Callable[[], Awaitable[R]]) -> None:
        self._call = call
        self.count = 0

    def __call__(self) -> Awaitable[R]:
        self.count += 1
        return self._call()


async def call_store(operation: str, job_id: str | None, call: Callable[[], Awaitable[R]], backoff: Backoff) -> R:
    """Await ``call()``; retry transient errors with ``backoff`` until it succeeds or we are cancelled.

    The first attempt runs bare: stamina's machinery costs tens of microseconds a call,
    too much for a hot path whose store calls almost always succeed. Only after a
    transient failure does the stamina loop take over, with the same backoff: its wait
    before its attempt *k* (our retry *k + 1*) is ``Backoff.delay(k + 1)``.
    """
    try:
        return await call()
    except Exception as error:
        if not is_transient(error):
            raise
        wait = backoff.delay(1)
        _log_retry(operation, job_id, error, 1, wait)
    await anyio.sleep(wait)
    async for attempt in stamina.retry_context(
        on=is_transient,
        attempts=None,
        timeout=None,
        wait_initial=2 * to_seconds("initial", backoff.initial),
        wait_max=backoff.maximum,
        wait_jitter=backoff.jitter,
        wait_exp_base=2,
    ):
        with attempt:
            try:
                return await call()
            except Exception as error:
                if is_transient(error):
                    _log_retry(operation, job_id, error, attempt.num + 1, attempt.next_wait)
                raise
    raise AssertionError("unreachable: stamina retries without limit")  # pragma: no cover


def _log_retry(operation: str, job_id: str | None, error: Exception, attempt: int, wait: float) -> None:
    logger.warning(
        "store %s failed (attempt %d%s): %r; retrying in %.2fs",
        operation,
        attempt,
        "" if job_id is None else f", job {job_id}",
        error,
        wait,
    )
