"""The chaos checker's ordering of one job's claims (``chaos_oracle.rules``), on hand-made records.

Claims are recorded when the claiming call returns; a store that claims in rounds (MongoStore's
batch claim) can return after a later call that took the job over once its lease ended. The
checker must judge the order the store made the claims in, not the order the calls returned in,
and must still report a pair that no order explains.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from anysched import JobStatus
from chaos_oracle.records import Claim, Write
from chaos_oracle.rules import in_server_order, succession_anomalies

T0 = datetime(2030, 1, 1, 0, 56, 33, 767000, tzinfo=timezone.utc)
LEASE = timedelta(seconds=1)


def _claim(lease: str, now: datetime, attempts: int, start_seq: int, end_seq: int) -> Claim:
    return Claim("job", lease, now, now + LEASE, attempts, T0, start_seq, end_seq, "p")


def _failed_write(claim: Claim, start_seq: int) -> None:
    at = claim.now + timedelta(milliseconds=350)
    claim.writes.append(Write("failed", at, None, claim.attempts, JobStatus.FAILED, start_seq, start_seq + 1))


def test_a_claim_from_an_early_round_of_a_call_that_returned_last_is_ordered_first() -> None:
    # The CI run's chaos-000048: a batch claim at 33.767 won it in its first round (lease until
    # 34.767) and returned only after its third; meanwhile a claim at 35.089 took it over and
    # wrote its outcome. Recorded in return order, that looked like a claim under a held lease.
    slow = _claim("e77f", T0, attempts=6, start_seq=100, end_seq=200)
    later = _claim("f57d", T0 + timedelta(milliseconds=1322), attempts=7, start_seq=150, end_seq=180)
    _failed_write(later, start_seq=210)  # its outcome, sent after the slow call returned
    recorded = [later, slow]
    assert len(succession_anomalies("job", later, slow)) == 2  # what the CI run reported

    ordered = in_server_order("job", recorded)

    assert ordered == [slow, later]
    assert succession_anomalies("job", slow, later) == []


def test_calls_that_did_not_overlap_keep_their_order_and_are_reported() -> None:
    first = _claim("aaaa", T0 + timedelta(seconds=2), attempts=2, start_seq=10, end_seq=20)
    _failed_write(first, start_seq=40)
    second = _claim("bbbb", T0, attempts=1, start_seq=30, end_seq=35)  # began after the first returned

    assert in_server_order("job", [first, second]) == [first, second]
    assert succession_anomalies("job", first, second) != []


def test_two_overlapping_claims_that_no_order_explains_are_still_reported() -> None:
    # Both won the job while the other's lease was held (a double claim): neither order fits.
    one = _claim("aaaa", T0, attempts=3, start_seq=10, end_seq=30)
    two = _claim("bbbb", T0 + timedelta(milliseconds=100), attempts=3, start_seq=15, end_seq=25)
    _failed_write(one, start_seq=40)

    ordered = in_server_order("job", [two, one])

    assert ordered == [two, one]
    assert succession_anomalies("job", two, one) != []
    assert succession_anomalies("job", one, two) != []
