"""Bad configuration and bad input fail at once, with an error that names the culprit."""

from __future__ import annotations

import functools
import inspect
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from anysched import (
    Backoff,
    DuplicateJobError,
    FailJob,
    Job,
    JobNotFoundError,
    JobStatus,
    LeaseLostError,
    MemoryStore,
    RetryJob,
    RetryPolicy,
    Scheduler,
    open_scheduler,
)


async def handler(job: Job[int]) -> None:
    pass


def make(**options: Any) -> Scheduler[int]:
    return Scheduler(MemoryStore[int](), handler, **options)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be an int >= 1, got 0"),
        ({"workers": -3}, ValueError, "workers must be an int >= 1"),
        ({"workers": 2.5}, ValueError, "workers must be an int >= 1"),
        ({"workers": True}, ValueError, "workers must be an int >= 1"),
        ({"buffer_size": -1}, ValueError, "buffer_size must be an int >= 0"),
        ({"fetch_interval": 0}, ValueError, "fetch_interval must be > 0"),
        ({"fetch_interval": -1.0}, ValueError, "fetch_interval must be > 0"),
        ({"fetch_interval": float("nan")}, ValueError, "fetch_interval must be finite"),
        ({"fetch_interval": float("inf")}, ValueError, "fetch_interval must be finite"),
        ({"fetch_interval": "1"}, TypeError, "fetch_interval must be seconds"),
        ({"visibility_timeout": timedelta(0)}, ValueError, "visibility_timeout must be > 0"),
        ({"visibility_timeout": timedelta(seconds=-5)}, ValueError, "visibility_timeout must be > 0"),
        ({"shutdown_timeout": 0}, ValueError, "shutdown_timeout must be > 0"),
        ({"store_backoff": 0.1}, TypeError, "store_backoff must be an anysched.Backoff"),
        ({"clock": "now"}, TypeError, "clock must be a callable"),
        ({"retry": 3}, TypeError, "retry must be an anysched.RetryPolicy or None"),
        ({"job_timeout": 0}, ValueError, "job_timeout must be > 0"),
        ({"job_timeout": "5"}, TypeError, "job_timeout must be seconds"),
        (
            {"visibility_timeout": 0.3, "store_backoff": Backoff(initial=0.1)},
            ValueError,
            r"visibility_timeout \(0.3s\) must be more than 3 x store_backoff.initial \(0.1s\)",
        ),
    ],
)
def test_bad_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make(**options)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Scheduler(MemoryStore[int](), handler, 5)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]


def test_durations_accept_seconds_and_timedeltas() -> None:
    make(fetch_interval=timedelta(milliseconds=250), visibility_timeout=45, shutdown_timeout=2.5)
    make(job_timeout=timedelta(minutes=5), visibility_timeout=30)  # longer than a lease is fine: leases are renewed


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be an int >= 1, got 0"),
        ({"max_attempts": 2.0}, ValueError, "max_attempts must be an int >= 1"),
        ({"backoff": 1.0}, TypeError, "backoff must be an anysched.Backoff"),
    ],
)
def test_bad_retry_policy(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        RetryPolicy(**options)


def test_retry_delays_double_plus_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff=Backoff(initial=1, maximum=8, jitter=0.5))
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (5000, 8)]:
        assert base <= policy.delay(attempt) <= min(8, base + 0.5)


def test_retry_job_and_fail_job_carry_their_reason() -> None:
    assert RetryJob("busy", delay=timedelta(minutes=1)).delay == 60
    assert RetryJob().delay is None
    assert FailJob("gone").reason == "gone"
    with pytest.raises(ValueError, match="delay must be >= 0"):
        RetryJob(delay=-1)


def test_a_sync_handler_is_refused() -> None:
    def sync_handler(job: Job[int]) -> None:
        pass

    with pytest.raises(TypeError, match="handler must be an async function"):
        Scheduler(MemoryStore[int](), sync_handler)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_an_async_callable_object_is_a_handler() -> None:
    class Handler:
        async def __call__(self, job: Job[int]) -> None:
            pass

    Scheduler(MemoryStore[int](), Handler())


async def _no_job() -> None:
    pass


async def _two_jobs(first: Job[int], second: Job[int]) -> None:
    pass


async def _keyword_only(*, job: Job[int]) -> None:
    pass


@pytest.mark.parametrize("bad", [_no_job, _two_jobs, _keyword_only, functools.partial(_two_jobs)])
def test_a_handler_that_cannot_take_a_job_is_refused_at_construction(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"handler must take the job as its one positional argument") as raised:
        Scheduler(MemoryStore[int](), bad)
    assert "signature (" in str(raised.value)  # says what the handler's signature is


class _Handlers:
    async def method(self, job: Job[int]) -> None:
        pass

    async def __call__(self, job: Job[int], *, retries: int = 3) -> None:
        pass


async def _with_extras(job: Job[int], extra: int = 0, *more: object, flag: bool = False) -> None:
    pass


async def _anything(*args: object, **kwargs: object) -> None:
    pass


@pytest.mark.parametrize(
    "good",
    [
        handler,
        _Handlers().method,  # a bound method: self is already given
        _Handlers(),  # a callable object
        functools.partial(_two_jobs, Job.create(0)),  # a partial that leaves one argument
        _with_extras,
        _anything,
    ],
)
def test_a_handler_that_can_take_a_job_is_accepted(good: Any) -> None:
    Scheduler(MemoryStore[int](), good)


