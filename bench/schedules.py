"""The schedule ticker's CPU time per simulated day, with many schedules.

A :class:`~anysched._ticker.Ticker` with ``--schedules`` schedules (10,000 by default) runs on
trio's ``MockClock(autojump_threshold=0)``: its sleeps until the next slot cost no real time, so
a whole simulated day passes in the CPU time the ticker itself needs. Its ``add`` is a no-op
that counts: the figure is the ticker's own cost (heap, slot arithmetic, cron evaluation, job
construction), not a store's.

The schedules are a mix, seeded:

- 40% hourly at a random minute (``M * * * *``) in one of six zones;
- 30% daily at a random time (``M H * * *``), one of six zones;
- 10% weekly (``M H * * D``), UTC;
- 20% fixed intervals of 5 to 60 minutes.

Printed: the start-up cost (each schedule's first look, with its misfire check), the CPU time of
the simulated day, the slots fired, and the CPU time per fire. It grows as O(log n) per fire.

Usage::

    python bench/schedules.py                      # 10,000 schedules, one day
    python bench/schedules.py --schedules 1000 --hours 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
import trio.testing

# The simulation is shared with the test suite (tests/schedules/test_bench.py runs a small one);
# a script sees only its own folder on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "schedules"))

from simulated_day import make_schedules, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    schedules = make_schedules(options.schedules, options.seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    result = anyio.run(simulate, schedules, options.hours, backend="trio", backend_options={"clock": clock})
    print(
        f"{options.schedules} schedules, {options.hours:g} simulated hours on trio's MockClock:\n"
        f"  start-up (first look at each schedule): {result['startup_s']:.2f} s CPU, "
        f"{result['fired_at_start']:.0f} slot(s) coalesced\n"
        f"  simulated run: {result['cpu_s']:.2f} s CPU for {result['fired']:.0f} slots fired "
        f"({result['us_per_fire']:.0f} us per fire, {result['wakes']:.0f} wakes)\n"
        f"  => {result['cpu_s_per_day']:.1f} s of ticker CPU per simulated day; every slot fired, none twice"
    )


if __name__ == "__main__":
    main()
