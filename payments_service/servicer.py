"""gRPC adapter of the payments service: proto in, inbox and processor calls, proto out."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from paylayer.callers import caller_var
from paylayer.catalogue import Catalogue
from paylayer.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from paylayer.logs import REQUEST_ID_HEADER
from payments_service import telegram_updates
from payments_service.bot_api import BotApi
from payments_service.channels import ChannelAccess
from payments_service.checkout import Checkout
from payments_service.metrics import EVENTS_DUPLICATE, EVENTS_RECEIVED
from payments_service.processor import Processor
from payments_service.store import Event, Store
from protos.payments.v1 import payments_pb2, payments_pb2_grpc

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
_STATUS_NAMES = {
    "pending": payments_pb2.EVENT_STATUS_PENDING,
    "processed": payments_pb2.EVENT_STATUS_PROCESSED,
    "ignored": payments_pb2.EVENT_STATUS_IGNORED,
    "failed": payments_pb2.EVENT_STATUS_FAILED,
}
_STATUS_BY_ENUM = {value: name for name, value in _STATUS_NAMES.items()}


def _stamp(value: datetime | None) -> Timestamp | None:
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
        status=_STATUS_NAMES[event.status],
        error=event.error,
        attempts=event.attempts,
        received_at=_stamp(event.received_at),
        processed_at=_stamp(event.processed_at),
        next_attempt_at=_stamp(event.next_attempt_at) if event.status == "pending" else None,
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
        created_at=_stamp(row["created_at"]),
        updated_at=_stamp(row["updated_at"]),
    )


def subscription_message(row: dict[str, Any]) -> payments_pb2.Subscription:
    return payments_pb2.Subscription(
        provider=row["provider"],
        subscription_id=row["subscription_id"],
        user_id=row["user_id"] or "",
        sku=row["sku"],
        status=row["status"],
        current_period_start=_stamp(row["current_period_start"]),
        current_period_end=_stamp(row["current_period_end"]),
        cancel_at_period_end=row["cancel_at_period_end"],
        canceled_at=_stamp(row["canceled_at"]),
        ended_at=_stamp(row["ended_at"]),
    )


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidArgument(f"{what} is not JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return parsed


PROVIDERS = ("stripe", "telegram")
MAX_TEXT = 255


def _text(name: str, value: str, *, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument(f"{name} is required")
    if "\x00" in value:
        raise InvalidArgument(f"{name} holds a NUL character")
    if len(value) > MAX_TEXT:
        raise InvalidArgument(f"{name} is longer than {MAX_TEXT} characters")
    return value


def _provider(value: str, *, required: bool = False) -> str:
    if (value or required) and value not in PROVIDERS:
        raise InvalidArgument(f"provider must be one of {', '.join(PROVIDERS)}")
    return value


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or 50, MAX_PAGE_SIZE)


def _page_token(token: str) -> int | None:
    if not token:
        return None
    if not (token.isascii() and token.isdigit() and len(token) <= 18):
        raise InvalidArgument("page_token is not one this service gave")
    return int(token)


def _since(stamp: Timestamp, *, required: bool) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        if required:
            raise InvalidArgument("since is required")
        return None
    if not 0 < stamp.seconds < 253_402_300_799:
        raise InvalidArgument("since is out of range")
    return stamp.ToDatetime(tzinfo=UTC)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's own request id, when it sent one: a retry with it is the same request."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return value[:200]
    return ""


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    def __init__(
        self,
        store: Store,
        processor: Processor,
        catalogue: Catalogue,
        bot: BotApi,
        checkout: Checkout | None = None,
        channels: ChannelAccess | None = None,
    ) -> None:
        self.channels = channels
        self.store = store
        self.processor = processor
        self.catalogue = catalogue
        self.bot = bot
        self._checkout = checkout

    @property
    def checkout(self) -> Checkout:
        if self._checkout is None:
            raise FailedPrecondition("Stripe calls are not configured in this process")
        return self._checkout

    def _count(self, recorded: Event, duplicate: bool) -> None:
        """Metrics for a delivery, and a new event goes straight to the processor."""
        if duplicate:
            EVENTS_DUPLICATE.labels(recorded.provider).inc()
            return
        EVENTS_RECEIVED.labels(recorded.provider, recorded.event_type).inc()
        self.processor.kick()

    async def HandleStripeEvent(
        self, request: payments_pb2.HandleStripeEventRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.HandleEventResponse:
        event = _json_object(request.payload, "payload")
        event_id, event_type = event.get("id"), event.get("type")
        if not (
            isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type
        ):
            raise InvalidArgument("a Stripe event needs a string id and type")
        if not all(
            len(v) <= 255 and v.isascii() and v.isprintable() for v in (event_id, event_type)
        ):
            raise InvalidArgument(
                "event id and type must be printable ASCII, at most 255 characters"
            )
        recorded, duplicate = await self.store.record(
            "stripe", event_id, event_type, request.payload
        )
        self._count(recorded, duplicate)
        return payments_pb2.HandleEventResponse(event=event_message(recorded), duplicate=duplicate)

    async def HandleTelegramUpdate(
        self, request: payments_pb2.HandleTelegramUpdateRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.HandleTelegramUpdateResponse:
        update = _json_object(request.payload, "payload")
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise InvalidArgument("a Telegram update needs an integer update_id")
        kind = telegram_updates.update_kind(update)
        if kind is None:
            return payments_pb2.HandleTelegramUpdateResponse()
        if kind == "pre_checkout_query":
            query = update["pre_checkout_query"]
            query_id = query.get("id")
            if not isinstance(query_id, str) or not query_id:
                raise InvalidArgument("pre_checkout_query needs an id")
            verdict = telegram_updates.pre_checkout(self.catalogue, query)
            # Answered from the catalogue alone, nothing stored: a query changes nothing, and
            # the buyer is waiting on this answer (Telegram allows 10 s; we aim for < 50 ms).
            if not verdict.ok:
                log.info("pre-checkout refused: %s", verdict.error_message)
            return payments_pb2.HandleTelegramUpdateResponse(
                pre_checkout=payments_pb2.PreCheckoutAnswer(
                    pre_checkout_query_id=query_id,
                    ok=verdict.ok,
                    error_message=verdict.error_message,
                ),
            )
        recorded, duplicate = await self.store.record(
            "telegram", telegram_updates.event_key(update, kind), kind, request.payload
        )
        self._count(recorded, duplicate)
        return payments_pb2.HandleTelegramUpdateResponse(
            event=event_message(recorded), duplicate=duplicate
        )

    async def ListEvents(
        self, request: payments_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListEventsResponse:
        if (
            request.status not in _STATUS_BY_ENUM
            and request.status != payments_pb2.EVENT_STATUS_UNSPECIFIED
        ):
            raise InvalidArgument("unknown status")
        limit = _page_size(request.page_size)
        events = await self.store.list_events(
            status=_STATUS_BY_ENUM.get(request.status, ""),
            event_type=_text("event_type", request.event_type),
            provider=_provider(request.provider),
            limit=limit,
            before_id=_page_token(request.page_token),
        )
        return payments_pb2.ListEventsResponse(
            events=[event_message(e) for e in events],
            next_page_token=str(events[-1].id) if len(events) == limit else "",
        )

    async def ReplayEvent(
        self, request: payments_pb2.ReplayEventRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReplayEventResponse:
        _provider(request.provider, required=True)
        _text("event_id", request.event_id, required=True)
        replayed = await self.store.replay(
            request.provider, request.event_id, replayed_by=caller_var.get()
        )
        if replayed is None:
            existing = await self.store.get_event(request.provider, request.event_id)
            if existing is None:
                raise NotFound(f"no event {request.provider}:{request.event_id}")
            raise FailedPrecondition(
                f"event is {existing.status}; only failed or ignored events replay"
            )
        await self.processor.process(replayed.id)
        after = await self.store.get_event(request.provider, request.event_id)
        return payments_pb2.ReplayEventResponse(event=event_message(after or replayed))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListPaymentsResponse:
        limit = _page_size(request.page_size)
        rows = await self.store.list_payments(
            user_id=_text("user_id", request.user_id),
            provider=_provider(request.provider),
            limit=limit,
            before_seq=_page_token(request.page_token),
        )
        return payments_pb2.ListPaymentsResponse(
            payments=[payment_message(row) for row in rows],
            next_page_token=str(rows[-1]["seq"]) if len(rows) == limit else "",
        )

    async def CreateInvoiceLink(
        self, request: payments_pb2.CreateInvoiceLinkRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreateInvoiceLinkResponse:
        _text("user_id", request.user_id, required=True)
        if request.sku not in self.catalogue.skus:
            raise InvalidArgument(f"unknown sku {_text('sku', request.sku)!r}")
        url, payload = await self.bot.create_invoice_link(
            self.catalogue.skus[request.sku], request.user_id
        )
        return payments_pb2.CreateInvoiceLinkResponse(url=url, payload=payload)

    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.RefundPaymentResponse:
        _provider(request.provider, required=True)
        _text("payment_key", request.payment_key, required=True)
        if request.provider == "stripe":
            # The refund's charge.refunded webhook revokes, as for a refund made in Stripe.
            await self.checkout.refund_stripe(request.payment_key)
            refunded = await self.store.get_payment("stripe", request.payment_key)
            if refunded is None:
                raise NotFound(f"no payment {request.payment_key}")
            return payments_pb2.RefundPaymentResponse(payment=payment_message(refunded))
        purchase = await self.store.telegram_purchase(request.payment_key)
        if purchase is None or not isinstance(purchase.get("telegram_user_id"), int):
            raise NotFound(f"no Stars payment {request.payment_key}")
        await self.bot.refund_star_payment(purchase["telegram_user_id"], request.payment_key)
        # The revoke goes through the inbox like Telegram's own refunded_payment would, so the
        # two together still take effect once.
        refund = telegram_updates.refund_update(
            request.payment_key,
            str(purchase.get("invoice_payload", "")),
            int(purchase.get("total_amount") or 0),
        )
        event, _ = await self.store.record(
            "telegram",
            telegram_updates.event_key(refund, "refunded_payment"),
            "refunded_payment",
            json.dumps(refund).encode(),
        )
        await self.processor.process(event.id)
        payment = await self.store.get_payment(request.provider, request.payment_key)
        if payment is None:
            raise NotFound(f"no payment {request.payment_key}")
        return payments_pb2.RefundPaymentResponse(payment=payment_message(payment))

    async def ReconcileTelegram(
        self, request: payments_pb2.ReconcileTelegramRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReconcileTelegramResponse:
        transactions = await self.bot.star_transactions()
        recorded = 0
        for transaction in transactions:
            update = telegram_updates.update_from_transaction(transaction)
            if update is None:
                continue
            charge_id = update["message"]["successful_payment"]["telegram_payment_charge_id"]
            if await self.store.has_payment("telegram", charge_id):
                continue
            event, duplicate = await self.store.record(
                "telegram",
                telegram_updates.event_key(update, "successful_payment"),
                "successful_payment",
                json.dumps(update).encode(),
            )
            if not duplicate:
                recorded += 1
                await self.processor.process(event.id)
        return payments_pb2.ReconcileTelegramResponse(
            transactions_seen=len(transactions), payments_recorded=recorded
        )

    async def CreateCheckoutSession(
        self,
        request: payments_pb2.CreateCheckoutSessionRequest,
        context: grpc.aio.ServicerContext,
    ) -> payments_pb2.CreateCheckoutSessionResponse:
        url, session_id = await self.checkout.create_checkout_session(
            user_id=_text("user_id", request.user_id),
            telegram_user_id=request.telegram_user_id,
            sku_name=_text("sku", request.sku, required=True),
            success_url=request.success_url,
            cancel_url=request.cancel_url,
            request_id=_request_id(context),
        )
        return payments_pb2.CreateCheckoutSessionResponse(url=url, session_id=session_id)

    async def CreatePortalSession(
        self, request: payments_pb2.CreatePortalSessionRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreatePortalSessionResponse:
        url = await self.checkout.create_portal_session(
            _text("user_id", request.user_id, required=True), request.return_url
        )
        return payments_pb2.CreatePortalSessionResponse(url=url)

    async def CancelSubscription(
        self, request: payments_pb2.CancelSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CancelSubscriptionResponse:
        row = await self.checkout.cancel(
            _text("user_id", request.user_id, required=True),
            _provider(request.provider, required=True),
            _text("subscription_id", request.subscription_id, required=True),
            at_period_end=request.at_period_end,
        )
        return payments_pb2.CancelSubscriptionResponse(subscription=subscription_message(row))

    async def ResumeSubscription(
        self, request: payments_pb2.ResumeSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ResumeSubscriptionResponse:
        row = await self.checkout.resume(
            _text("user_id", request.user_id, required=True),
            _provider(request.provider, required=True),
            _text("subscription_id", request.subscription_id, required=True),
        )
        return payments_pb2.ResumeSubscriptionResponse(subscription=subscription_message(row))

    async def GetSubscription(
        self, request: payments_pb2.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetSubscriptionResponse:
        provider = _provider(request.provider, required=True)
        subscription_id = _text("subscription_id", request.subscription_id, required=True)
        row = await self.store.get_subscription(provider, subscription_id)
        if row is None:
            raise NotFound(f"no {provider} subscription {subscription_id!r}")
        return payments_pb2.GetSubscriptionResponse(subscription=subscription_message(row))

    async def ListSubscriptions(
        self, request: payments_pb2.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListSubscriptionsResponse:
        limit = _page_size(request.page_size)
        offset = _page_token(request.page_token) or 0
        rows = await self.store.list_subscriptions(
            user_id=_text("user_id", request.user_id),
            provider=_provider(request.provider),
            limit=limit,
            offset=offset,
        )
        return payments_pb2.ListSubscriptionsResponse(
            subscriptions=[subscription_message(row) for row in rows],
            next_page_token=str(offset + limit) if len(rows) == limit else "",
        )

    async def ReconcileStripe(
        self, request: payments_pb2.ReconcileStripeRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReconcileStripeResponse:
        since = _since(request.since, required=True)
        assert since is not None
        seen, recorded = await self.checkout.reconcile_stripe(since)
        return payments_pb2.ReconcileStripeResponse(events_seen=seen, events_recorded=recorded)

    async def ReplayEvents(
        self, request: payments_pb2.ReplayEventsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReplayEventsResponse:
        status = _STATUS_BY_ENUM.get(request.status)
        if status not in ("failed", "ignored"):
            raise InvalidArgument("status must be failed or ignored")
        replayed = await self.store.replay_many(
            status=status,
            event_type=_text("event_type", request.event_type),
            provider=_provider(request.provider),
            since=_since(request.since, required=False),
            replayed_by=caller_var.get(),
        )
        if replayed:
            self.processor.kick()
        return payments_pb2.ReplayEventsResponse(replayed=len(replayed))

    # --- channel access ------------------------------------------------------------------------

    @property
    def channel_access(self) -> ChannelAccess:
        if self.channels is None or not self.channels.enabled:
            raise FailedPrecondition("the catalogue lists no chats (tiers: {vip: {chats: [...]}})")
        return self.channels

    async def GetChannelStatus(
        self, request: payments_pb2.GetChannelStatusRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetChannelStatusResponse:
        channels = self.channel_access
        if request.chat_id and request.chat_id not in self.catalogue.chats:
            raise NotFound(f"chat {request.chat_id} is not in the catalogue")
        if not 0 <= request.audit_limit <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"audit_limit must be 0-{MAX_PAGE_SIZE}")
        counts = await channels.store.counts()
        reply = payments_pb2.GetChannelStatusResponse()
        for chat_id in sorted(self.catalogue.chats):
            if request.chat_id and chat_id != request.chat_id:
                continue
            known = counts.get(chat_id, {})
            reply.chats.add(
                chat_id=chat_id,
                tiers=sorted(
                    tier
                    for tier in self.catalogue.tier_closure
                    if chat_id in self.catalogue.chats_of(tier)
                ),
                members=known.get("member", 0) + known.get("restricted", 0),
                admins=known.get("creator", 0) + known.get("administrator", 0),
                left=known.get("left", 0) + known.get("kicked", 0),
            )
        rows = await channels.store.audit_rows(
            chat_id=request.chat_id or None,
            telegram_user_id=request.telegram_user_id or None,
            limit=request.audit_limit or 20,
        )
        for row in rows:
            reply.audit.add(
                chat_id=row["chat_id"],
                telegram_user_id=row["telegram_user_id"],
                user_id=row["user_id"] or "",
                action=row["action"],
                reason=row["reason"],
                at=_stamp(row["at"]),
            )
        return reply

    async def ReconcileChannels(
        self, request: payments_pb2.ReconcileChannelsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReconcileChannelsResponse:
        channels = self.channel_access
        report = await channels.reconcile()
        # Another replica's pass holds the lock: wait for it (while the caller waits), then
        # run one of our own.
        while not report.ran and (context.time_remaining() or 0) > 1:
            await asyncio.sleep(0.2)
            report = await channels.reconcile()
        if not report.ran:
            raise Unavailable("another reconcile is still running; try again")
        return payments_pb2.ReconcileChannelsResponse(
            members_checked=report.members_checked,
            removed=report.removed,
            kept_admins=report.kept_admins,
            bot_api_calls=report.bot_api_calls,
            seconds=report.seconds,
            errors=report.errors[:50],
        )

    async def CreateInviteLinks(
        self, request: payments_pb2.CreateInviteLinksRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreateInviteLinksResponse:
        channels = self.channel_access
        user_id = _text("user_id", request.user_id, required=True)
        reply = payments_pb2.CreateInviteLinksResponse()
        seen: set[int] = set()
        # The widest tiers first, so a chat is named after the tier that gives the most.
        tiers = sorted(
            (t for t in self.catalogue.tier_closure if self.catalogue.chats_of(t)),
            key=lambda t: (-len(self.catalogue.tier_closure[t]), t),
        )
        for tier in tiers:
            if not await channels.is_entitled(user_id, tier):
                continue
            for chat_id, link in sorted((await channels.invite_links_for(user_id, tier)).items()):
                if chat_id not in seen:
                    seen.add(chat_id)
                    reply.links.add(chat_id=chat_id, invite_link=link, tier=tier)
        return reply
