"""Several kinds of job in one store: a union payload and a typed router.

Real services have many job types. Here three kinds (an email, an image to resize, a card to
charge) share one SQLite store: the payload type is their union, which pydantic stores and
decodes by its ``kind`` field (a discriminated union), and one handler routes each job to the
function for its kind with a ``match``. The ``assert_never`` at the end of the ``match`` makes
pyright and mypy reject the program when a kind is added to ``Task`` without a case::

    python examples/kinds/main.py --db kinds.db     # or: python3 -m nox -s example -- kinds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Annotated, Literal, TypeAlias, get_args

import anyio
from pydantic import BaseModel, Field
from typing_extensions import assert_never

from anysched import Job, JobStatus, Scheduler, open_scheduler
from anysched.stores.sqlite import SQLiteStore


class SendEmail(BaseModel):
    kind: Literal["send_email"] = "send_email"
    to: str
    subject: str


class ResizeImage(BaseModel):
    kind: Literal["resize_image"] = "resize_image"
    path: str
    width: int


class ChargeCard(BaseModel):
    kind: Literal["charge_card"] = "charge_card"
    customer: str
    cents: int


Task: TypeAlias = SendEmail | ResizeImage | ChargeCard
"""Every kind of job this service runs: add a kind here, and the checkers ask for its case below."""
TASK_SCHEMA = Annotated[Task, Field(discriminator="kind")]
"""How the store encodes and decodes a Task: by its ``kind`` field."""


async def send_email(task: SendEmail) -> None:
    print(f"  email to {task.to}: {task.subject!r}", flush=True)


async def resize_image(task: ResizeImage) -> None:
    print(f"  image {task.path} resized to {task.width} px wide", flush=True)


async def charge_card(task: ChargeCard) -> None:
    print(f"  charged {task.customer} {task.cents / 100:.2f}", flush=True)


async def run_task(job: Job[Task]) -> None:
    """The router: each kind to its own function, checked for exhaustiveness by pyright and mypy."""
    task = job.payload
    match task:
        case SendEmail():
            await send_email(task)
        case ResizeImage():
            await resize_image(task)
        case ChargeCard():
            await charge_card(task)
        case _:
            assert_never(task)  # a kind without a case is a type error here


def some_tasks() -> list[Task]:
    return [
        SendEmail(to="ada@example.com", subject="Welcome"),
        ResizeImage(path="photos/cat.png", width=640),
        ChargeCard(customer="ada", cents=1999),
        SendEmail(to="bob@example.com", subject="Your receipt"),
        ResizeImage(path="photos/dog.png", width=320),
    ]


async def stop_when_done(store: SQLiteStore[Task], scheduler: Scheduler[Task]) -> None:
    while await store.count(JobStatus.PENDING):  # noqa: ASYNC110 -- the jobs' state lives in the file
        await anyio.sleep(0.1)
    scheduler.shutdown()


async def main(db: str) -> None:
    async with SQLiteStore[Task](db, TASK_SCHEMA) as store:
        await store.add_jobs([Job.create(task) for task in some_tasks()])
        print(f"added {len(some_tasks())} jobs of {len(get_args(Task))} kinds to {db}")
        async with open_scheduler(store, run_task, workers=2, fetch_interval=0.1) as scheduler:
            await stop_when_done(store, scheduler)
        completed = await store.count(JobStatus.COMPLETED)
    print(f"done: {completed} job(s) completed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", help="the SQLite file (default: a new one in a temporary directory)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        anyio.run(main, arguments.db or str(Path(scratch, "kinds.db")))
