"""Every async test runs on asyncio and on trio; trio runs on a mock clock that jumps ahead
whenever every task is blocked, so a test's sleeps and timeouts cost no real time there."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.param == "trio":
        import trio.testing

        return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}
    return "asyncio", {}


@pytest.fixture
def clock() -> Callable[[], datetime]:
    """Wall-clock time that follows the event loop's clock (and so trio's mock clock)."""
    return lambda: EPOCH + timedelta(seconds=anyio.current_time())


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Silence anysched's and stamina's logs: for the chaos runs, whose tens of thousands of job
    and retry lines would cost more than the run itself."""
    caplog.set_level(logging.CRITICAL, logger="anysched")
    caplog.set_level(logging.CRITICAL, logger="stamina")
