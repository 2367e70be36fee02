"""What an event means for us, decided without I/O: grant, revoke, record, or nothing.

Stripe events and Telegram updates are both turned into these, so that one processor (and one
set of exactly-once rules) serves both providers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from paylayer.catalogue import Sku


def shown(value: object, limit: int = 40) -> str:
    """A provider's value quoted in a reason: bounded, since it may be anything at all."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Unprocessable(Exception):
    """The event can never be processed as it is (who paid, or what, cannot be told).

    It is kept as failed with this reason, and can be replayed once the cause is fixed.
    """


@dataclass(frozen=True)
class Payer:
    """Who paid, by the first identity the event gives; the customer is linked to them."""

    user_id: str | None = None
    telegram_user_id: int | None = None
    customer: str | None = None


@dataclass(frozen=True)
class Grant:
    provider: str
    payment_key: str
    payer: Payer
    sku: Sku
    purchased_at: datetime
    amount: int
    currency: str
    # A fixed end (a subscription period, a recurring Stars payment) instead of the sku's days.
    until: datetime | None = None
    subscription_id: str | None = None


@dataclass(frozen=True)
class Revoke:
    provider: str
    payment_key: str
    status: str  # refunded, disputed
    amount_refunded: int = 0


@dataclass(frozen=True)
class Record:
    """A fact about a purchase that changes no access: a failure, a partial refund, a wait."""

    provider: str
    payment_key: str
    status: str  # failed, partially_refunded, awaiting_payment
    amount: int = 0
    currency: str = ""
    amount_refunded: int = 0


@dataclass(frozen=True)
class SubscriptionState:
    provider: str
    subscription_id: str
    state: str  # canceled, active, failed


@dataclass(frozen=True)
class Ignore:
    reason: str


Intent = Grant | Revoke | Record | SubscriptionState | Ignore
