"""Grants, revokes and checks through the real gRPC server and PostgreSQL, as payments sends."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.wire import to_datetime
from protos.entitlements.v1 import entitlements_pb2
from protos.entitlements.v1.entitlements_pb2_grpc import EntitlementsServiceStub
from tests.entitlements.conftest import DAY, ago, check, new_reference, new_user, paid, revoke_of


async def test_a_paid_grant_is_active_until_its_end_and_explained(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    request = paid(user, purchased_at=ago(2), days=30)
    granted = await stub.GrantEntitlement(request)
    assert granted.created

    answer = await stub.CheckEntitlement(check(user))
    assert answer.active and not answer.lifetime
    assert to_datetime(answer.expires_at) == to_datetime(request.purchased_at) + 30 * DAY
    assert [g.source.reference for g in answer.grants] == [request.source.reference]
    assert answer.grants[0].event_id == request.event_id


async def test_a_user_with_no_grant_is_inactive_with_no_expiry(
    stub: EntitlementsServiceStub,
) -> None:
    answer = await stub.CheckEntitlement(check(new_user()))
    assert not answer.active
    assert not answer.HasField("expires_at")
    assert not answer.grants


async def test_an_expired_grant_no_longer_counts(stub: EntitlementsServiceStub) -> None:
    user = new_user()
    await stub.GrantEntitlement(paid(user, purchased_at=ago(40), days=30))
    answer = await stub.CheckEntitlement(check(user))
    assert not answer.active


async def test_the_same_source_twice_is_one_grant(stub: EntitlementsServiceStub) -> None:
    user = new_user()
    request = paid(user, purchased_at=ago(1), days=30)
    first = await stub.GrantEntitlement(request)
    again = await stub.GrantEntitlement(request)
    assert first.created and not again.created
    assert again.grant.grant_id == first.grant.grant_id
    answer = await stub.CheckEntitlement(check(user))
    assert to_datetime(answer.expires_at) == to_datetime(request.purchased_at) + 30 * DAY


async def test_concurrent_duplicate_grants_take_effect_once(
    stub: EntitlementsServiceStub, engine: AsyncEngine
) -> None:
    user = new_user()
    request = paid(user, purchased_at=ago(1), days=30)
    replies = await asyncio.gather(*(stub.GrantEntitlement(request) for _ in range(20)))
    assert sum(reply.created for reply in replies) == 1
    assert len({reply.grant.grant_id for reply in replies}) == 1
    answer = await stub.CheckEntitlement(check(user))
    assert to_datetime(answer.expires_at) == to_datetime(request.purchased_at) + 30 * DAY
    async with engine.connect() as connection:
        audited = await connection.scalar(
            text("SELECT count(*) FROM entitlements.audit WHERE reference = :reference"),
            {"reference": request.source.reference},
        )
    assert audited == 1


async def test_grants_stack_in_purchase_order_whatever_order_they_arrive_in(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    older = paid(user, purchased_at=ago(5), days=30)
    newer = paid(user, purchased_at=ago(1), days=30)
    await stub.GrantEntitlement(newer)
    await stub.GrantEntitlement(older)
    answer = await stub.CheckEntitlement(check(user))
    assert to_datetime(answer.expires_at) == to_datetime(older.purchased_at) + 60 * DAY
    windows = {g.source.reference: g for g in answer.grants}
    assert (
        to_datetime(windows[newer.source.reference].starts_at)
        == to_datetime(older.purchased_at) + 30 * DAY
    )


async def test_revoking_one_grant_removes_its_time_and_the_others_keep_theirs(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    older = paid(user, purchased_at=ago(5), days=30)
    newer = paid(user, purchased_at=ago(1), days=30)
    await stub.GrantEntitlement(older)
    await stub.GrantEntitlement(newer)

    revoked = await stub.RevokeEntitlement(revoke_of(older))
    assert revoked.grant.revoked and not revoked.tombstone

    answer = await stub.CheckEntitlement(check(user))
    assert answer.active
    assert to_datetime(answer.expires_at) == to_datetime(newer.purchased_at) + 30 * DAY
    assert [g.source.reference for g in answer.grants] == [newer.source.reference]


async def test_a_refund_before_its_payment_leaves_no_access(
    stub: EntitlementsServiceStub, engine: AsyncEngine
) -> None:
    user = new_user()
    payment = paid(user, days=30)
    refund = await stub.RevokeEntitlement(revoke_of(payment))
    assert refund.tombstone and not refund.HasField("grant")

    late = await stub.GrantEntitlement(payment)
    assert not late.created
    assert late.grant.revoked
    assert not (await stub.CheckEntitlement(check(user))).active
    # And the refund, repeated, still changes nothing.
    again = await stub.RevokeEntitlement(revoke_of(payment))
    assert again.grant.revoked and not again.tombstone
    async with engine.connect() as connection:
        actions = list(
            await connection.scalars(
                text(
                    "SELECT action FROM entitlements.audit WHERE reference = :reference"
                    " ORDER BY audit_id"
                ),
                {"reference": payment.source.reference},
            )
        )
    assert actions == ["tombstone", "grant_after_revoke"]


async def test_vip_passes_a_premium_check_but_premium_never_passes_vip(
    stub: EntitlementsServiceStub,
) -> None:
    vip_user, premium_user = new_user(), new_user()
    vip = paid(vip_user, "vip", purchased_at=ago(1), days=30)
    await stub.GrantEntitlement(vip)
    await stub.GrantEntitlement(paid(premium_user, "premium", days=30))

    premium_check = await stub.CheckEntitlement(check(vip_user, "premium"))
    assert premium_check.active
    assert to_datetime(premium_check.expires_at) == to_datetime(vip.purchased_at) + 30 * DAY
    assert [g.entitlement for g in premium_check.grants] == ["vip"]
    assert not (await stub.CheckEntitlement(check(premium_user, "vip"))).active


async def test_premium_and_vip_back_to_back_make_one_continuous_premium_span(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    premium = paid(user, "premium", purchased_at=ago(10), days=15)
    vip = paid(user, "vip", purchased_at=ago(5), days=30)
    await stub.GrantEntitlement(premium)
    await stub.GrantEntitlement(vip)
    answer = await stub.CheckEntitlement(check(user, "premium"))
    assert to_datetime(answer.expires_at) == to_datetime(vip.purchased_at) + 30 * DAY
    assert {g.entitlement for g in answer.grants} == {"premium", "vip"}


async def test_a_lifetime_grant_never_expires(stub: EntitlementsServiceStub) -> None:
    user = new_user()
    await stub.GrantEntitlement(paid(user, days=30))
    await stub.GrantEntitlement(paid(user, lifetime=True))
    answer = await stub.CheckEntitlement(check(user))
    assert answer.active and answer.lifetime
    assert not answer.HasField("expires_at")


async def test_a_subscription_renewal_extends_to_its_new_date_without_doubling(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    first_period_end = datetime.now(UTC) + 3 * DAY
    renewed_end = first_period_end + 30 * DAY
    await stub.GrantEntitlement(paid(user, purchased_at=ago(27), until=first_period_end))
    await stub.GrantEntitlement(paid(user, purchased_at=ago(0.1), until=renewed_end))
    answer = await stub.CheckEntitlement(check(user))
    assert to_datetime(answer.expires_at) == renewed_end


async def test_any_arrival_order_of_the_same_events_gives_the_same_answer(
    stub: EntitlementsServiceStub,
) -> None:
    """The property the rules are tested for, here through SQL: a few shuffled orders."""
    base = datetime.now(UTC) - 3 * DAY
    answers = set()
    for seed in range(5):
        user = new_user()
        tag = uuid.uuid4().hex[:8]
        first = paid(user, reference=f"a-{tag}", purchased_at=base, days=10)
        second = paid(user, reference=f"b-{tag}", purchased_at=base + DAY, days=10)
        refunded = paid(user, reference=f"c-{tag}", purchased_at=base + 2 * DAY, days=10)
        vip = paid(user, "vip", reference=f"d-{tag}", purchased_at=base + DAY, days=2)
        events = [
            ("grant", first),
            ("grant", second),
            ("grant", second),
            ("grant", refunded),
            ("revoke", refunded),
            ("grant", vip),
        ]
        random.Random(seed).shuffle(events)
        for kind, request in events:
            if kind == "grant":
                await stub.GrantEntitlement(request)
            else:
                await stub.RevokeEntitlement(revoke_of(request))
        answer = await stub.CheckEntitlement(check(user))
        answers.add(to_datetime(answer.expires_at) - base)
    assert answers == {20 * DAY}


INVALID_CHECKS = [
    entitlements_pb2.CheckEntitlementRequest(user_id="", entitlement="premium"),
    entitlements_pb2.CheckEntitlementRequest(user_id="u", entitlement=""),
    entitlements_pb2.CheckEntitlementRequest(user_id="u", entitlement="platinum"),
    entitlements_pb2.CheckEntitlementRequest(user_id="u" * 300, entitlement="premium"),
    entitlements_pb2.CheckEntitlementRequest(user_id="u\x00", entitlement="premium"),
]


@pytest.mark.parametrize("request_", INVALID_CHECKS)
async def test_a_malformed_check_is_an_invalid_argument(
    stub: EntitlementsServiceStub, request_: entitlements_pb2.CheckEntitlementRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CheckEntitlement(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _without_term() -> entitlements_pb2.GrantEntitlementRequest:
    request = paid("u", days=30)
    request.ClearField("duration_seconds")
    return request


def _manual_without_reason() -> entitlements_pb2.GrantEntitlementRequest:
    return paid("u", provider="manual", days=30)


def _until_before_purchase() -> entitlements_pb2.GrantEntitlementRequest:
    return paid("u", purchased_at=ago(1), until=ago(2))


def _absurd_purchase_time() -> entitlements_pb2.GrantEntitlementRequest:
    request = paid("u", days=30)
    request.purchased_at.seconds = 253_402_300_799  # year 9999
    return request


INVALID_GRANTS = {
    "no user": paid("", days=30),
    "no source": entitlements_pb2.GrantEntitlementRequest(
        user_id="u", entitlement="premium", event_id="e", duration_seconds=60
    ),
    "no term": _without_term(),
    "negative duration": paid("u", days=-1),
    "manual without reason": _manual_without_reason(),
    "until before purchase": _until_before_purchase(),
    "absurd purchase time": _absurd_purchase_time(),
    "unknown tier": paid("u", "platinum", days=30),
    "NUL in the reference": paid("u", reference="pi_\x00", days=30),
}


@pytest.mark.parametrize("name", sorted(INVALID_GRANTS))
async def test_a_malformed_grant_is_an_invalid_argument_and_grants_nothing(
    stub: EntitlementsServiceStub, engine: AsyncEngine, name: str
) -> None:
    request = entitlements_pb2.GrantEntitlementRequest()
    request.CopyFrom(INVALID_GRANTS[name])
    # A user and an event of this test's own, so what it finds afterwards can only be its doing.
    user = new_user()
    if request.user_id:
        request.user_id = user
    request.event_id = "evt_" + uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GrantEntitlement(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    answer = await stub.CheckEntitlement(check(user))
    assert not answer.active and not answer.grants
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text(
                "SELECT (SELECT count(*) FROM entitlements.grants WHERE event_id = :event)"
                " + (SELECT count(*) FROM entitlements.audit WHERE event_id = :event)"
            ),
            {"event": request.event_id},
        )
    assert stored == 0, f"a refused grant left {stored} grant or audit rows"


async def test_a_manual_grant_and_its_revoke_are_audited_with_the_caller_and_why(
    stub: EntitlementsServiceStub, engine: AsyncEngine
) -> None:
    user = new_user()
    request = paid(user, provider="manual", reference=new_reference(), days=7)
    request.reason = "apology for the outage"
    request.granted_by = "support:alice"
    await stub.GrantEntitlement(request)
    revoke = revoke_of(request)
    revoke.revoked_by = "support:bob"
    await stub.RevokeEntitlement(revoke)

    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT action, event_id, reason, actor, details->>'on_behalf_of'"
                    " FROM entitlements.audit"
                    " WHERE user_id = :user ORDER BY audit_id"
                ),
                {"user": user},
            )
        ).all()
    # The caller comes from its credential (the tests call as the operator); the person it
    # names is kept beside it, never instead of it.
    assert [tuple(row) for row in rows] == [
        ("grant", request.event_id, "apology for the outage", "operator", "support:alice"),
        ("revoke", revoke.event_id, "refund", "operator", "support:bob"),
    ]


async def test_the_audit_cannot_be_rewritten(
    stub: EntitlementsServiceStub, engine: AsyncEngine
) -> None:
    # Only this test's own rows are aimed at: were the guard gone, no other test would suffer.
    user = new_user()
    await stub.GrantEntitlement(paid(user, days=30))
    for statement in (
        "DELETE FROM entitlements.audit WHERE user_id = :user",
        "UPDATE entitlements.audit SET reason = 'rewritten' WHERE user_id = :user",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement), {"user": user})


async def test_list_shows_every_tier_and_the_grants_with_their_windows(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    vip = paid(user, "vip", purchased_at=ago(1), days=30)
    refunded = paid(user, "premium", purchased_at=ago(1), days=30)
    await stub.GrantEntitlement(vip)
    await stub.GrantEntitlement(refunded)
    await stub.RevokeEntitlement(revoke_of(refunded))

    listed = await stub.ListEntitlements(entitlements_pb2.ListEntitlementsRequest(user_id=user))
    statuses = {s.entitlement: s for s in listed.entitlements}
    assert statuses["vip"].active and statuses["premium"].active
    assert [g.source.reference for g in listed.grants] == [vip.source.reference]
    assert to_datetime(listed.grants[0].ends_at) == to_datetime(vip.purchased_at) + 30 * DAY

    everything = await stub.ListEntitlements(
        entitlements_pb2.ListEntitlementsRequest(user_id=user, include_revoked=True)
    )
    revoked = [g for g in everything.grants if g.revoked]
    assert [g.source.reference for g in revoked] == [refunded.source.reference]


async def test_a_grant_reply_shows_where_it_lands_in_the_stack(
    stub: EntitlementsServiceStub,
) -> None:
    user = new_user()
    first = paid(user, purchased_at=ago(1), days=30)
    await stub.GrantEntitlement(first)
    second = await stub.GrantEntitlement(paid(user, days=30))
    assert to_datetime(second.grant.starts_at) == to_datetime(first.purchased_at) + 30 * DAY
    assert to_datetime(second.grant.ends_at) == to_datetime(first.purchased_at) + 60 * DAY
