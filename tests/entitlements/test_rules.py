"""The stacking rules, pure: any arrival order gives one answer, the one a simple simulation gives.

The reference spends paid time hour by hour: each purchase adds credit to a queue served in
purchase order; a duration is credit that waits its turn, an `until` is credit that lapses at
its date, a lifetime covers for ever. Nothing of it is shared with the code under test.
"""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from entitlements_service import rules
from entitlements_service.rules import Grant
from tests.entitlements.ledger_model import (
    HOUR,
    TIERS_ANSWERING,
    Paid,
    Story,
    at,
    grants_of,
    purchases,
    record_grant,
    record_revoke,
    settle,
    stories,
)


def check(grants: list[Grant], entitlement: str, hour: int) -> rules.Answer:
    windows = rules.windows_for_check(
        rules.stack_by_entitlement(grants), TIERS_ANSWERING[entitlement]
    )
    return rules.answer(windows, at(hour))


def reference_cover(paid: list[Paid], entitlement: str, horizon: int) -> list[bool]:
    """Hour by hour, is this one entitlement covered? Credit is spent in purchase order."""
    mine = sorted(
        (p for p in paid if p.entitlement == entitlement), key=lambda p: (p.purchased, p.reference)
    )
    covered = [False] * horizon
    queue: list[list[int | None]] = []  # [hours left, lapses at (None: never)]
    for hour in range(horizon):
        for p in mine:
            if p.purchased != hour:
                continue
            if p.hours is not None:
                queue.append([p.hours, None])
            elif p.until is not None:
                queue.append([p.until - hour, p.until])
        while queue and queue[0][1] is not None and queue[0][1] <= hour:
            queue.pop(0)
        if queue:
            covered[hour] = True
            left = queue[0][0]
            assert left is not None
            queue[0][0] = left - 1
            if left - 1 == 0:
                queue.pop(0)
        if any(p.lifetime and p.purchased <= hour for p in mine):
            covered[hour] = True
    return covered


def reference_answer(paid: list[Paid], entitlement: str, hour: int) -> tuple[bool, int | None]:
    """(active, hour it ends); hour None: lifetime."""
    horizon = 1000  # past every purchase, duration and until the strategies can draw
    covers = [reference_cover(paid, tier, horizon) for tier in TIERS_ANSWERING[entitlement]]
    covered = [any(c[h] for c in covers) for h in range(horizon)]
    if not covered[hour]:
        return False, None
    end = next((h for h in range(hour, horizon) if not covered[h]), None)
    return True, end


@settings(max_examples=400, deadline=None)
@given(story=stories(), order=st.randoms(use_true_random=False), hour=st.integers(0, 400))
def test_any_arrival_order_gives_the_reference_answer(
    story: Story, order: object, hour: int
) -> None:
    shuffled = list(story.events)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    in_order = settle(story.events)
    arrived = settle(shuffled)
    standing = [p for p in story.paid if p.reference not in story.revoked]
    for entitlement in ("premium", "vip"):
        answer = check(arrived, entitlement, hour)
        assert answer == check(in_order, entitlement, hour)
        active, ends = reference_answer(standing, entitlement, hour)
        assert answer.active == active
        if active:
            assert answer.lifetime == (ends is None)
            assert answer.expires_at == (None if ends is None else at(ends))
            assert answer.explain, "an active answer names the grants that make it"
        else:
            assert answer.expires_at is None and not answer.explain
        for window in answer.explain:
            assert window.grant.entitlement in TIERS_ANSWERING[entitlement]
            assert window.grant.source.reference not in story.revoked


@settings(max_examples=300, deadline=None)
@given(paid=purchases(), revoked_index=st.integers(0, 6))
def test_revoking_one_grant_leaves_every_other_its_full_time(
    paid: list[Paid], revoked_index: int
) -> None:
    durations = [p for p in paid if p.hours is not None]
    gone = durations[revoked_index % len(durations)] if durations else None
    # The grant stays in the list, marked revoked, as the store hands it to the rules.
    grants = [
        dataclasses.replace(p.grant(), revoked=True) if p is gone else p.grant() for p in durations
    ]
    windows = rules.stack(grants)
    by_reference = {w.grant.source.reference: w for w in windows}
    if gone is not None:
        assert gone.reference not in by_reference, "a revoked grant covers no time"
    for p in durations:
        if p is gone:
            continue
        window = by_reference[p.reference]
        assert window.ends_at is not None
        assert window.ends_at - window.starts_at == p.hours * HOUR  # type: ignore[operator]
        assert window.starts_at >= at(p.purchased)
    ordered = sorted(windows, key=lambda w: w.starts_at)
    for earlier, later in itertools.pairwise(ordered):
        assert earlier.ends_at is not None and earlier.ends_at <= later.starts_at


def test_grants_run_end_to_end_in_purchase_order_not_arrival_order() -> None:
    first = Paid("pi_a", "premium", purchased=0, hours=30)
    second = Paid("pi_b", "premium", purchased=5, hours=30)
    windows = {w.grant.source.reference: w for w in rules.stack([second.grant(), first.grant()])}
    assert (windows["pi_a"].starts_at, windows["pi_a"].ends_at) == (at(0), at(30))
    assert (windows["pi_b"].starts_at, windows["pi_b"].ends_at) == (at(30), at(60))


def test_a_renewal_until_a_later_date_extends_and_never_doubles() -> None:
    month_one = Paid("in_1", "premium", purchased=0, until=720)
    month_two = Paid("in_2", "premium", purchased=715, until=1440)
    answer = check([month_one.grant(), month_two.grant()], "premium", 100)
    assert answer.expires_at == at(1440)


def test_a_revoke_before_its_grant_leaves_the_grant_revoked() -> None:
    refunded = Paid("pi_r", "premium", purchased=0, hours=30)
    ledger = record_revoke({}, refunded.grant().source)
    ledger, created = record_grant(ledger, refunded.grant())
    assert not created
    assert not check(grants_of(ledger), "premium", 1).active


def test_vip_answers_a_premium_check_across_a_gap_in_premium() -> None:
    premium = Paid("pi_p", "premium", purchased=0, hours=10)
    vip = Paid("pi_v", "vip", purchased=5, hours=20)
    later_premium = Paid("pi_q", "premium", purchased=25, hours=10)
    grants = [premium.grant(), vip.grant(), later_premium.grant()]
    answer = check(grants, "premium", 2)
    assert answer.expires_at == at(35)
    assert {w.grant.source.reference for w in answer.explain} == {"pi_p", "pi_v", "pi_q"}
    assert check(grants, "vip", 2).active is False
