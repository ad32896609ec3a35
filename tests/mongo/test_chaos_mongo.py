"""The chaos run (``bench/chaos.py``) on a MongoStore: a few hundred jobs (what a test server takes in
seconds) through three schedulers on a flaky proxy, cancelled, shut down and killed at random.

Real I/O: no mock clock, timings sized for a slow server (see ``chaos.mongo_config``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from anysched.stores.mongo import MongoStore
from support import load_bench_script

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


if TYPE_CHECKING:
    from bench import chaos
else:
    chaos = load_bench_script("chaos")

JOBS = 250


@pytest.fixture(params=["pymongo-async", "pymongo-sync-trio"])
def flavour(request: pytest.FixtureRequest) -> str:
    """One async driver on asyncio, the sync driver on trio: the chaos is the point here, not the drivers."""
    return str(request.param)


async def test_chaos_on_mongo_loses_no_job_and_explains_every_extra_run(
    collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="anysched")
    caplog.set_level(logging.CRITICAL, logger="stamina")
    config = chaos.mongo_config(jobs=JOBS)
    with anyio.fail_after(120):
        result = await chaos.run_chaos(config, MongoStore(collection, chaos.Work), store_name="mongo")
    print(result.table())

    assert result.lost == 0, result.table()
    assert result.unexplained == 0, result.table()
    assert result.overlaps == 0, result.table()
    assert result.anomalies == [], result.table()
    assert result.completed + result.failed == JOBS
    happened = {
        "store failure": result.events["store failures before"] + result.events["store failures after (lost reply)"],
        "handler error": result.run_ends["error"],
        "instance cancelled from outside": result.actions["cancel"],
        "graceful shutdown": result.actions["shutdown"],
        "process death": result.actions["kill"] + result.actions["death by poison job"],
        "re-run after a retry": result.extra_runs["retry"],
        "re-run after a lease expiry": result.extra_runs["lease expiry"],
    }
    assert [name for name, count in happened.items() if count == 0] == [], result.table()
