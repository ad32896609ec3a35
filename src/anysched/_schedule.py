"""Recurring schedules: a cron expression in a time zone, or a fixed interval, and the slots they make.

Everything here is pure (no I/O, no clock): the ticker (:mod:`._ticker`) asks which slots are due
and turns each into a job whose id every process derives the same way, so the store's duplicate
check lets exactly one of them add it.

Cron expressions are evaluated by cronsim, which follows Debian cron around daylight-saving
changes: a time that falls in the spring-forward gap runs at the first valid moment after it,
and a time repeated at fall-back runs once (its first occurrence). croniter was considered and
not chosen: it fires a daily job twice on the fall-back day.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Literal, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._job import Job
from ._time import require_utc, to_seconds

T = TypeVar("T")

Misfire = Literal["coalesce", "each"]
"""What happens to slots missed while no scheduler ran: one run for the latest, or one per slot."""

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The usual names for cron expressions (cronsim reads only the five fields)."""

_INTERVAL_ANCHOR = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""Where an interval schedule without ``start`` counts from, so every process agrees on its slots."""

_JOB_ID_PREFIX = "schedule:"


@dataclass(frozen=True, kw_only=True)
class Schedule(Generic[T]):
    """A recurring job: ``payload`` enqueued once per slot, the slots given by ``cron`` or ``every``.

    Give exactly one of ``cron`` and ``every``. Every process that runs a scheduler with the same
    schedule enqueues each slot's job under the same id (``slot_job_id``), so a slot runs
    once however many processes declare it.

    :param id: names the schedule; part of each slot's job id, so keep it stable
    :param payload: what each slot's job carries (``job.payload``)
    :param cron: five cron fields (``"0 8 * * MON"``) or a name (``@hourly``, ``@daily``,
        ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``), read in ``zone``
    :param zone: the IANA time zone the cron expression's fields are read in (``"Europe/Paris"``)
    :param every: a fixed interval of real elapsed time, counted from ``start`` (or the Unix epoch)
    :param start: no slot before this moment (timezone-aware)
    :param end: no slot after this moment (timezone-aware)
    :param jitter: each slot's job is due up to this much after its slot, by an offset derived
        from the slot (every process computes the same one): spreads many schedules' load
    :param max_attempts: each slot's job's attempt budget (default: the scheduler's retry policy)
    :param timeout: seconds each slot's handler may run (default: the scheduler's ``job_timeout``)
    :param misfire: for slots missed while no scheduler ran (or while the store was down):
        ``"coalesce"`` runs one job, for the latest missed slot; ``"each"`` runs one per missed slot,
        the latest ``catch_up_limit`` of them
    :param misfire_grace: a missed slot older than this is skipped, never run (the slot a running
        ticker wakes for counts as on time up to a second late, so ``0`` skips only missed slots)
    :param catch_up_limit: the most missed slots ``"each"`` runs at once (never a burst)
    :param paused: a paused schedule enqueues nothing (for schedules kept in a store, changed
        at run time: see :class:`~anysched.StoresSchedules`)
    """

    id: str
    payload: T = field(repr=False)  # a payload may hold secrets: a logged repr must not show it
    cron: str | None = None
    zone: str = "UTC"
    every: timedelta | None = None
    start: datetime | None = None
    end: datetime | None = None
    jitter: timedelta = timedelta(0)
    max_attempts: int | None = None
    timeout: float | None = None
    misfire: Misfire = "coalesce"
    misfire_grace: timedelta = timedelta(days=1)
    catch_up_limit: int = 10
    paused: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"id must be a non-empty string, got {self.id!r}")
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        self._check_cron_and_zone()
        if self.every is not None:
            _check_positive("every", self.every)
        for name in ("start", "end"):
            value: datetime | None = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, require_utc(name, value))
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end must not be before start")
        _check_positive("jitter", self.jitter, allow_zero=True)
        _check_positive("misfire_grace", self.misfire_grace, allow_zero=True)
        if self.max_attempts is not None and (type(self.max_attempts) is not int or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be None or an int >= 1, got {self.max_attempts!r}")
        if self.timeout is not None:
            object.__setattr__(self, "timeout", to_seconds("timeout", self.timeout))
        if self.misfire not in ("coalesce", "each"):
            raise ValueError(f"misfire must be 'coalesce' or 'each', got {self.misfire!r}")
        if type(self.catch_up_limit) is not int or self.catch_up_limit < 1:
            raise ValueError(f"catch_up_limit must be an int >= 1, got {self.catch_up_limit!r}")
        if not isinstance(self.paused, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"paused must be a bool, not {type(self.paused).__name__}")

    def _check_cron_and_zone(self) -> None:
        try:
            zone = ZoneInfo(self.zone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"zone must be an IANA time zone name, got {self.zone!r}") from None
        if self.cron is None:
            return
        if not isinstance(self.cron, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"cron must be a string, not {type(self.cron).__name__}")
        expression = _NICKNAMES.get(self.cron.strip().lower(), self.cron)
        if len(expression.split()) != 5:
            raise ValueError(f"cron must have five fields or be a name like @daily, got {self.cron!r}")
        try:
            CronSim(expression, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as error:
            raise ValueError(f"cron is not a valid cron expression ({error}): {self.cron!r}") from None

    # -- slots -----------------------------------------------------------------------------

    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot strictly after ``after``, as UTC; ``None`` when there is none (past ``end``)."""
        return next(self.slots_after(after), None)

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        """The slots strictly after ``after``, as UTC, in order, up to ``end``.

        One walk costs less per slot than :meth:`next_slot` called again each time (cronsim
        parses the expression once per walk).
        """
        after = require_utc("after", after)
        if self.start is not None and after < self.start:
            after = self.start - timedelta(microseconds=1)
        slots = self._intervals_after(after) if self.every is not None else self._cron_from(after)
        for slot in slots:
            if slot <= after:
                # cronsim reads a start time in the second pass of an hour repeated at fall-back as
                # the first pass, so its first slot may lie before ``after`` (and before ``start``).
                continue
            if self.end is not None and slot > self.end:
                return
            yield slot

    def latest_slot(self, at: datetime) -> datetime | None:
        """The last slot at or before ``at``, as UTC; ``None`` when there is none (before ``start``)."""
        found = self.latest_slots(at, 1)
        return found[-1] if found else None

    def latest_slots(self, at: datetime, count: int) -> list[datetime]:
        """Up to ``count`` of the last slots at or before ``at``, oldest first."""
        at = require_utc("at", at)
        if self.end is not None and at > self.end:
            at = self.end
        slots = self._interval_latest(at, count) if self.every is not None else self._cron_latest(at, count)
        return [slot for slot in slots if self.start is None or slot >= self.start]

    def due_slots(self, after: datetime | None, now: datetime) -> list[datetime]:
        """The slots to enqueue at ``now`` when every slot up to ``after`` was handled already.

        Slots in ``(after, now]``, less those older than ``misfire_grace``: the latest one
        (``"coalesce"``), or the latest ``catch_up_limit`` (``"each"``). Oldest first.
        """
        now = require_utc("now", now)
        oldest = now - self.misfire_grace
        if after is not None:
            oldest = max(oldest, require_utc("after", after) + timedelta(microseconds=1))
        count = 1 if self.misfire == "coalesce" else self.catch_up_limit
        return [slot for slot in self.latest_slots(now, count) if slot >= oldest]

    def job_for(self, slot: datetime) -> Job[T]:
        """The job that stands for ``slot``: the same in every process (id, due time, limits)."""
        slot = require_utc("slot", slot)
        return Job(
            payload=self.payload,
            id=slot_job_id(self.id, slot),
            process_after=slot + self._jitter_at(slot),
            max_attempts=self.max_attempts,
            timeout=self.timeout,
        )

    def _jitter_at(self, slot: datetime) -> timedelta:
        """An offset in ``[0, jitter)`` that every process derives alike from the slot's id."""
        if not self.jitter:
            return timedelta(0)
        digest = hashlib.sha256(slot_job_id(self.id, slot).encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return timedelta(microseconds=int(self.jitter / timedelta(microseconds=1) * fraction))

    # -- cron ------------------------------------------------------------------------------

    def _cron_from(self, after: datetime, *, reverse: bool = False) -> Iterable[datetime]:
        assert self.cron is not None
        expression = _NICKNAMES.get(self.cron.strip().lower(), self.cron)
        local = after.astimezone(ZoneInfo(self.zone))
        return (slot.astimezone(timezone.utc) for slot in CronSim(expression, local, reverse=reverse))

    def _cron_latest(self, at: datetime, count: int) -> list[datetime]:
        """The last ``count`` cron slots at or before ``at``.

        cronsim's reverse walk does not mirror its forward one around DST (a time in the spring
        gap runs after it going forward, but is skipped going back), so the reverse walk only
        finds where to start, and the slots are the forward walk's from there.
        """
        earlier = list(_take(self._cron_from(at + timedelta(microseconds=1), reverse=True), count))
        if not earlier:  # no slot in the 50 years cronsim looks back
            return []
        start = earlier[-1] - timedelta(minutes=1)
        slots: list[datetime] = []
        for slot in self._cron_from(start):
            if slot > at:
                break
            slots.append(slot)
        return slots[-count:]

    # -- intervals -------------------------------------------------------------------------

    def _intervals_after(self, after: datetime) -> Iterator[datetime]:
        anchor, step = self._interval()
        index = _micros(after - anchor) // _micros(step) + 1
        while True:
            yield anchor + step * index
            index += 1

    def _interval_latest(self, at: datetime, count: int) -> list[datetime]:
        anchor, step = self._interval()
        last = _micros(at - anchor) // _micros(step)
        first = max(last - count + 1, 0) if self.start is not None else last - count + 1
        return [anchor + step * index for index in range(first, last + 1)]

    def _interval(self) -> tuple[datetime, timedelta]:
        assert self.every is not None
        return (self.start or _INTERVAL_ANCHOR), self.every


class ScheduledSlot(NamedTuple):
    """Which schedule and slot a job stands for (:func:`slot_of`)."""

    schedule_id: str
    slot: datetime


def slot_job_id(schedule_id: str, slot: datetime) -> str:
    """The id of the job for ``schedule_id``'s ``slot``: ``schedule:<id>@<slot in UTC, ISO 8601>``.

    It depends on nothing else (not on the schedule's options), so changing a schedule never
    makes a second job for a slot.
    """
    stamp = require_utc("slot", slot).isoformat().replace("+00:00", "Z")
    return f"{_JOB_ID_PREFIX}{schedule_id}@{stamp}"


def slot_of(job: Job[Any]) -> ScheduledSlot | None:
    """The schedule and slot ``job`` stands for, or ``None`` if a schedule did not make it.

    A handler reads it to know which run this is::

        slot = slot_of(job)
        if slot is not None:
            report_for_week_of(slot.slot)
    """
    if not job.id.startswith(_JOB_ID_PREFIX):
        return None
    schedule_id, at, stamp = job.id[len(_JOB_ID_PREFIX) :].rpartition("@")
    if not at or not schedule_id:
        return None
    try:
        slot = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if slot.tzinfo is None:
        return None
    return ScheduledSlot(schedule_id, slot.astimezone(timezone.utc))


def check_schedule(schedule: Schedule[T]) -> Schedule[T]:
    """``schedule``, if it is a :class:`Schedule`; a ``TypeError`` naming ``schedule`` otherwise."""
    if not isinstance(schedule, Schedule):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"schedule must be an anysched.Schedule, not {type(schedule).__name__}")
    return schedule


def check_schedules(schedules: Iterable[Schedule[T]]) -> tuple[Schedule[T], ...]:
    """The schedules as a tuple; a ``TypeError``/``ValueError`` naming ``schedules`` if one is wrong."""
    if not isinstance(schedules, Iterable):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"schedules must be an iterable of anysched.Schedule, not {type(schedules).__name__}")
    found = tuple(schedules)
    seen: set[str] = set()
    for schedule in found:
        if not isinstance(schedule, Schedule):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"schedules must hold anysched.Schedule objects, not {type(schedule).__name__}")
        if schedule.id in seen:
            raise ValueError(f"schedules holds two schedules with id {schedule.id!r}")
        seen.add(schedule.id)
    return found


def _check_positive(name: str, value: timedelta, *, allow_zero: bool = False) -> None:
    if not isinstance(value, timedelta):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{name} must be a timedelta, not {type(value).__name__}")
    if value < timedelta(0) or (not allow_zero and value == timedelta(0)):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value!r}")


def _take(slots: Iterable[datetime], count: int) -> Iterable[datetime]:
    iterator = iter(slots)
    for _ in range(count):
        slot = next(iterator, None)
        if slot is None:
            return
        yield slot


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
