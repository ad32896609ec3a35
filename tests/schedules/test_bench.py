"""The ticker over a simulated day with a mix of schedules (bench/schedules.py, smaller): every slot
fires, none twice, across Europe's spring-forward change."""

from __future__ import annotations

import anyio
import trio.testing
from simulated_day import make_schedules, simulate


def test_a_simulated_day_fires_every_slot_of_a_mix_of_schedules_once() -> None:
    schedules = make_schedules(200, seed=7)
    clock = trio.testing.MockClock(autojump_threshold=0)
    result = anyio.run(simulate, schedules, 24.0, backend="trio", backend_options={"clock": clock})
    assert result["fired"] >= 200 * 0.4 * 24  # the hourly ones alone; simulate() checks each slot
