"""APScheduler 4's SQLAlchemy data store on SQLite (aiosqlite): end-to-end no-op jobs/s.

Run by ``bench/sqlite.py --apscheduler-python PYTHON`` in a separate virtualenv that has
``apscheduler>=4.0.0a5 sqlalchemy aiosqlite`` (and not anysched). Prints one JSON line.
Usage: ``python bench/apscheduler_sqlite.py JOBS DB``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any

import anyio

# Imported by name: they are installed only in the peer's virtualenv, so a type checker run with
# anysched's sees them as Any rather than as missing modules.
AsyncScheduler: Any = importlib.import_module("apscheduler").AsyncScheduler
SQLAlchemyDataStore: Any = importlib.import_module("apscheduler.datastores.sqlalchemy").SQLAlchemyDataStore
create_async_engine: Any = importlib.import_module("sqlalchemy.ext.asyncio").create_async_engine

state: dict[str, Any] = {"left": 0, "done": None}


async def noop() -> None:  # async, so it runs on the event loop, not in a thread
    state["left"] -= 1
    if state["left"] == 0:
        state["done"].set()


async def main(jobs: int, db: str) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    state["left"], state["done"] = jobs, anyio.Event()
    async with AsyncScheduler(SQLAlchemyDataStore(engine)) as scheduler:
        began = time.perf_counter()
        for _ in range(jobs):
            await scheduler.add_job(noop)
        added = time.perf_counter()
        await scheduler.start_in_background()
        with anyio.fail_after(600):
            await state["done"].wait()
        finished = time.perf_counter()
        await scheduler.stop()
    await engine.dispose()
    print(json.dumps({"jobs": jobs, "add_per_s": jobs / (added - began), "run_per_s": jobs / (finished - added)}))


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]), sys.argv[2])
