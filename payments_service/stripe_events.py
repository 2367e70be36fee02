"""Stripe events to intents: routing, attribution (who paid, what) and what was paid, pure.

A granting event grants only what it paid for: the sku's price in a currency it is sold in
(tax that Stripe reports apart not counted), in the deployment's mode (live or test), and only
once the money is captured.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paylayer.catalogue import Catalogue, Sku
from payments_service import subscriptions
from payments_service.intents import (
    Grant,
    Ignore,
    Intent,
    LinkInvoicePayment,
    Payer,
    PaymentNote,
    Reinstate,
    Revoke,
    Unprocessable,
    shown,
)
from payments_service.subscriptions import from_epoch

PROVIDER = "stripe"

GRANTING = {
    "charge.succeeded",
    "charge.captured",
    "payment_intent.succeeded",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
}

SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
}


def _text(value: Any) -> str | None:
    # Expanded objects ({"id": ...}) appear where an id is usual; accept both.
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    """An amount: a non-negative int64, else 0 (Stripe never sends more)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return 0


def payment_key(obj: dict[str, Any]) -> str:
    """One purchase, one key: its payment intent when there is one, else the charge."""
    if obj.get("object") == "payment_intent":
        key = _text(obj.get("id"))
    else:
        key = _text(obj.get("payment_intent")) or _text(
            obj.get("charge") if obj.get("object") == "dispute" else obj.get("id")
        )
    if not key:
        raise Unprocessable(
            f"{shown(obj.get('object', 'object'))} has no payment intent or charge id"
        )
    return key


def _metadata(*sources: Any) -> dict[str, str]:
    merged: dict[str, str] = {}
    for source in sources:
        if isinstance(source, dict):
            for key, value in source.items():
                if isinstance(value, str) and value and key not in merged:
                    merged[key] = value
    return merged


def _telegram_id(text: str) -> int | None:
    """A Telegram user id: plain ASCII digits, positive, and small enough for an int64."""
    if text.isascii() and text.isdigit() and len(text) <= 18 and int(text) > 0:
        return int(text)
    return None


def payer(obj: dict[str, Any], metadata: dict[str, str]) -> Payer:
    """`metadata.user_id`, else `metadata.telegram_user_id`, else `client_reference_id`, else
    a customer already linked to a user."""
    customer = _text(obj.get("customer"))
    if metadata.get("user_id"):
        return Payer(user_id=metadata["user_id"], customer=customer)
    telegram_user_id = metadata.get("telegram_user_id", "").strip()
    if telegram_user_id:
        if _telegram_id(telegram_user_id) is None:
            raise Unprocessable(
                f"metadata.telegram_user_id is not a Telegram id: {shown(telegram_user_id)}",
                "unknown_payer",
            )
        return Payer(telegram_user_id=_telegram_id(telegram_user_id), customer=customer)
    reference = obj.get("client_reference_id")
    if isinstance(reference, str) and reference.strip():
        reference = reference.strip()
        # The Mini App puts the buyer's Telegram id here; other integrations put our user id.
        if _telegram_id(reference) is not None:
            return Payer(telegram_user_id=_telegram_id(reference), customer=customer)
        return Payer(user_id=reference, customer=customer)
    if customer:
        return Payer(customer=customer, awaits_link=not metadata)
    raise Unprocessable(
        "cannot tell who paid: no metadata.user_id, metadata.telegram_user_id, "
        "client_reference_id or customer",
        "unknown_payer",
    )


def sku(catalogue: Catalogue, metadata: dict[str, str], amount: int, currency: str) -> Sku:
    """`metadata.sku`, else the one catalogue sku with this Stripe price."""
    named = metadata.get("sku")
    if named:
        if named not in catalogue.skus:
            raise Unprocessable(f"unknown sku {shown(named)}", "unknown_sku")
        return catalogue.skus[named]
    matched = catalogue.sku_for_stripe_price(amount, currency)
    if matched is None:
        raise Unprocessable(
            "cannot tell what was bought: no metadata.sku and no sku priced "
            f"{amount} {shown(currency)}",
            "unknown_sku",
        )
    return matched


