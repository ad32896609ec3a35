"""The chaos run (``bench/chaos.py``) as a test: 10,000 jobs on a flaky memory store, three schedulers
cancelled, shut down and killed at random, handlers that fail, retry, time out and run long.

No job may be lost, and every handler run beyond a job's first must be explained by a retry, an
interruption or a real lease expiry. The test also checks that each kind of chaos actually happened,
so it cannot pass by doing nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from support import load_bench_script

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.usefixtures("quiet_logs")]


if TYPE_CHECKING:
    from bench import chaos
else:
    chaos = load_bench_script("chaos")

JOBS = 10_000


async def test_no_job_is_lost_and_every_extra_run_is_explained() -> None:
    config = chaos.ChaosConfig(jobs=JOBS)
    with anyio.fail_after(60):
        result = await chaos.run_chaos(config)
    print(result.table())  # shown with -s, or when an assertion fails

    assert result.violations() == [], result.table()
    assert sum(result.runs_per_job.values()) == JOBS
    assert sum(result.extra_runs.values()) == result.runs - (JOBS - result.runs_per_job[0])

    # Each kind of chaos happened, and so did each kind of explained re-run.
    happened = result.common_events() | {
        "lost reply of a fetch that claimed jobs": result.events["lost fetch replies"],
        "RetryJob": result.run_ends["retry"],
        "FailJob": result.failed_by_reason["FailJob"],
        "job timeout": result.run_ends["timeout"],
        "long run renewed and run once": result.long_runs_renewed,
        "process death": result.actions["kill"],
        "death by poison job": result.actions["death by poison job"],
        "run interrupted by a cancellation": result.run_ends["interrupted"],
        "run cut short by its process's death": result.run_ends["died"],
        "re-run after an interruption": result.extra_runs["interrupted"],
        "poison job failed out of attempts": result.failed_by_reason["poison job"],
        "job finished by the drain": result.finished_in_drain,
    }
    assert [name for name, count in happened.items() if count == 0] == [], result.table()
