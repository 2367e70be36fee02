"""The entitlements service in-process on a free port, its stub, and a few ways to grant."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from entitlements_service.server import build
from entitlements_service.wire import to_proto_time
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.conftest import INTERNAL_TOKEN
from tests.grpc_helpers import channel_to, serving

DAY = timedelta(days=1)
# paylayer.grpc_client's interceptor reaches unary calls only (grpc.aio files an interceptor under
# its first kind), so streaming calls carry the token themselves.
BEARER = (("authorization", f"Bearer {INTERNAL_TOKEN}"),)


# Package-scoped, not session-scoped: an in-process server's LISTEN connection is read only
# while the test loop runs. Kept past its tests, it stops being read between synchronous tests,
# its backend blocks writing the heartbeats other replicas send, and any DROP DATABASE on the
# server (which waits for every backend to answer a signal) hangs.
@pytest.fixture(scope="package")
async def entitlements_addr(settings: Settings) -> AsyncIterator[str]:
    async with serving(build(settings)) as addr:
        yield addr


@pytest.fixture(scope="package")
async def stub(
    entitlements_addr: str, settings: Settings
) -> AsyncIterator[entitlements_pb2_grpc.EntitlementsServiceStub]:
    async with channel_to(entitlements_addr, settings.internal_token) as channel:
        yield entitlements_pb2_grpc.EntitlementsServiceStub(channel)


def new_user() -> str:
    """A user no other test touches (the database lives for the whole session)."""
    return "user-" + uuid.uuid4().hex


def new_reference() -> str:
    return "pi_" + uuid.uuid4().hex


def ago(days: float) -> datetime:
    return datetime.now(UTC) - days * DAY


def paid(
    user_id: str,
    entitlement: str = "premium",
    *,
    reference: str | None = None,
    provider: str = "stripe",
    purchased_at: datetime | None = None,
    days: float | None = None,
    until: datetime | None = None,
    lifetime: bool = False,
) -> entitlements_pb2.GrantEntitlementRequest:
    """A grant as payments sends it: a source, the event, the purchase time and a term."""
    request = entitlements_pb2.GrantEntitlementRequest(
        user_id=user_id,
        entitlement=entitlement,
        source=entitlements_pb2.Source(provider=provider, reference=reference or new_reference()),
        event_id="evt_" + uuid.uuid4().hex,
        purchased_at=to_proto_time(purchased_at or datetime.now(UTC)),
    )
    if days is not None:
        request.duration_seconds = int(days * DAY.total_seconds())
    elif until is not None:
        request.until.CopyFrom(to_proto_time(until))
    else:
        request.lifetime = lifetime
    return request


def revoke_of(
    request: entitlements_pb2.GrantEntitlementRequest,
) -> entitlements_pb2.RevokeEntitlementRequest:
    return entitlements_pb2.RevokeEntitlementRequest(
        source=request.source, event_id="evt_" + uuid.uuid4().hex, reason="refund"
    )


def check(user_id: str, entitlement: str = "premium") -> entitlements_pb2.CheckEntitlementRequest:
    return entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=entitlement)