@dataclass(frozen=True)
class Paid:
    """What a payment object says was paid: the total, and the parts that are not the price."""

    amount: int
    currency: str
    tax: int = 0
    discount: int = 0


def check_price(product: Sku, paid: Paid) -> None:
    """Refuse anything but the sku's price in a currency it is sold in.

    Tax is not part of the price. A discount may cover the difference only where the catalogue
    allows discounts for this sku.
    """
    price = product.stripe_price(paid.currency)
    if price is None:
        raise Unprocessable(
            f"{product.name} is not sold in {shown(paid.currency)} by card", "price_mismatch"
        )
    net = paid.amount - paid.tax
    if net == price.amount:
        return
    if product.discounts and paid.discount > 0 and net + paid.discount == price.amount:
        return
    discounted = f" with a discount of {paid.discount}" if paid.discount else ""
    raise Unprocessable(
        f"{product.name} costs {price.amount} {price.currency}; "
        f"paid {net}{discounted} (tax {paid.tax} aside)",
        "price_mismatch",
    )


def _currency(obj: dict[str, Any]) -> str:
    currency = obj.get("currency")
    return currency.lower() if isinstance(currency, str) else ""


def _grant(
    catalogue: Catalogue,
    obj: dict[str, Any],
    key: str,
    paid: Paid,
    purchased_at: datetime,
    until: datetime | None = None,
    subscription_id: str | None = None,
    invoice_id: str | None = None,
    extra_metadata: tuple[Any, ...] = (),
) -> Grant:
    metadata = _metadata(obj.get("metadata"), *extra_metadata)
    bought = sku(catalogue, metadata, paid.amount - paid.tax, paid.currency)
    check_price(bought, paid)
    return Grant(
        provider=PROVIDER,
        payment_key=key,
        payer=payer(obj, metadata),
        sku=bought,
        purchased_at=purchased_at,
        amount=paid.amount,
        currency=paid.currency,
        until=until,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
    )


