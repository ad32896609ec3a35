"""The claim probe: bounded, names the server, and gates exclusivity checks by what it saw."""

from __future__ import annotations

import pytest
from mongo_support import PROBE_BUDGET, URI_ENV, ClaimProbe


def test_the_probe_is_bounded_and_names_the_server(claim_probe: ClaimProbe) -> None:
    print(claim_probe.describe())
    assert claim_probe.server.startswith(("SecantusDB ", "MongoDB "))
    assert claim_probe.rounds >= 2  # both claim shapes were raced
    assert claim_probe.claims >= claim_probe.rounds * 40
    assert claim_probe.seconds < PROBE_BUDGET + 30  # the last round may finish after the budget, bounded


def test_an_atomic_server_runs_the_exclusivity_checks() -> None:
    ClaimProbe("MongoDB 8.0.4", double_claims=0, claims=120, rounds=3, seconds=1.0).require_atomic("x")


def test_secantusdb_double_claims_skip_the_check_loudly() -> None:
    probe = ClaimProbe("SecantusDB 0.7.0b3", double_claims=55, claims=300, rounds=1, seconds=3.0)
    with pytest.raises(pytest.skip.Exception) as skipped:
        probe.require_atomic("two schedulers never run the same job")
    reason = str(skipped.value)
    assert reason.startswith("NOT VERIFIED: two schedulers never run the same job")
    assert "SecantusDB 0.7.0b3: NOT atomic per document: 55 document(s) claimed twice" in reason
    assert URI_ENV in reason


def test_any_other_server_that_double_claims_fails() -> None:
    probe = ClaimProbe("MongoDB 8.0.4", double_claims=1, claims=120, rounds=1, seconds=1.0)
    with pytest.raises(pytest.fail.Exception, match="NOT atomic per document"):
        probe.require_atomic("x")
