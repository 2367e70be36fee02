"""Use cases that start or change a purchase at a provider: Stripe Checkout and the billing
portal, cancelling and resuming subscriptions (Stripe and Stars), Stripe refunds, and Stripe
reconcile. What they change comes back through the inbox, as the providers' webhooks would.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from paylayer.catalogue import Catalogue, Sku
from paylayer.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from payments_service import subscriptions, telegram_updates
from payments_service.bot_api import BotApi, BotApiError
from payments_service.downstream import CALL_DEADLINE_SECONDS
from payments_service.processor import Processor
from payments_service.store import Store
from payments_service.stripe_api import StripeApi
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc

MAX_URL = 2048
EVENTS_PAGE = 100


@dataclass(frozen=True)
class Buyer:
    user_id: str
    telegram_user_id: int
    stripe_customer_id: str


def _url(name: str, given: str, fallback: str, *, required: bool) -> str:
    url = given or fallback
    if not url:
        if required:
            raise InvalidArgument(f"give {name}, or set CHECKOUT_{name.upper()}")
        return ""
    if len(url) > MAX_URL or not url.startswith(("https://", "http://")) or "\x00" in url:
        raise InvalidArgument(f"{name} must be an http(s) URL of at most {MAX_URL} characters")
    return url


def idempotency_key(*parts: str) -> str:
    """Stripe's Idempotency-Key for a call made of these parts: the same parts, the same key."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def observed_state(row: dict[str, Any]) -> str:
    """The subscription as we last recorded it, for the key of a call that changes it: a retry
    made from the same state (Stripe did it, but the answer was lost) is the same request and
    replays; a call made after any change since (a resume, a webhook) is a new one. A fixed
    key would make a cancel after a resume replay the first cancel and do nothing."""
    return "|".join(
        (row["status"], str(row["cancel_at_period_end"]), row["updated_at"].isoformat())
    )


def line_item(sku: Sku) -> dict[str, Any]:
    """The sku as one Checkout line: its Stripe price, else inline price data in its first
    currency (the webhook then checks the amount paid against the catalogue)."""
    if sku.stripe_price_id:
        return {"price": sku.stripe_price_id, "quantity": 1}
    price = sku.stripe_prices[0]
    price_data: dict[str, Any] = {
        "currency": price.currency,
        "unit_amount": price.amount,
        "product_data": {"name": sku.name.replace("_", " ").title()},
    }
    if sku.recurring:
        price_data["recurring"] = {"interval": "month"}
    return {"price_data": price_data, "quantity": 1}


def checkout_params(sku: Sku, buyer: Buyer, success_url: str, cancel_url: str) -> dict[str, Any]:
    """The Checkout Session's parameters, as Stripe's API reference names them."""
    metadata = {"user_id": buyer.user_id, "sku": sku.name}
    if buyer.telegram_user_id:
        metadata["telegram_user_id"] = str(buyer.telegram_user_id)
    params: dict[str, Any] = {
        "mode": "subscription" if sku.recurring else "payment",
        "line_items": [line_item(sku)],
        "client_reference_id": buyer.user_id,
        "metadata": metadata,
        "success_url": success_url,
    }
    if cancel_url:
        params["cancel_url"] = cancel_url
    # Every later event of this purchase (intent, charge, invoice) carries the buyer too.
    if sku.recurring:
        params["subscription_data"] = {"metadata": metadata}
    else:
        params["payment_intent_data"] = {"metadata": metadata}
    if buyer.stripe_customer_id:
        params["customer"] = buyer.stripe_customer_id
    elif not sku.recurring:
        # Stripe makes a customer (subscription mode always does); its events link it to the
        # buyer, so the next checkout and the portal find it.
        params["customer_creation"] = "always"
    return params


