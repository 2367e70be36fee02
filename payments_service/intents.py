"""What an event means for us, decided without I/O: grant, revoke, record, or nothing.

Stripe events and Telegram updates are both turned into these, so that one processor (and one
set of exactly-once rules) serves both providers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from paylayer.catalogue import Sku


def shown(value: object, limit: int = 40) -> str:
    """A provider's value quoted in a reason: bounded, since it may be anything at all."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Why an event was kept as failed: a bounded set, so each can be counted and alerted on.
FAILURE_CODES = (
    "price_mismatch",  # not the sku's price, or not in a currency it is sold in
    "livemode_mismatch",  # a live event in a test deployment, or the reverse
    "unknown_payer",  # who paid cannot be told
    "unknown_sku",  # what was bought cannot be told
    "bad_payload",  # the body lacks what its type needs
    "refused",  # a downstream refused the effect for good (INVALID_ARGUMENT, NOT_FOUND …)
    "database_refused",  # the database can never store it (a NUL byte, an out-of-range value)
    "too_many_attempts",  # it kept failing; the last error follows
)


class Unprocessable(Exception):
    """The event can never be processed as it is (who paid, or what, cannot be told).

    It is kept as failed with this reason, and can be replayed once the cause is fixed.
    Its text leads with the code in brackets: `[price_mismatch] vip_30d costs 9900 usd …`.
    """

    def __init__(self, message: str, code: str = "bad_payload") -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Payer:
    """Who paid, by the first identity the event gives; the customer is linked to them."""

    user_id: str | None = None
    telegram_user_id: int | None = None
    customer: str | None = None
    # Only a customer, on a payment that names nothing else: from API 2025-03-31.basil on, a
    # subscription's charge. Its invoice links the customer soon, so a customer not linked yet
    # is retried (up to the attempt cap) rather than failed at once.
    awaits_link: bool = False


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
    # The invoice this grant pays for; None for a one-off purchase (charge, intent, Checkout).
    invoice_id: str | None = None


@dataclass(frozen=True)
class Revoke:
    provider: str
    payment_key: str
    status: str  # refunded, disputed
    amount_refunded: int = 0


@dataclass(frozen=True)
class PaymentNote:
    """A fact about a purchase that changes no access: a failure, a partial refund, a wait.
    (Not `Store.record`, which keeps an incoming event in the inbox.)"""

    provider: str
    payment_key: str
    status: str  # failed, partially_refunded, awaiting_payment, authorized, dispute_lost
    amount: int = 0
    currency: str = ""
    amount_refunded: int = 0


@dataclass(frozen=True)
class LinkInvoicePayment:
    """Stripe (API 2025-03-31.basil and newer): this payment paid that invoice.

    Lets a refund or dispute of the payment reach the invoice's grant, and keeps a charge of
    the invoice from granting a second time.
    """

    provider: str
    payment_key: str
    invoice_id: str


@dataclass(frozen=True)
class Reinstate:
    """A dispute was won: the time its revoke took is given back."""

    provider: str
    payment_key: str


@dataclass(frozen=True)
class SubscriptionChange:
    """What an event says about a subscription (Stripe's subscription and invoice events, Stars
    `subscription` updates). Events arrive in any order: the newest `observed_at` decides the
    state, and a None field leaves what is known as it is."""

    provider: str
    subscription_id: str
    observed_at: datetime
    payer: Payer
    sku: Sku
    status: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool | None = None
    canceled_at: datetime | None = None
    # When access ends for good (an immediate cancel, or the end of the last paid period).
    ended_at: datetime | None = None
    # A renewal is past due: access is kept the sku's grace_days past this paid period's end.
    grace_from: datetime | None = None


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class ChannelUpdate:
    """A join request or a membership change in a chat: channel access acts on it."""

    kind: str  # chat_join_request or chat_member
    update: dict[str, Any]


Intent = (
    Grant
    | Revoke
    | PaymentNote
    | LinkInvoicePayment
    | Reinstate
    | SubscriptionChange
    | Ignore
    | ChannelUpdate
)
