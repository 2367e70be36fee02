"""Domain values to protobuf messages and back, and the change notice sent over NOTIFY."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from entitlements_service.rules import Answer, Grant, Revocation, Source, Term, Window
from paylayer import validation
from paylayer.errors import InvalidArgument
from protos.entitlements.v1 import entitlements_pb2

# Notices on the changes channel. A change notice is a base64 EntitlementChange, sent by the
# service; the others start with a prefix (the base64 alphabet has no colon, so none can mix):
HEARTBEAT_PREFIX = "hb:"  # hb:<replica>:<sequence>, a listener proving it hears
USER_CHANGED_PREFIX = "user:"  # user:<user_id>, from the grants table's trigger
ALL_CHANGED = "all:"  # the grants table was truncated


def to_proto_time(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def to_datetime(message: Timestamp) -> datetime:
    return message.ToDatetime(tzinfo=UTC)


# --- requests to domain values: every field checked, the policy left to the use case ----------


@dataclass(frozen=True)
class GrantOrder:
    """A grant as a caller asks for it; the use case decides whether it may be made."""

    user_id: str
    entitlement: str
    source: Source
    event_id: str
    reason: str
    on_behalf_of: str  # whom the caller says it acts for (a person at the console)
    purchased_at: datetime | None  # None: now
    term: Term


def grant_order(request: entitlements_pb2.GrantEntitlementRequest) -> GrantOrder:
    return GrantOrder(
        user_id=validation.text("user_id", request.user_id, required=True),
        entitlement=request.entitlement,
        source=source_of(request.source),
        event_id=validation.text("event_id", request.event_id),
        reason=validation.free_text("reason", request.reason),
        on_behalf_of=validation.text("granted_by", request.granted_by),
        purchased_at=(
            validation.moment("purchased_at", request.purchased_at)
            if request.HasField("purchased_at")
            else None
        ),
        term=_term(request),
    )


def _term(request: entitlements_pb2.GrantEntitlementRequest) -> Term:
    term = request.WhichOneof("term")
    if term == "duration_seconds":
        return Term(duration=timedelta(seconds=request.duration_seconds))
    if term == "until":
        return Term(until=validation.moment("until", request.until))
    if term == "lifetime" and not request.lifetime:
        raise InvalidArgument("lifetime, when given, must be true")
    return Term(lifetime=term == "lifetime")


def revocation(request: entitlements_pb2.RevokeEntitlementRequest, *, caller: str) -> Revocation:
    return Revocation(
        source=source_of(request.source),
        event_id=validation.text("event_id", request.event_id),
        reason=validation.free_text("reason", request.reason),
        # Who it was is taken from the credential, never from the request.
        revoked_by=caller,
        on_behalf_of=validation.text("revoked_by", request.revoked_by),
    )


def source_of(source: entitlements_pb2.Source) -> Source:
    return Source(
        provider=validation.text("source.provider", source.provider, required=True),
        reference=validation.text("source.reference", source.reference, required=True),
    )


# --- domain values to messages -----------------------------------------------------------------


def grant_message(grant: Grant, window: Window | None = None) -> entitlements_pb2.Grant:
    message = entitlements_pb2.Grant(
        grant_id=grant.grant_id,
        user_id=grant.user_id,
        entitlement=grant.entitlement,
        source=entitlements_pb2.Source(
            provider=grant.source.provider, reference=grant.source.reference
        ),
        event_id=grant.event_id,
        purchased_at=to_proto_time(grant.purchased_at),
        lifetime=grant.lifetime,
        revoked=grant.revoked,
        reason=grant.reason,
        granted_by=grant.granted_by,
    )
    if grant.duration is not None:
        message.duration_seconds = int(grant.duration.total_seconds())
    if grant.until is not None:
        message.until.CopyFrom(to_proto_time(grant.until))
    if window is not None:
        message.starts_at.CopyFrom(to_proto_time(window.starts_at))
        if window.ends_at is not None:
            message.ends_at.CopyFrom(to_proto_time(window.ends_at))
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
        response.expires_at.CopyFrom(to_proto_time(answer.expires_at))
    if answer.recheck_at is not None:
        response.recheck_at.CopyFrom(to_proto_time(answer.recheck_at))
    return response


def change_notice(change: entitlements_pb2.EntitlementChange) -> str:
    return base64.b64encode(change.SerializeToString()).decode("ascii")


def parse_change_notice(payload: str) -> entitlements_pb2.EntitlementChange:
    return entitlements_pb2.EntitlementChange.FromString(base64.b64decode(payload))


def audit_entry(row: Mapping[str, Any]) -> entitlements_pb2.AuditEntry:
    return entitlements_pb2.AuditEntry(
        occurred_at=to_proto_time(row["occurred_at"]),
        action=row["action"],
        source=entitlements_pb2.Source(provider=row["provider"], reference=row["reference"]),
        grant_id=str(row["grant_id"]),
        entitlement=row["entitlement"] or "",
        event_id=row["event_id"],
        reason=row["reason"],
        actor=row["actor"],
        on_behalf_of=str((row["details"] or {}).get("on_behalf_of", "")),
    )
