"""Checked by pyright and mypy (strict), never run: ``Job[T]`` flows from store to handler.

Lines marked ``type: ignore[...]`` / ``pyright: ignore[...]`` must be errors; both checkers
are configured to report unused ignores, so if one stopped being an error the check fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from typing_extensions import assert_type

from anysched import Backoff, FailJob, Job, MemoryStore, RetryJob, RetryPolicy, Scheduler, open_scheduler


@dataclass(frozen=True)
class Email:
    to: str
    subject: str


@dataclass(frozen=True)
class Sms:
    number: str


async def send_email(job: Job[Email]) -> None:
    assert_type(job.payload, Email)
    assert_type(job.payload.to, str)


async def send_sms(job: Job[Sms]) -> None: ...


async def good() -> None:
    store = MemoryStore[Email]()
    await store.add_job(Job.create(Email("ada@example.com", "hi")))
    async with open_scheduler(store, send_email, workers=2) as scheduler:
        assert_type(scheduler, Scheduler[Email])
        await scheduler.add_job(Job.create(Email("bob@example.com", "yo")))
    jobs = await store.fetch_pending_jobs(Job.create(Email("", "")).process_after, 1, timedelta(seconds=30))
    assert_type(jobs, list[Job[Email]])


async def wrong_handler() -> None:
    store = MemoryStore[Email]()
    async with open_scheduler(store, send_sms):  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        pass
    Scheduler(store, send_sms)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def wrong_payload() -> None:
    store = MemoryStore[Email]()
    await store.add_job(Job.create(Sms("+100")))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    async with open_scheduler(store, send_email) as scheduler:
        await scheduler.add_job(Job.create("not an email"))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def sync_handler(job: Job[Email]) -> None: ...


def not_async() -> None:
    Scheduler(MemoryStore[Email](), sync_handler)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def retries_and_timeouts() -> None:
    store = MemoryStore[Email]()
    policy = RetryPolicy(max_attempts=5, backoff=Backoff(initial=1, maximum=timedelta(minutes=5)))
    async with open_scheduler(store, send_email, retry=policy, job_timeout=timedelta(seconds=90)) as scheduler:
        job = Job.create(Email("ada@example.com", "hi"), max_attempts=3, timeout=30)
        assert_type(job, Job[Email])
        assert_type(job.max_attempts, int | None)
        await scheduler.add_job(job)
    RetryJob("busy", delay=timedelta(seconds=5))
    FailJob("gone")
    open_scheduler(store, send_email, retry=3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    Job.create(Email("", ""), max_attempts="3")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    FailJob()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
