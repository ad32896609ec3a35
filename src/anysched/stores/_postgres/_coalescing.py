"""Concurrent ``update_job`` calls of one store, written together: one statement and one commit
for all the updates that queued while the previous batch was on its way to the server.

Each job's update is still fenced by its own lease (the statement's ``WHERE``), and each caller
learns its own outcome. Group commit is what lets a queue on PostgreSQL keep up with many
workers: one commit per job outcome would spend most of a job's time waiting for the WAL flush.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from ..._exceptions import TransientStoreError

Row = dict[str, Any]


@dataclass(eq=False)
class _Waiter:
    row: Row
    done: anyio.Event = field(default_factory=anyio.Event)
    applied: bool = False
    error: Exception | None = None
    leads: bool = False


class UpdateCoalescer:
    """Runs ``write_many`` for the rows queued by concurrent callers; one caller at a time leads.

    :param write_many: writes the rows in one statement; returns the ids it applied
    :param write_one: writes one row on its own (the fallback when a batch fails for a reason
        one row could cause); returns whether it applied
    """

    def __init__(
        self,
        write_many: Callable[[list[Row]], Awaitable[set[str]]],
        write_one: Callable[[Row], Awaitable[bool]],
    ) -> None:
        self._write_many = write_many
        self._write_one = write_one
        self._queue: list[_Waiter] = []
        self._leading = False

    async def update(self, row: Row) -> bool:
        """Write ``row`` (with the others queued now); whether its lease held and it was applied."""
        waiter = _Waiter(row)
        self._queue.append(waiter)
        if self._leading:
            try:
                await waiter.done.wait()
            except BaseException:
                if waiter in self._queue:  # not sent yet: it never will be
                    self._queue.remove(waiter)
                if waiter.leads:  # chosen to lead as it was cancelled: pass the turn on
                    self._pass_the_lead()
                raise
            if not waiter.leads:
                return _outcome(waiter)
        self._leading = True
        try:
            # Let callers that are ready now join this batch; never cancelled here, so a leader
            # does not leave the queue waiting for nobody.
            await anyio.lowlevel.cancel_shielded_checkpoint()
            await self._write(self._take_batch())
        finally:
            self._pass_the_lead()
        return _outcome(waiter)

    def _take_batch(self) -> list[_Waiter]:
        """The queued updates, but at most one per job: a second one waits for the next batch."""
        batch: list[_Waiter] = []
        later: list[_Waiter] = []
        ids: set[str] = set()
        for waiter in self._queue:
            (later if waiter.row["id"] in ids else batch).append(waiter)
            ids.add(waiter.row["id"])
        self._queue = later
        return batch

    def _pass_the_lead(self) -> None:
        if self._queue:
            successor = self._queue[0]
            successor.leads = True
            successor.done.set()
            self._leading = True
        else:
            self._leading = False

    async def _write(self, batch: list[_Waiter]) -> None:
        try:
            if len(batch) == 1:
                batch[0].applied = await self._write_one(batch[0].row)
            else:
                applied = await self._write_many([waiter.row for waiter in batch])
                for waiter in batch:
                    waiter.applied = waiter.row["id"] in applied
        except TransientStoreError as error:
            for waiter in batch:
                waiter.error = TransientStoreError(str(error))
        except Exception:
            if len(batch) == 1:
                raise
            for waiter in batch:  # one row may be at fault: each on its own, each with its own error
                try:
                    waiter.applied = await self._write_one(waiter.row)
                except Exception as error:
                    waiter.error = error
        except BaseException:  # the leader was cancelled: the others do not know whether theirs landed
            for waiter in batch:
                waiter.error = TransientStoreError("update_job: the batch it was sent in was cancelled")
            raise
        finally:
            for waiter in batch:
                if not waiter.leads:
                    waiter.done.set()


def _outcome(waiter: _Waiter) -> bool:
    if waiter.error is not None:
        raise waiter.error
    return waiter.applied
