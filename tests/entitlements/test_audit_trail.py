"""The audit trail an operator reads: every change of a user's grants, who made it and why."""

from __future__ import annotations

import grpc
import pytest

from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.entitlements.conftest import new_user, paid, revoke_of

Stub = entitlements_pb2_grpc.EntitlementsServiceStub


async def test_audit_lists_grants_and_revokes_newest_first_with_the_person(stub: Stub) -> None:
    user_id = new_user()
    purchase = paid(user_id, days=30)
    await stub.GrantEntitlement(purchase)
    manual = paid(user_id, "vip", provider="manual", days=3)
    manual.reason, manual.granted_by = "goodwill after an outage", "alice"
    await stub.GrantEntitlement(manual)
    revoke = revoke_of(purchase)
    revoke.revoked_by = "bob"
    await stub.RevokeEntitlement(revoke)

    reply = await stub.ListAudit(entitlements_pb2.ListAuditRequest(user_id=user_id))

    assert [(e.action, e.entitlement, e.on_behalf_of) for e in reply.entries] == [
        ("revoke", "premium", "bob"),
        ("grant", "vip", "alice"),
        ("grant", "premium", ""),
    ]
    assert reply.entries[1].reason == "goodwill after an outage"
    assert all(entry.actor == "operator" for entry in reply.entries)
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await stub.ListAudit(entitlements_pb2.ListAuditRequest(user_id=user_id, limit=1001))
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