def _dict(value: Any) -> dict[str, Any]:
    """Nested objects as Stripe sends them; anything else (a bad or future shape) as empty."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict[str, Any]]:
    data = _dict(value).get("data")
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _sum_amounts(value: Any) -> int:
    """The total of a list of `{amount: …}` (tax or discount amounts)."""
    if not isinstance(value, list):
        return 0
    return sum(_int(item.get("amount")) for item in value if isinstance(item, dict))


def _line_price_id(line: dict[str, Any]) -> str | None:
    """The Stripe price a line bills: `price` up to 2024-era versions (an object), or
    `pricing.price_details.price` from 2025-03-31.basil on (an id)."""
    return _text(line.get("price")) or _text(
        _dict(_dict(line.get("pricing")).get("price_details")).get("price")
    )


def _is_proration(line: dict[str, Any]) -> bool:
    """A proration (an upgrade's credit or charge): `proration` on top up to 2024-era versions,
    under `parent.subscription_item_details` or `parent.invoice_item_details` from basil on."""
    parent = _dict(line.get("parent"))
    details = _dict(parent.get("subscription_item_details")) or _dict(
        parent.get("invoice_item_details")
    )
    return line.get("proration") is True or details.get("proration") is True


def _line_tax_included(line: dict[str, Any]) -> int:
    """Tax counted inside a line's `amount` (inclusive tax): `tax_amounts[].inclusive` up to
    2024-era versions, `taxes[].tax_behavior` from basil on. Exclusive tax is outside it."""
    older = line.get("tax_amounts")
    newer = line.get("taxes")
    return sum(
        _int(tax.get("amount"))
        for tax in (older if isinstance(older, list) else [])
        if isinstance(tax, dict) and tax.get("inclusive") is True
    ) + sum(
        _int(tax.get("amount"))
        for tax in (newer if isinstance(newer, list) else [])
        if isinstance(tax, dict) and tax.get("tax_behavior") == "inclusive"
    )


def _line_paid(line: dict[str, Any], currency: str) -> Paid:
    """What one invoice line charged for its price: its amount, less its own discounts, with
    its inclusive tax set apart."""
    discount = _sum_amounts(line.get("discount_amounts"))
    return Paid(
        amount=max(_int(line.get("amount")) - discount, 0),
        currency=_currency(line) or currency,
        tax=_line_tax_included(line),
        discount=discount,
    )


def _paid_line(
    catalogue: Catalogue, lines: list[dict[str, Any]], metadata: dict[str, str], currency: str
) -> tuple[Sku, dict[str, Any]]:
    """The sku bought and the invoice line that paid for it.

    The price is checked against that line alone: the invoice's total also holds prorations,
    other items and tax, and `amount_paid` leaves out what the customer's credit balance paid.
    """
    periodic = [line for line in lines if not _is_proration(line)] or lines
    if metadata.get("sku"):
        product = sku(catalogue, metadata, 0, "")
        by_price_id = [
            line
            for line in periodic
            if product.stripe_price_id and _line_price_id(line) == product.stripe_price_id
        ]
        by_amount = [
            line
            for line in periodic
            if (price := product.stripe_price(_line_paid(line, currency).currency)) is not None
            and _line_paid(line, currency).amount - _line_tax_included(line) == price.amount
        ]
        return product, (by_price_id or by_amount or periodic)[0]
    for line in periodic:
        price_id = _line_price_id(line)
        sold_by_price_id = [
            s for s in catalogue.skus.values() if price_id and s.stripe_price_id == price_id
        ]
        if len(sold_by_price_id) == 1:
            return sold_by_price_id[0], line
        paid = _line_paid(line, currency)
        matched = catalogue.sku_for_stripe_price(paid.amount - paid.tax, paid.currency)
        if matched is not None:
            return matched, line
    raise Unprocessable(
        "cannot tell what was bought: no metadata.sku and no invoice line at a catalogue price",
        "unknown_sku",
    )


def _intent_of_payment(obj: dict[str, Any]) -> str | None:
    """The payment intent of an invoice's paid payment, when `payments` was expanded (basil)."""
    for invoice_payment in _list(obj.get("payments")):
        if invoice_payment.get("status") not in (None, "paid"):
            continue
        intent = _text(_dict(invoice_payment.get("payment")).get("payment_intent"))
        if intent:
            return intent
    return None


def _invoice_paid(catalogue: Catalogue, obj: dict[str, Any], created: datetime) -> Intent:
    invoice_id = _text(obj.get("id"))
    if not invoice_id:
        raise Unprocessable("invoice has no id")
    lines = _list(obj.get("lines"))
    if not any(from_epoch(_dict(line.get("period")).get("end")) for line in lines):
        raise Unprocessable("invoice has no line with a period end")
    # Newer API versions moved the subscription under `parent`; older ones keep it on top.
    subscription_id, subscription_details = _invoice_subscription(obj)
    # A subscription's lines carry its metadata; a proration line may carry none.
    lines_metadata = [line.get("metadata") for line in lines if not _is_proration(line)]
    metadata = _metadata(obj.get("metadata"), subscription_details.get("metadata"), *lines_metadata)
    bought, line = _paid_line(catalogue, lines, metadata, _currency(obj))
    check_price(bought, _line_paid(line, _currency(obj)))
    ends = [from_epoch(_dict(each.get("period")).get("end")) for each in lines]
    until = from_epoch(_dict(line.get("period")).get("end")) or max(
        end for end in ends if end is not None
    )
    # Up to 2024-06-20 the invoice names its payment intent: the charge that paid it is then the
    # same purchase. From basil on it does not (unless `payments` was expanded), and the link
    # comes as an invoice_payment.paid event.
    key = _text(obj.get("payment_intent")) or _intent_of_payment(obj) or invoice_id
    return Grant(
        provider=PROVIDER,
        payment_key=key,
        payer=payer(obj, metadata),
        sku=bought,
        purchased_at=from_epoch(_dict(obj.get("status_transitions")).get("paid_at")) or created,
        amount=_int(obj.get("amount_paid")),
        currency=_currency(obj),
        until=until,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
    )


def _invoice_payment(obj: dict[str, Any]) -> Intent:
    """An InvoicePayment (basil and newer): which payment paid which invoice."""
    if obj.get("status") != "paid":
        return Ignore("invoice payment is not paid")
    invoice_id = _text(obj.get("invoice"))
    payment = _dict(obj.get("payment"))
    key = _text(payment.get("payment_intent")) or _text(payment.get("charge"))
    if not invoice_id or not key:
        raise Unprocessable("invoice payment names no invoice, or no payment intent or charge")
    return LinkInvoicePayment(PROVIDER, key, invoice_id)


def _checkout_session(catalogue: Catalogue, obj: dict[str, Any], created: datetime) -> Intent:
    if obj.get("mode") == "subscription":
        return Ignore("subscription checkout: its invoice.paid grants")
    amount = _int(obj.get("amount_total"))
    if obj.get("payment_status") != "paid":
        return PaymentNote(PROVIDER, payment_key(obj), "awaiting_payment", amount, _currency(obj))
    totals = _dict(obj.get("total_details"))
    paid = Paid(
        amount=amount,
        currency=_currency(obj),
        tax=_int(totals.get("amount_tax")),
        discount=_int(totals.get("amount_discount")),
    )
    return _grant(catalogue, obj, payment_key(obj), paid, created)


def _charge_or_intent(
    catalogue: Catalogue, event_type: str, obj: dict[str, Any], created: datetime
) -> Intent:
    if _text(obj.get("invoice")):
        # Up to 2024-06-20 a subscription's payment intent and charge name their invoice; its
        # invoice.paid grants, until the line's period end, under the same key.
        paid_by = "payment intent" if obj.get("object") == "payment_intent" else "charge"
        return Ignore(f"{paid_by} of an invoice: its invoice.paid grants")
    if obj.get("object") == "payment_intent":
        paid = Paid(_int(obj.get("amount_received")), _currency(obj))
        return _grant(catalogue, obj, payment_key(obj), paid, created)
    if obj.get("captured") is False:
        # Only authorised: the money may never move. charge.captured grants, if it comes.
        return PaymentNote(
            PROVIDER, payment_key(obj), "authorized", _int(obj.get("amount")), _currency(obj)
        )
    captured = obj.get("amount_captured")
    amount = _int(captured) if captured is not None else _int(obj.get("amount"))
    return _grant(catalogue, obj, payment_key(obj), Paid(amount, _currency(obj)), created)


def _dispute_closed(obj: dict[str, Any]) -> Intent:
    status = obj.get("status")
    if status == "won":
        return Reinstate(PROVIDER, payment_key(obj))
    if status == "lost":
        return PaymentNote(PROVIDER, payment_key(obj), "dispute_lost")
    return Ignore(f"dispute closed as {shown(status)}")


def _subscription_sku(catalogue: Catalogue, obj: dict[str, Any], metadata: dict[str, str]) -> Sku:
    """`metadata.sku`, else the sku sold by the item's Stripe price id, else by its amount."""
    if metadata.get("sku"):
        return sku(catalogue, metadata, 0, "")
    for price in subscriptions.item_prices(obj):
        price_id = price.get("id")
        # A price without an id must not match every sku that names none.
        by_id = [s for s in catalogue.skus.values() if price_id and s.stripe_price_id == price_id]
        if len(by_id) == 1:
            return by_id[0]
        amount, currency = _int(price.get("unit_amount")), _currency(price)
        matched = catalogue.sku_for_stripe_price(amount, currency)
        if matched is not None:
            return matched
    raise Unprocessable(
        "cannot tell what was bought: no metadata.sku and no sku with this price", "unknown_sku"
    )


def _subscription(
    catalogue: Catalogue, event_type: str, obj: dict[str, Any], observed_at: datetime
) -> Intent:
    metadata = _metadata(obj.get("metadata"))
    return subscriptions.from_stripe_subscription(
        event_type,
        obj,
        observed_at,
        payer(obj, metadata),
        _subscription_sku(catalogue, obj, metadata),
    )


def _invoice_subscription(obj: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The subscription an invoice bills, on top (older API versions) or under `parent`."""
    details = _dict(_dict(obj.get("parent")).get("subscription_details")) or _dict(
        obj.get("subscription_details")
    )
    return _text(obj.get("subscription")) or _text(details.get("subscription")), details


def _invoice_payment_failed(
    catalogue: Catalogue, obj: dict[str, Any], observed_at: datetime
) -> Intent:
    subscription_id, details = _invoice_subscription(obj)
    if not subscription_id:
        return Ignore("a failed invoice of no subscription changes no access")
    lines = _list(obj.get("lines"))
    first_line = lines[0] if lines else {}
    metadata = _metadata(obj.get("metadata"), details.get("metadata"), first_line.get("metadata"))
    # The line's price: `price` up to 2024-era versions, `pricing.price_details` from basil on.
    price = _dict(first_line.get("price")) or {
        "id": _dict(_dict(first_line.get("pricing")).get("price_details")).get("price"),
        "unit_amount": first_line.get("amount"),
        "currency": obj.get("currency"),
    }
    line_sku = (
        sku(catalogue, metadata, 0, "")
        if metadata.get("sku")
        else _subscription_sku(catalogue, {"items": {"data": [{"price": price}]}}, metadata)
    )
    starts = [from_epoch(_dict(line.get("period")).get("start")) for line in lines]
    return subscriptions.from_failed_invoice(
        subscription_id,
        obj,
        [start for start in starts if start],
        observed_at,
        payer(obj, metadata),
        line_sku,
    )


def interpret(event: dict[str, Any], catalogue: Catalogue, *, livemode: bool = False) -> Intent:
    """What this verified Stripe event means. Raises Unprocessable when it cannot be told.

    `livemode` is the deployment's mode: an event from the other mode is refused whole.
    """
    event_type = event.get("type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_type, str) or not isinstance(obj, dict):
        raise Unprocessable("not a Stripe event: type or data.object missing")
    event_livemode = event.get("livemode") is True
    if event_livemode != livemode:
        raise Unprocessable(
            f"a {'live' if event_livemode else 'test'}-mode event reached a "
            f"{'live' if livemode else 'test'}-mode deployment",
            "livemode_mismatch",
        )
    created = (
        from_epoch(obj.get("created")) or from_epoch(event.get("created")) or datetime.now(UTC)
    )

    if event_type.startswith("checkout.session.") and event_type in GRANTING:
        return _checkout_session(catalogue, obj, created)
    if event_type in GRANTING:
        return _charge_or_intent(catalogue, event_type, obj, created)
    if event_type == "invoice.paid":
        return _invoice_paid(catalogue, obj, created)
    if event_type == "invoice_payment.paid":
        return _invoice_payment(obj)
    if event_type == "charge.failed":
        return PaymentNote(
            PROVIDER, payment_key(obj), "failed", _int(obj.get("amount")), _currency(obj)
        )
    if event_type == "charge.refunded":
        amount, refunded = _int(obj.get("amount")), _int(obj.get("amount_refunded"))
        if obj.get("refunded") is True or (amount and refunded >= amount):
            return Revoke(PROVIDER, payment_key(obj), "refunded", refunded)
        return PaymentNote(
            PROVIDER,
            payment_key(obj),
            "partially_refunded",
            amount,
            _currency(obj),
            refunded,
        )
    if event_type == "charge.dispute.created":
        return Revoke(PROVIDER, payment_key(obj), "disputed")
    if event_type == "charge.dispute.closed":
        return _dispute_closed(obj)
    # Subscription objects carry no "updated at": the event's own time orders their changes.
    observed_at = from_epoch(event.get("created")) or datetime.now(UTC)
    if event_type in SUBSCRIPTION_EVENTS:
        return _subscription(catalogue, event_type, obj, observed_at)
    if event_type == "invoice.payment_failed":
        return _invoice_payment_failed(catalogue, obj, observed_at)
    return Ignore(f"{event_type} is not acted on")
