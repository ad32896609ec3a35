"""The scheduler's wake-up listener, against a store whose wake-ups the test controls.

A store that sends wake-ups (``SendsWakeUps``) makes an idle fetcher claim at once; a listener
that fails is retried with the store backoff and never stops the scheduler or delays its stop.
Under trio's mock clock an hour of ``fetch_interval`` costs nothing, so a job that starts
within a second of (virtual) time was started by a wake-up, not by the fetcher's own timer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import anyio
import anyio.lowlevel
import pytest

from anysched import Backoff, Job, MemoryStore, SendsWakeUps, open_scheduler
from anysched._wake_ups import beside
from support import Recorder, WrappedStore, until

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
HOUR = 3600.0
BACKOFF = Backoff(initial=1.0, maximum=4.0, jitter=0)


class WakingStore(WrappedStore[int]):
    """A MemoryStore that sends wake-ups when the test says, and whose listener can fail or hang.

    - ``fail_entering``: how many of the next entries raise ``ConnectionError``;
    - ``fail``: set it to make the listener that is up fail (it raises ``OSError`` out of the block);
    - ``hang_entering`` / ``hang_exiting``: the block's entry or exit waits until cancelled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wakers: list[Callable[[], None]] = []
        self.entered: list[float] = []
        self.exited = 0
        self.fail_entering = 0
        self.fail = anyio.Event()
        self.hang_entering = False
        self.hang_exiting = False

    @asynccontextmanager
    async def wake_ups(self, wake: Callable[[], None]) -> AsyncGenerator[None]:
        self.entered.append(anyio.current_time())
        if self.hang_entering:
            await anyio.sleep_forever()
        if self.fail_entering:
            self.fail_entering -= 1
            raise ConnectionError("no listener today")
        self.fail = anyio.Event()
        self.wakers.append(wake)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._fail_when_told)
                yield
                tg.cancel_scope.cancel()
        finally:
            self.wakers.remove(wake)
            self.exited += 1
            if self.hang_exiting:
                await anyio.sleep_forever()

    async def _fail_when_told(self) -> None:
        await self.fail.wait()
        raise OSError("the listener broke")

    def wake_all(self) -> None:
        for wake in self.wakers:
            wake()

    async def add_elsewhere(self, job_id: str, clock: Clock) -> None:
        """What another process does: a job lands in the store, not through our scheduler."""
        await self.inner.add_job(Job.create(0, id=job_id, process_after=clock()))


def test_the_fake_is_a_store_that_sends_wake_ups() -> None:
    assert isinstance(WakingStore(), SendsWakeUps)
    assert not isinstance(MemoryStore[int](), SendsWakeUps)


async def test_a_wake_up_makes_the_idle_fetcher_claim_at_once(clock: Clock) -> None:
    store = WakingStore()
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=HOUR, clock=clock) as scheduler:
            await until(lambda: bool(store.wakers))
            assert scheduler.statistics().listening
            await until(lambda: store.calls["fetch_pending_jobs"] == 1)  # the first claim found nothing
            await store.add_elsewhere("elsewhere", clock)
            added = anyio.current_time()
            store.wake_all()
            await handler.wait_finished(1)
            assert anyio.current_time() - added < 1.0  # not the hour-long fetch_interval
            assert store.calls["fetch_pending_jobs"] == 2
    assert handler.runs == {"elsewhere": 1}
    assert store.exited == 1  # the listener's block ended with the scheduler


async def test_without_a_wake_up_the_job_waits_for_the_fetch_interval(clock: Clock) -> None:
    """The converse of the test above: the same scheduler, no wake-up, no claim within the second."""
    store = WakingStore()
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=HOUR, clock=clock):
            await until(lambda: store.calls["fetch_pending_jobs"] == 1 and bool(store.wakers))
            await store.add_elsewhere("elsewhere", clock)
            with anyio.move_on_after(1.0):
                await handler.wait_finished(1)
            assert handler.finished == 0
            assert store.calls["fetch_pending_jobs"] == 1


async def test_wake_ups_false_never_listens(clock: Clock) -> None:
    store = WakingStore()
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=0.5, clock=clock, wake_ups=False) as scheduler:
            await store.add_elsewhere("polled", clock)
            await handler.wait_finished(1)  # by polling
            assert not scheduler.statistics().listening
    assert store.entered == []


