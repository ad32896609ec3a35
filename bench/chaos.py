"""The chaos run: many jobs through several schedulers on a flaky store, with cancellations and process deaths.

The command line of the chaos oracle, the package ``tests/chaos_oracle`` (its docstring tells what a run
does and checks; the tests run it too). The same seed makes the same draws (behaviours, faults, stops);
the interleaving of tasks, and so the exact figures, still vary from run to run (trio shuffles its run
queue; asyncio's timing is the machine's).

Usage::

    python bench/chaos.py                               # 10,000 jobs, asyncio and trio (real clocks)
    python bench/chaos.py --backend trio --mock-clock   # trio on a mock clock: every sleep is free
    python bench/chaos.py --jobs 50000 --instances 5 --seed 7 --fail-rate 0.3
    python bench/chaos.py --store mongo --uri mongodb://localhost:27017/?directConnection=true --jobs 300
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

# The oracle is a test package (tests/ is on sys.path under pytest, through its rootdir conftest); a script
# run as ``python bench/chaos.py`` has bench/ there instead, so put tests/ first, before importing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos_oracle import ChaosConfig, ChaosResult, Work, mongo_config, run_chaos

FAULT_KNOBS = (
    "p_foreign_cancel",
    "p_group",
    "p_group_with_cancel",
    "p_error_in_cancel",
    "p_swallow_cancel",
    "p_hang",
    "p_renew_hang",
    "p_claim_cancelled",
    "p_late_landing",
    "p_add_lost_reply",
    "added_during_run",
    "clock_step",
    "clock_step_interval",
)
"""The knobs of the faults beyond store failures and process deaths, each a --option (see ChaosConfig)."""


async def _main_memory(config: ChaosConfig) -> ChaosResult:
    return await run_chaos(config)


async def _main_mongo(config: ChaosConfig, uri: str, backend: str) -> ChaosResult:
    import uuid

    import pymongo

    from anysched.stores.mongo import MongoStore

    name = f"chaos_{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 10_000}
    if backend == "asyncio":
        client: Any = pymongo.AsyncMongoClient(uri, **options)
        try:
            return await run_chaos(config, MongoStore(client["anysched_chaos"][name], Work), store_name="mongo")
        finally:
            await client["anysched_chaos"].drop_collection(name)
            await client.close()
    sync_client: Any = pymongo.MongoClient(uri, **options)
    try:
        return await run_chaos(config, MongoStore(sync_client["anysched_chaos"][name], Work), store_name="mongo")
    finally:
        await anyio.to_thread.run_sync(lambda: sync_client["anysched_chaos"].drop_collection(name))
        sync_client.close()


def _parser(defaults: ChaosConfig) -> argparse.ArgumentParser:
    """Every option, with the defaults of the store chosen (``mongo_config`` for ``--store mongo``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs (default: %(default)s)")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both", help="(default: both)")
    parser.add_argument("--mock-clock", action="store_true", help="run trio on trio.testing.MockClock: sleeps are free")
    parser.add_argument(
        "--store",
        choices=("memory", "mongo"),
        default="memory",
        help="(default: memory; mongo has its own defaults, see mongo_config)",
    )
    parser.add_argument(
        "--uri", help="MongoDB URI for --store mongo (asyncio: pymongo async client; trio: sync client)"
    )
    parser.add_argument("--instances", type=int, default=defaults.instances, help="schedulers (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="per scheduler (default: %(default)s)")
    parser.add_argument(
        "--buffer-size", type=int, default=defaults.buffer_size, help="per scheduler (default: workers)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    parser.add_argument(
        "--fail-rate", type=float, default=defaults.fail_rate, help="store calls that fail (default: %(default)s)"
    )
    parser.add_argument(
        "--store-delay",
        type=float,
        default=defaults.store_delay,
        help="max delay of a store call (default: %(default)s s)",
    )
    parser.add_argument(
        "--visibility-timeout", type=float, default=defaults.visibility_timeout, help="(default: %(default)s s)"
    )
    parser.add_argument("--job-timeout", type=float, default=defaults.job_timeout, help="(default: %(default)s s)")
    parser.add_argument("--max-attempts", type=int, default=defaults.max_attempts, help="(default: %(default)s)")
    parser.add_argument("--poison-jobs", type=int, default=defaults.poison_jobs, help="(default: %(default)s)")
    parser.add_argument(
        "--chaos-events",
        type=int,
        default=defaults.chaos_events,
        help="cancellations/shutdowns/deaths (default: %(default)s)",
    )
    parser.add_argument("--p-error", type=float, default=defaults.p_error, help="(default: %(default)s)")
    parser.add_argument("--p-retry", type=float, default=defaults.p_retry, help="(default: %(default)s)")
    parser.add_argument("--p-fail", type=float, default=defaults.p_fail, help="(default: %(default)s)")
    parser.add_argument("--p-timeout", type=float, default=defaults.p_timeout, help="(default: %(default)s)")
    parser.add_argument("--p-long", type=float, default=defaults.p_long, help="(default: %(default)s)")
    for knob in FAULT_KNOBS:
        parser.add_argument(
            f"--{knob.replace('_', '-')}", type=float, default=getattr(defaults, knob), help="(default: %(default)s)"
        )
    parser.add_argument("--log-level", default=None, help="show anysched's log at this level (default: silent)")
    return parser


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace, defaults: ChaosConfig) -> ChaosConfig:
    """The run's knobs from the options (an invalid combination ends the program with the parser's message)."""
    try:
        return replace(
            defaults,
            jobs=args.jobs,
            instances=args.instances,
            workers=args.workers,
            buffer_size=args.buffer_size,
            seed=args.seed,
            fail_rate=args.fail_rate,
            store_delay=args.store_delay,
            visibility_timeout=args.visibility_timeout,
            job_timeout=args.job_timeout,
            max_attempts=args.max_attempts,
            poison_jobs=args.poison_jobs,
            chaos_events=args.chaos_events,
            p_error=args.p_error,
            p_retry=args.p_retry,
            p_fail=args.p_fail,
            p_timeout=args.p_timeout,
            p_long=args.p_long,
            **{knob: getattr(args, knob) for knob in FAULT_KNOBS},
        )
    except ValueError as error:
        parser.error(str(error))


