"""Domain values to protobuf messages and back, and the change notice sent over NOTIFY."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from entitlements_service.rules import Answer, Grant, Window
from protos.entitlements.v1 import entitlements_pb2

# Notices on the changes channel. A change notice is a base64 EntitlementChange, sent by the
# service; the others start with a prefix (the base64 alphabet has no colon, so none can mix):
HEARTBEAT_PREFIX = "hb:"  # hb:<replica>:<sequence>, a listener proving it hears
USER_CHANGED_PREFIX = "user:"  # user:<user_id>, from the grants table's trigger
ALL_CHANGED = "all:"  # the grants table was truncated


def timestamp(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def moment_of(message: Timestamp) -> datetime:
    return message.ToDatetime(tzinfo=UTC)


def grant_message(grant: Grant, window: Window | None = None) -> entitlements_pb2.Grant:
    message = entitlements_pb2.Grant(
        grant_id=grant.grant_id,
        user_id=grant.user_id,
        entitlement=grant.entitlement,
        source=entitlements_pb2.Source(
            provider=grant.source.provider, reference=grant.source.reference
        ),
        event_id=grant.event_id,
        purchased_at=timestamp(grant.purchased_at),
        lifetime=grant.lifetime,
        revoked=grant.revoked,
        reason=grant.reason,
        granted_by=grant.granted_by,
    )
    if grant.duration is not None:
        message.duration_seconds = int(grant.duration.total_seconds())
    if grant.until is not None:
        message.until.CopyFrom(timestamp(grant.until))
    if window is not None:
        message.starts_at.CopyFrom(timestamp(window.starts_at))
        if window.ends_at is not None:
            message.ends_at.CopyFrom(timestamp(window.ends_at))
    return message


def check_response(
    answer: Answer, chats_by_tier: Mapping[str, frozenset[int]] | None = None
) -> entitlements_pb2.CheckEntitlementResponse:
    """The answer on the wire; `chats_by_tier` (tier -> the chats it gives, inclusions
    counted) names the chats the explaining grants give a seat in."""
    chats: set[int] = set()
    if answer.active and chats_by_tier:
        for window in answer.explain:
            chats |= chats_by_tier.get(window.grant.entitlement, frozenset())
    response = entitlements_pb2.CheckEntitlementResponse(
        active=answer.active,
        lifetime=answer.lifetime,
        grants=[grant_message(window.grant, window) for window in answer.explain],
        chats=sorted(chats),
    )
    if answer.expires_at is not None:
        response.expires_at.CopyFrom(timestamp(answer.expires_at))
    if answer.recheck_at is not None:
        response.recheck_at.CopyFrom(timestamp(answer.recheck_at))
    return response


def change_notice(change: entitlements_pb2.EntitlementChange) -> str:
    return base64.b64encode(change.SerializeToString()).decode("ascii")


def parse_change_notice(payload: str) -> entitlements_pb2.EntitlementChange:
    return entitlements_pb2.EntitlementChange.FromString(base64.b64decode(payload))
