"""GrantEntitlements: many grants in one call, each answered as GrantEntitlement would."""

from __future__ import annotations

import grpc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.tables import audit
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.entitlements.conftest import check, new_user, paid, revoke_of


async def audit_actions(engine: AsyncEngine, reference: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            select(audit.c.action).where(audit.c.reference == reference).order_by(audit.c.audit_id)
        )
        return list(rows)


async def test_a_batch_grants_each_once_keeps_tombstones_and_fails_items_alone(
    stub: entitlements_pb2_grpc.EntitlementsServiceStub, engine: AsyncEngine
) -> None:
    user = new_user()
    fresh = paid(user, days=30)
    already = paid(user, days=30)
    refunded_first = paid(user, days=30)
    await stub.GrantEntitlement(already)
    await stub.RevokeEntitlement(revoke_of(refunded_first))  # a tombstone, before its grant
    invalid = paid(user, "gold", days=30)  # no such tier
    reply = await stub.GrantEntitlements(
        entitlements_pb2.GrantEntitlementsRequest(
            grants=[fresh, already, refunded_first, invalid, fresh]
        )
    )
    results = reply.results
    assert [r.code for r in results] == [0, 0, 0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    assert "gold" in results[3].message
    assert [r.created for r in results] == [True, False, False, False, False]
    assert results[0].grant.grant_id == results[4].grant.grant_id  # a repeat is the same grant
    assert results[2].grant.revoked  # the tombstone stands
    answer = await stub.CheckEntitlement(check(user))
    # Two standing grants of 30 days, stacked: the fresh one and the one granted before.
    assert answer.active and len(answer.grants) == 2
    assert await audit_actions(engine, fresh.source.reference) == ["grant"]
    assert await audit_actions(engine, already.source.reference) == ["grant"]
    assert await audit_actions(engine, refunded_first.source.reference) == [
        "tombstone",
        "grant_after_revoke",
    ]
    async with engine.connect() as connection:
        gold = await connection.scalar(
            select(func.count()).where(audit.c.reference == invalid.source.reference)
        )
    assert gold == 0
