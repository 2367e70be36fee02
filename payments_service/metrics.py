"""Payments' own metrics: what the inbox holds and what became of each event."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from paylayer.validation import PAYMENT_PROVIDERS
from payments_service.intents import FAILURE_CODES
from payments_service.messages import MESSAGE_KINDS
from payments_service.store import Store

log = logging.getLogger(__name__)

EVENTS_RECEIVED = Counter(
    "paylayer_payments_events_received_total",
    "Events committed to the inbox, by provider and type (duplicates not counted).",
    ["provider", "type"],
)
EVENTS_DUPLICATE = Counter(
    "paylayer_payments_events_duplicate_total",
    "Deliveries of an event already in the inbox, by provider.",
    ["provider"],
)
EVENTS_FINISHED = Counter(
    "paylayer_payments_events_finished_total",
    "Events done with, by provider, type and outcome (processed, ignored, failed).",
    ["provider", "type", "outcome"],
)
EVENT_RETRIES = Counter(
    "paylayer_payments_event_retries_total",
    "Attempts put off because a downstream could not answer, by provider.",
    ["provider"],
)
EVENTS_FAILED = Counter(
    "paylayer_payments_events_failed_total",
    "Events kept as failed (replayable), by provider and reason code (price_mismatch, …).",
    ["provider", "reason"],
)
# Every series exists from the start, at 0, so an alert on its increase sees the first failure.
for _provider in PAYMENT_PROVIDERS:
    for _code in FAILURE_CODES:
        EVENTS_FAILED.labels(_provider, _code)

INBOX_FAILED = Gauge(
    "paylayer_payments_inbox_failed",
    "Events kept as failed and not yet replayed: each needs an operator's look.",
)
INBOX_PENDING = Gauge("paylayer_payments_inbox_pending", "Events received and not yet applied.")
INBOX_OLDEST_PENDING_AGE = Gauge(
    "paylayer_payments_inbox_oldest_pending_age_seconds",
    "Age of the oldest event not yet applied (0 when none).",
)


async def watch_inbox(store: Store, interval_seconds: float = 2.0) -> None:
    """Keep the inbox gauges current; one cheap indexed query every couple of seconds."""
    while True:
        try:
            depth, oldest, failed = await store.inbox_depth()
            INBOX_PENDING.set(depth)
            INBOX_FAILED.set(failed)
            INBOX_OLDEST_PENDING_AGE.set(
                (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0
            )
        except Exception as error:  # the database may be restarting; health reports that
            log.debug("inbox gauges not updated: %r", error)
        await asyncio.sleep(interval_seconds)


MESSAGES_SENT = Counter(
    "paylayer_payments_messages_sent_total",
    "Messages to users that Telegram accepted, by kind (receipt, revoked, reminder_3d, …).",
    ["kind"],
)
MESSAGES_FAILED = Counter(
    "paylayer_payments_messages_failed_total",
    "Messages kept as failed (Telegram refused them, too many attempts) or unknown (their "
    "sender died mid-send), by kind.",
    ["kind"],
)
MESSAGES_UNREACHABLE = Counter(
    "paylayer_payments_messages_unreachable_total",
    "Users found to have blocked the bot (Telegram answered 403): nothing more goes to them.",
)
for _kind in MESSAGE_KINDS:
    MESSAGES_SENT.labels(_kind)
    MESSAGES_FAILED.labels(_kind)