class Checkout:
    def __init__(
        self,
        *,
        store: Store,
        processor: Processor,
        catalogue: Catalogue,
        stripe_api: StripeApi,
        bot: BotApi,
        accounts: grpc.aio.Channel,
        success_url: str = "",
        cancel_url: str = "",
    ) -> None:
        self.store = store
        self.processor = processor
        self.catalogue = catalogue
        self.stripe = stripe_api
        self.bot = bot
        self._accounts = accounts_pb2_grpc.AccountsServiceStub(accounts)
        self._success_url = success_url
        self._cancel_url = cancel_url

    async def buyer(self, user_id: str, telegram_user_id: int) -> Buyer:
        if user_id:
            request = accounts_pb2.ResolveUserRequest(user_id=user_id)
        elif telegram_user_id > 0:
            request = accounts_pb2.ResolveUserRequest(
                telegram_user_id=telegram_user_id, create=True
            )
        else:
            raise InvalidArgument("give user_id or a positive telegram_user_id")
        try:
            reply = await self._accounts.ResolveUser(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"no user {user_id or telegram_user_id}") from None
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(error.details() or "bad user") from None
            raise Unavailable(f"accounts.ResolveUser: {error.code().name}") from None
        user = reply.user
        return Buyer(user.user_id, user.telegram_user_id, user.stripe_customer_id)

    def sku(self, name: str) -> Sku:
        if name not in self.catalogue.skus:
            raise InvalidArgument(f"unknown sku {name[:60]!r}")
        return self.catalogue.skus[name]

    async def create_checkout_session(
        self,
        *,
        user_id: str,
        telegram_user_id: int,
        sku_name: str,
        success_url: str,
        cancel_url: str,
        request_id: str,
    ) -> tuple[str, str]:
        sku = self.sku(sku_name)
        if not sku.stripe_prices:
            raise FailedPrecondition(f"{sku.name} is not sold by card")
        success = _url("success_url", success_url, self._success_url, required=True)
        cancel = _url("cancel_url", cancel_url, self._cancel_url, required=False)
        buyer = await self.buyer(user_id, telegram_user_id)
        params = checkout_params(sku, buyer, success, cancel)
        # A retry (the same request id, else the same minute) gets the session made first.
        attempt = request_id or f"minute:{int(time.time() // 60)}"
        key = idempotency_key("checkout", buyer.user_id, sku.name, success, cancel, attempt)
        session = await self.stripe.call(
            "checkout session",
            lambda: self.stripe.v1.checkout.sessions.create_async(params, {"idempotency_key": key}),
        )
        return str(session.url or ""), str(session.id)

    async def create_portal_session(self, user_id: str, return_url: str) -> str:
        buyer = await self.buyer(user_id, 0)
        if not buyer.stripe_customer_id:
            raise FailedPrecondition("this user has no Stripe customer yet (no card purchase)")
        params: dict[str, Any] = {"customer": buyer.stripe_customer_id}
        url = _url("return_url", return_url, self._success_url, required=False)
        if url:
            params["return_url"] = url
        portal = await self.stripe.call(
            "billing portal session",
            lambda: self.stripe.v1.billing_portal.sessions.create_async(params),
        )
        return str(portal.url)

    async def _owned(self, user_id: str, provider: str, subscription_id: str) -> dict[str, Any]:
        row = await self.store.get_subscription(provider, subscription_id)
        if row is None or not user_id or row["user_id"] != user_id:
            raise NotFound(f"no {provider} subscription {subscription_id[:80]!r} of this user")
        return row

    async def cancel(
        self, user_id: str, provider: str, subscription_id: str, *, at_period_end: bool
    ) -> dict[str, Any]:
        row = await self._owned(user_id, provider, subscription_id)
        if provider == "telegram":
            if not at_period_end:
                raise InvalidArgument("a Stars subscription can only end at its period end")
            return await self._edit_stars(row, canceled=True)
        if row["status"] in subscriptions.FINAL_STATUSES:
            raise FailedPrecondition(f"the subscription has already ended ({row['status']})")
        state = observed_state(row)
        if at_period_end:
            key = idempotency_key("cancel", subscription_id, "end", state)
            updated = await self.stripe.call(
                "subscription update",
                lambda: self.stripe.v1.subscriptions.update_async(
                    subscription_id, {"cancel_at_period_end": True}, {"idempotency_key": key}
                ),
            )
            return await self._record_subscription(updated, "customer.subscription.updated", key)
        key = idempotency_key("cancel", subscription_id, "now", state)
        canceled = await self.stripe.call(
            "subscription cancel",
            lambda: self.stripe.v1.subscriptions.cancel_async(
                subscription_id, None, {"idempotency_key": key}
            ),
        )
        return await self._record_subscription(canceled, "customer.subscription.deleted", key)

    async def resume(self, user_id: str, provider: str, subscription_id: str) -> dict[str, Any]:
        row = await self._owned(user_id, provider, subscription_id)
        if provider == "telegram":
            return await self._edit_stars(row, canceled=False)
        if row["status"] in subscriptions.FINAL_STATUSES:
            raise FailedPrecondition("an ended Stripe subscription cannot be resumed")
        key = idempotency_key("resume", subscription_id, observed_state(row))
        updated = await self.stripe.call(
            "subscription update",
            lambda: self.stripe.v1.subscriptions.update_async(
                subscription_id, {"cancel_at_period_end": False}, {"idempotency_key": key}
            ),
        )
        return await self._record_subscription(updated, "customer.subscription.updated", key)

    async def _record_subscription(
        self, subscription: Any, event_type: str, request_key: str
    ) -> dict[str, Any]:
        """What Stripe answered, applied now as the event it will also send: the caller sees
        the change at once, and the webhook, when it comes, changes nothing more. Keyed by the
        request too: a second cancel after a resume may get an answer identical to the first
        one's (the same second), and must still be recorded; a replayed retry is not."""
        obj: dict[str, Any] = subscription.last_response.data
        event_id = "paylayer_" + idempotency_key(
            event_type, request_key, json.dumps(obj, sort_keys=True)
        )
        event = {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": obj.get("livemode") is True,
            "data": {"object": obj},
        }
        return await self._apply_own("stripe", event_id, event_type, event, str(obj["id"]))

    async def _edit_stars(self, row: dict[str, Any], *, canceled: bool) -> dict[str, Any]:
        subscription_id = row["subscription_id"]
        charge = await self.store.latest_subscription_charge("telegram", subscription_id)
        telegram_user_id = int(subscription_id.split(":", 1)[0])
        if charge is None:
            raise FailedPrecondition("no payment of this Stars subscription is known")
        try:
            await self.bot.call(
                "editUserStarSubscription",
                user_id=telegram_user_id,
                telegram_payment_charge_id=charge,
                is_canceled=canceled,
            )
        except BotApiError as error:
            raise FailedPrecondition(str(error)) from None
        update = telegram_updates.subscription_update(
            telegram_user_id, row["sku"], "canceled" if canceled else "active", int(time.time())
        )
        # The state it was made from tells a cancel after a resume (the same second) apart.
        key = (
            telegram_updates.event_key(update, "subscription")
            + ":"
            + idempotency_key(observed_state(row))[:12]
        )
        return await self._apply_own("telegram", key, "subscription", update, subscription_id)

    async def _apply_own(
        self,
        provider: str,
        event_id: str,
        event_type: str,
        body: dict[str, Any],
        subscription_id: str,
    ) -> dict[str, Any]:
        event, _duplicate = await self.store.record(
            provider, event_id, event_type, json.dumps(body).encode()
        )
        await self.processor.process(event.id)
        after = await self.store.get_event(provider, event_id)
        if after is not None and after.status == "failed":
            raise FailedPrecondition(f"done at {provider}, but not applied here: {after.error}")
        row = await self.store.get_subscription(provider, subscription_id)
        if row is None:
            raise NotFound(f"no subscription {subscription_id}")
        return row

    async def refund_stripe(self, payment_key: str) -> None:
        """A full refund at Stripe; its charge.refunded webhook then revokes, as for any refund."""
        payment = await self.store.get_payment("stripe", payment_key)
        if payment is None:
            raise NotFound(f"no Stripe payment {payment_key[:80]!r}")
        target = await self.store.payment_of_invoice("stripe", payment_key) or payment_key
        if target.startswith("pi_"):
            params = {"payment_intent": target}
        elif target.startswith(("ch_", "py_")):
            params = {"charge": target}
        else:
            raise FailedPrecondition(
                "the payment that paid this invoice is not known yet; refund it by its intent"
            )
        # A retry before the refund's webhook is the same refund; after a refund recorded since
        # (a partial one from the dashboard), "refund the rest" is a new request.
        key = idempotency_key("refund", target, str(payment["amount_refunded"]))
        await self.stripe.call(
            "refund",
            lambda: self.stripe.v1.refunds.create_async(params, {"idempotency_key": key}),
        )

    async def reconcile_stripe(self, since: datetime) -> tuple[int, int]:
        """Page through all of Stripe's events since `since` (newest first, to the last page)
        and record the missing ones under their own ids, the webhook's key: a second run records
        nothing. There is no cap: Stripe lists only the last 30 days, and a run that stopped at
        a cap would see the same newest events again next time, never the older ones."""
        seen = recorded = 0
        params: dict[str, Any] = {"created": {"gte": int(since.timestamp())}, "limit": EVENTS_PAGE}
        while True:
            page = await self.stripe.call(
                "event list", lambda: self.stripe.v1.events.list_async(dict(params))
            )
            # The list as Stripe sent it: each event stored as its webhook body would be.
            raw = page.last_response.data if page.last_response is not None else {}
            events = [e for e in raw.get("data", []) if isinstance(e, dict)]
            for event in events:
                seen += 1
                _, duplicate = await self.store.record(
                    "stripe", str(event["id"]), str(event["type"]), json.dumps(event).encode()
                )
                if not duplicate:
                    recorded += 1
                    self.processor.kick()
            if not raw.get("has_more") or not events:
                return seen, recorded
            params["starting_after"] = events[-1]["id"]
