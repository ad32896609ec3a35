"""Checked by pyright and mypy (strict), never run: a typed router over a union payload (the
pattern of ``examples/kinds``) catches a kind that has no handler.

Lines marked ``type: ignore[...]`` / ``pyright: ignore[...]`` must be errors; both checkers
report unused ignores, so if one stopped being an error the check fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from typing_extensions import assert_never

from anysched import Job, MemoryStore, Scheduler


@dataclass(frozen=True)
class Email:
    to: str


@dataclass(frozen=True)
class Sms:
    number: str


@dataclass(frozen=True)
class Push:
    device: str


Task: TypeAlias = Email | Sms


async def every_kind_routed(job: Job[Task]) -> None:
    task = job.payload
    match task:
        case Email():
            pass
        case Sms():
            pass
        case _:
            assert_never(task)


NewTask: TypeAlias = Email | Sms | Push  # a kind added to the union ...


async def a_kind_without_a_case(job: Job[NewTask]) -> None:
    task = job.payload
    match task:
        case Email():
            pass
        case Sms():
            pass
        case _:
            assert_never(task)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]  # ... and no case for it


def routers_are_handlers() -> None:
    Scheduler(MemoryStore[Task](), every_kind_routed)