def test_a_handler_whose_signature_cannot_be_read_is_given_the_benefit_of_the_doubt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(obj: object) -> inspect.Signature:
        raise ValueError(f"no signature found for {obj!r}")  # as for some callables written in C

    monkeypatch.setattr(inspect, "signature", unreadable)
    Scheduler(MemoryStore[int](), _no_job)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_a_store_must_have_the_three_methods() -> None:
    class NotAStore:
        async def add_job(self, job: Job[int]) -> None:
            pass

    with pytest.raises(TypeError, match="store must implement the JobStore protocol"):
        Scheduler(NotAStore(), handler)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@pytest.mark.anyio
async def test_open_scheduler_checks_before_starting() -> None:
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        async with open_scheduler(MemoryStore[int](), handler, workers=0):
            pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": 0}, "initial must be > 0"),
        ({"maximum": -1}, "maximum must be > 0"),
        ({"jitter": -0.1}, "jitter must be >= 0"),
        ({"initial": 2, "maximum": 1}, r"maximum \(1\) must be >= initial \(2\)"),
    ],
)
def test_bad_backoff(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**options)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    assert [backoff.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], abs=0.1)
    exact = Backoff(initial=0.1, maximum=1.0, jitter=0)
    assert [exact.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_jitter_is_inside_the_cap_as_in_stamina() -> None:
    """One meaning everywhere: ``min(maximum, initial * 2 ** (n - 1) + jitter)``, the first retry included."""
    backoff = Backoff(initial=1.0, maximum=4.0, jitter=0.5)
    first = {backoff.delay(1) for _ in range(200)}
    assert min(first) >= 1.0
    assert max(first) <= 1.5
    assert len(first) > 1  # the first retry has jitter too
    assert {backoff.delay(3) for _ in range(200)} == {4.0}  # 4 + jitter, capped at 4
    assert all(2.0 <= backoff.delay(2) <= 2.5 for _ in range(200))
    assert Backoff(initial=timedelta(seconds=1), maximum=timedelta(seconds=4)).delay(5) == 4.0


class TestJob:
    def test_create_defaults(self) -> None:
        before = datetime.now(timezone.utc)
        job = Job.create({"to": "ada"})
        assert job.payload == {"to": "ada"}
        assert len(job.id) == 36
        assert job.status is JobStatus.PENDING
        assert before <= job.process_after <= datetime.now(timezone.utc)
        assert (job.visible_after, job.processed_at, job.lease, job.last_error, job.attempts) == (
            None,
            None,
            None,
            None,
            0,
        )
        assert Job.create(1).id != Job.create(1).id

    def test_a_naive_datetime_is_refused(self) -> None:
        with pytest.raises(ValueError, match="process_after must be timezone-aware") as raised:
            Job.create(1, process_after=datetime(2030, 1, 1))
        assert "datetime.now(timezone.utc)" in str(raised.value)  # how to make an aware one
        assert ".replace(tzinfo=timezone.utc)" in str(raised.value)
        with pytest.raises(ValueError, match="visible_after must be timezone-aware"):
            Job(1, visible_after=datetime(2030, 1, 1))
        with pytest.raises(TypeError, match="processed_at must be a datetime"):
            Job(1, processed_at="2030-01-01")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    def test_other_zones_are_converted_to_utc(self) -> None:
        tokyo = timezone(timedelta(hours=9))
        job = Job.create(1, process_after=datetime(2030, 1, 1, 9, tzinfo=tokyo))
        assert job.process_after == datetime(2030, 1, 1, 0, tzinfo=timezone.utc)
        assert job.process_after.tzinfo is timezone.utc

    def test_statuses_are_strings(self) -> None:
        assert JobStatus.FAILED == "failed"  # type: ignore[comparison-overlap]  # a str enum: equal on purpose
        assert str(JobStatus.COMPLETED) == "completed"
        assert Job(1, status="completed").status is JobStatus.COMPLETED  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        with pytest.raises(ValueError, match="'done' is not a valid JobStatus"):
            Job(1, status="done")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("id", ""),
            ("id", 5),
            ("attempts", -1),
            ("attempts", 1.0),
            ("max_attempts", 0),
            ("max_attempts", "3"),
            ("timeout", 0),
            ("timeout", -1.5),
        ],
    )
    def test_bad_fields(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=field):
            Job(1, **{field: value})  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    def test_a_jobs_own_limits(self) -> None:
        job = Job.create(1, max_attempts=5, timeout=timedelta(seconds=90))
        assert (job.max_attempts, job.timeout) == (5, 90.0)
        assert (Job.create(1).max_attempts, Job.create(1).timeout) == (None, None)

    def test_jobs_are_immutable(self) -> None:
        job = Job.create(1)
        with pytest.raises(AttributeError):
            job.attempts = 3  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]


def test_a_jobs_repr_never_shows_its_payload() -> None:
    """Jobs end up in log lines and tracebacks; a payload may hold a card number."""
    job = Job.create({"card": "4111111111111111"}, id="job-1")
    assert "4111" not in repr(job)
    assert "job-1" in repr(job)


@pytest.mark.parametrize("error", [DuplicateJobError("j"), LeaseLostError("j"), JobNotFoundError("j")])
def test_errors_survive_pickling(error: Exception) -> None:
    """They cross process boundaries (multiprocessing, task queues): rebuilt, they say the same."""
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
