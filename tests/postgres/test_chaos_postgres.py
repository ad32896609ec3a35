"""The chaos run (``chaos_oracle``) on a PostgresStore: the real server, a schema of its own,
three schedulers on a flaky proxy, cancelled, shut down and killed at random.

Real I/O: no mock clock, so timings are those of ``chaos.mongo_config`` but for the
size.
"""

from __future__ import annotations

import anyio
import pytest

import chaos_oracle as chaos
from anysched.stores.postgres import PostgresStore

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.usefixtures("quiet_logs")]

JOBS = 1_000

RUN_BOUND = 120
"""Bound on the run (``anyio.fail_after``, real seconds: no mock clock), the SQLite run's. Measured on
2 cores shared with other work (load about 6, no coverage): 35-37 s per backend."""
TEST_BOUND = 180
"""Bound on the test (pytest-timeout, wall seconds)."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.timeout(TEST_BOUND)
async def test_chaos_on_postgres_loses_no_job_and_explains_every_extra_run(postgres_url: str, schema: str) -> None:
    config = chaos.database_config(JOBS)
    with anyio.fail_after(RUN_BOUND):
        async with PostgresStore(postgres_url, chaos.Work, schema=schema) as store:
            result = await chaos.run_chaos(config, store, store_name="postgres")
    print(result.table())

    assert result.violations() == [], result.table()
    assert result.missing_on_a_database() == [], result.table()
    assert result.adds["adds that raised"] == result.adds["added twice or more"] == 0, result.table()