def _set_up_logs(level: str | None) -> None:
    """anysched's log at ``level``, or silent (a run logs tens of thousands of job and retry lines)."""
    if level:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    else:
        for name in ("anysched", "stamina"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _run_on(backend: str, config: ChaosConfig, args: argparse.Namespace) -> bool:
    """One run on one backend, its table printed; whether it kept every rule."""
    options: dict[str, Any] = {}
    if backend == "trio" and args.mock_clock:
        import trio.testing

        options["clock"] = trio.testing.MockClock(autojump_threshold=0)
    if args.store == "memory":
        result = anyio.run(_main_memory, config, backend=backend, backend_options=options)
    else:
        result = anyio.run(_main_mongo, config, args.uri, backend, backend=backend, backend_options=options)
    clock = " (mock clock)" if options else ""
    print(f"chaos run: seed {config.seed}, {config.instances} instances x {config.workers} workers{clock}")
    print(result.table(), flush=True)
    print()
    return result.ok


def main(argv: list[str] | None = None) -> int:
    store_choice = "mongo" if "mongo" in (argv if argv is not None else sys.argv[1:]) else "memory"
    defaults = mongo_config() if store_choice == "mongo" else ChaosConfig()
    parser = _parser(defaults)
    args = parser.parse_args(argv)
    if args.store == "mongo" and not args.uri:
        parser.error("--store mongo needs --uri")
    config = _config(parser, args, defaults)
    _set_up_logs(args.log_level)
    backends = ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    failures = sum(not _run_on(backend, config, args) for backend in backends)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