def test_wake_ups_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="wake_ups"):
        open_scheduler(MemoryStore[int](), Recorder[int](), wake_ups=1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_a_listener_that_cannot_start_is_retried_with_backoff_and_logged_once(
    clock: Clock, caplog: pytest.LogCaptureFixture, anyio_backend_name: str
) -> None:
    scale = 1.0 if anyio_backend_name == "trio" else 0.05  # real time on asyncio: a shorter backoff
    backoff = Backoff(initial=BACKOFF.initial * scale, maximum=BACKOFF.maximum * scale, jitter=0)
    store = WakingStore()
    store.fail_entering = 4
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=0.1, clock=clock, store_backoff=backoff) as scheduler:
            start = anyio.current_time()
            await store.add_elsewhere("polled", clock)
            await handler.wait_finished(1)  # the fetcher polls while the listener is down
            await until(lambda: bool(store.wakers))
            assert scheduler.statistics().listening
    gaps = [(later - earlier) / scale for earlier, later in zip(store.entered, store.entered[1:], strict=False)]
    # the store backoff: doubling from initial, capped at maximum (exact on the mock clock)
    wanted = [1.0, 2.0, 4.0, 4.0]
    assert [round(gap, 3) for gap in gaps] == wanted or (
        anyio_backend_name == "asyncio" and all(gap >= want for gap, want in zip(gaps, wanted, strict=True))
    )
    assert store.entered[0] - start < 0.1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "wake-ups" in r.getMessage()]
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0].getMessage()
    assert "no listener today" not in caplog.text  # the error's type, never its message


async def test_a_listener_that_fails_later_is_listened_to_again(clock: Clock) -> None:
    store = WakingStore()
    handler = Recorder[int]()
    backoff = Backoff(initial=0.01, maximum=0.02, jitter=0)
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=HOUR, clock=clock, store_backoff=backoff) as scheduler:
            await until(lambda: bool(store.wakers))
            store.fail.set()
            await until(lambda: store.exited == 1 and len(store.entered) == 2 and bool(store.wakers))
            assert scheduler.statistics().listening
            await until(lambda: store.calls["fetch_pending_jobs"] >= 1)
            await store.add_elsewhere("after-the-failure", clock)
            store.wake_all()  # the new listener wakes the fetcher as the first did
            await handler.wait_finished(1)
    assert handler.runs == {"after-the-failure": 1}


async def test_a_listener_stuck_entering_delays_neither_jobs_nor_shutdown(clock: Clock) -> None:
    store = WakingStore()
    store.hang_entering = True
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=0.5, clock=clock) as scheduler:
            await until(lambda: bool(store.entered))
            await scheduler.add_job(Job.create(1, id="added", process_after=clock()))
            await handler.wait_finished(1)
            assert not scheduler.statistics().listening
            stopping = anyio.current_time()
        assert anyio.current_time() - stopping < 0.5  # cancelled at once, not awaited


async def test_a_listener_stuck_exiting_does_not_delay_shutdown(clock: Clock) -> None:
    store = WakingStore()
    store.hang_exiting = True
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, clock=clock, store_backoff=Backoff(0.01, 0.02, 0)):
            await until(lambda: bool(store.wakers))
            store.fail.set()  # its block fails, and its exit then waits until cancelled
            await until(lambda: store.exited == 1)
            stopping = anyio.current_time()
        assert anyio.current_time() - stopping < 0.5
    assert len(store.entered) == 1  # stuck in the first exit: never entered again, never stopped the scheduler


async def test_a_listener_failing_does_not_stop_the_scheduler(clock: Clock) -> None:
    store = WakingStore()
    store.fail_entering = 1_000_000
    handler = Recorder[int]()
    backoff = Backoff(initial=0.001, maximum=0.002, jitter=0)
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, fetch_interval=0.05, clock=clock, store_backoff=backoff) as scheduler:
            await until(lambda: len(store.entered) >= 20)
            for n in range(3):
                await scheduler.add_job(Job.create(n, id=f"job-{n}", process_after=clock()))
            await handler.wait_finished(3)
    assert set(handler.runs) == {"job-0", "job-1", "job-2"}


async def test_a_stores_listener_that_fails_raises_out_of_the_block_as_itself() -> None:
    """``beside``, the helper the stores' ``wake_ups`` use: no exception group for the log to name."""

    async def listen() -> None:
        await anyio.lowlevel.checkpoint()
        raise ConnectionResetError("gone")

    with anyio.fail_after(10), pytest.raises(ConnectionResetError, match="gone"):
        async with beside(listen):
            await anyio.sleep_forever()


async def test_a_stores_listener_is_cancelled_when_the_block_ends() -> None:
    ended = anyio.Event()

    async def listen() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ended.set()

    with anyio.fail_after(10):
        async with beside(listen):
            await anyio.lowlevel.checkpoint()
    assert ended.is_set()
