"""Every proto <-> domain conversion of the payments service: events, payments and
subscriptions to messages; request fields (JSON payloads, pages, times) checked on the way in."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from paylayer import validation
from paylayer.errors import InvalidArgument
from payments_service.store import Event
from protos.payments.v1 import payments_pb2

MAX_PAGE_SIZE = 500
STATUS_NAMES = {
    "pending": payments_pb2.EVENT_STATUS_PENDING,
    "processed": payments_pb2.EVENT_STATUS_PROCESSED,
    "ignored": payments_pb2.EVENT_STATUS_IGNORED,
    "failed": payments_pb2.EVENT_STATUS_FAILED,
}
STATUS_BY_ENUM = {value: name for name, value in STATUS_NAMES.items()}


def to_proto_time(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def event_message(event: Event) -> payments_pb2.Event:
    return payments_pb2.Event(
        provider=event.provider,
        event_id=event.event_id,
        event_type=event.event_type,
        status=STATUS_NAMES[event.status],
        error=event.error,
        attempts=event.attempts,
        received_at=to_proto_time(event.received_at),
        processed_at=to_proto_time(event.processed_at),
        next_attempt_at=to_proto_time(event.next_attempt_at) if event.status == "pending" else None,
        payment_key=event.payment_key or "",
    )


def payment_message(row: dict[str, Any]) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        provider=row["provider"],
        payment_key=row["payment_key"],
        user_id=row["user_id"] or "",
        sku=row["sku"] or "",
        status=row["status"],
        amount=row["amount"],
        currency=row["currency"],
        amount_refunded=row["amount_refunded"],
        subscription_state=row["subscription_state"],
        created_at=to_proto_time(row["created_at"]),
        updated_at=to_proto_time(row["updated_at"]),
    )


def subscription_message(row: dict[str, Any]) -> payments_pb2.Subscription:
    return payments_pb2.Subscription(
        provider=row["provider"],
        subscription_id=row["subscription_id"],
        user_id=row["user_id"] or "",
        sku=row["sku"],
        status=row["status"],
        current_period_start=to_proto_time(row["current_period_start"]),
        current_period_end=to_proto_time(row["current_period_end"]),
        cancel_at_period_end=row["cancel_at_period_end"],
        canceled_at=to_proto_time(row["canceled_at"]),
        ended_at=to_proto_time(row["ended_at"]),
    )


def outbox_message(row: dict[str, Any]) -> payments_pb2.OutboxMessage:
    return payments_pb2.OutboxMessage(
        id=row["id"],
        kind=row["kind"],
        user_id=row["user_id"],
        telegram_user_id=row["telegram_user_id"] or 0,
        status=row["status"],
        error=row["error"],
        attempts=row["attempts"],
        due_at=to_proto_time(row["due_at"]),
        sent_at=to_proto_time(row["sent_at"]),
        created_at=to_proto_time(row["created_at"]),
        ends_at=to_proto_time(row["ends_at"]),
        entitlement=row["entitlement"] or "",
    )


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidArgument(f"{what} is not JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return parsed


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or 50, MAX_PAGE_SIZE)


def page_token(token: str) -> int | None:
    if not token:
        return None
    if not (token.isascii() and token.isdigit() and len(token) <= 18):
        raise InvalidArgument("page_token is not one this service gave")
    return int(token)


def since(stamp: Timestamp, *, required: bool) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        if required:
            raise InvalidArgument("since is required")
        return None
    return validation.moment("since", stamp)
