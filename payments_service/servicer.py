"""gRPC adapter of the payments service: proto in, inbox and processor calls, proto out."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import grpc

from paylayer import validation
from paylayer.callers import caller_var
from paylayer.catalogue import Catalogue
from paylayer.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from paylayer.logs import REQUEST_ID_HEADER
from payments_service import outbox, telegram_updates, wire
from payments_service.bot_api import BotApi
from payments_service.channels import ChannelAccess
from payments_service.checkout import Checkout
from payments_service.metrics import EVENTS_DUPLICATE, EVENTS_RECEIVED
from payments_service.overview import overview
from payments_service.processor import Processor
from payments_service.reconcile import reconcile_telegram
from payments_service.refunds import Refunds
from payments_service.store import Event, Store
from payments_service.tables import MESSAGE_STATUSES
from payments_service.wire import (
    event_message,
    outbox_message,
    payment_message,
    subscription_message,
)
from protos.payments.v1 import payments_pb2, payments_pb2_grpc

log = logging.getLogger(__name__)

# Short names for the conversions and checks the RPC bodies below use.
_STATUS_BY_ENUM = wire.STATUS_BY_ENUM
_json_object = wire.json_object
_text = validation.text
_provider = validation.provider
_page_size = wire.page_size
_page_token = wire.page_token
_since = wire.since
MAX_OVERVIEW_HOURS = 168
MAX_OVERVIEW_DAYS = 366


def _replayed_by(requested_by: str) -> str:
    """The caller's name from its credential, and the person it names beside it, never instead."""
    person = _text("requested_by", requested_by.strip())
    return f"{caller_var.get()} for {person}" if person else caller_var.get()


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
            received_since=_since(request.received_since, required=False),
            received_before=_since(request.received_before, required=False),
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
            request.provider, request.event_id, replayed_by=_replayed_by(request.requested_by)
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
            payment_key=_text("payment_key", request.payment_key),
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
        log.info(
            "refund of %s:%s asked by %s%s: %s",
            _provider(request.provider, required=True),
            _text("payment_key", request.payment_key, required=True),
            caller_var.get(),
            f" ({_text('requested_by', request.requested_by)})" if request.requested_by else "",
            validation.free_text("reason", request.reason) or "no reason given",
        )
        payment = await Refunds(self.store, self.processor, self.bot, lambda: self.checkout).refund(
            _provider(request.provider, required=True),
            _text("payment_key", request.payment_key, required=True),
        )
        return payments_pb2.RefundPaymentResponse(payment=payment_message(payment))

    async def ReconcileTelegram(
        self, request: payments_pb2.ReconcileTelegramRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReconcileTelegramResponse:
        reconciled = await reconcile_telegram(self.store, self.bot)
        return payments_pb2.ReconcileTelegramResponse(
            transactions_seen=reconciled.transactions_seen,
            payments_recorded=reconciled.payments_recorded,
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
            replayed_by=_replayed_by(request.requested_by),
        )
        if replayed:
            self.processor.kick()
        return payments_pb2.ReplayEventsResponse(replayed=len(replayed))

    async def ListMessages(
        self, request: payments_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListMessagesResponse:
        if request.status and request.status not in MESSAGE_STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(MESSAGE_STATUSES)}")
        limit = _page_size(request.page_size)
        rows = await outbox.list_messages(
            self.store.engine,
            user_id=_text("user_id", request.user_id),
            status=request.status,
            limit=limit,
            before_id=_page_token(request.page_token),
        )
        return payments_pb2.ListMessagesResponse(
            messages=[outbox_message(row) for row in rows],
            next_page_token=str(rows[-1]["id"]) if len(rows) == limit else "",
        )

    async def RetryMessage(
        self, request: payments_pb2.RetryMessageRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.RetryMessageResponse:
        if request.message_id <= 0:
            raise InvalidArgument("message_id is required")
        row = await outbox.retry_message(self.store.engine, request.message_id)
        if row is None:
            existing = await outbox.list_messages(
                self.store.engine, user_id="", status="", limit=1, before_id=request.message_id + 1
            )
            if not existing or existing[0]["id"] != request.message_id:
                raise NotFound(f"no message {request.message_id}")
            raise FailedPrecondition(
                f"message is {existing[0]['status']}; only "
                f"{', '.join(outbox.RETRYABLE_STATUSES)} messages are retried"
            )
        log.info("message %d put back to be sent by %s", row["id"], caller_var.get())
        return payments_pb2.RetryMessageResponse(message=outbox_message(row))

    async def GetEvent(
        self, request: payments_pb2.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetEventResponse:
        provider = _provider(request.provider, required=True)
        event_id = _text("event_id", request.event_id, required=True)
        event = await self.store.get_event(provider, event_id)
        if event is None:
            raise NotFound(f"no event {provider}:{request.event_id}")
        return payments_pb2.GetEventResponse(
            event=event_message(event), payload=event.payload, replayed_by=event.replayed_by or ""
        )

    async def GetOverview(
        self, request: payments_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetOverviewResponse:
        if not 0 <= request.hours <= MAX_OVERVIEW_HOURS:
            raise InvalidArgument(f"hours must be between 0 and {MAX_OVERVIEW_HOURS}")
        if not 0 <= request.days <= MAX_OVERVIEW_DAYS:
            raise InvalidArgument(f"days must be between 0 and {MAX_OVERVIEW_DAYS}")
        figures = await overview(
            self.store.engine,
            now=datetime.now(UTC),
            hours=request.hours or 24,
            days=request.days or 30,
        )
        return payments_pb2.GetOverviewResponse(
            events_per_hour=[
                payments_pb2.HourlyEventCount(
                    hour=wire.to_proto_time(hour), status=wire.STATUS_NAMES[status], count=count
                )
                for hour, status, count in figures.events_per_hour
            ],
            failed_events=figures.failed_events,
            pending_events=figures.pending_events,
            oldest_pending_received_at=wire.to_proto_time(figures.oldest_pending_received_at),
            revenue_per_day=[
                payments_pb2.DailyRevenue(
                    day=wire.to_proto_time(day),
                    provider=provider,
                    currency=currency,
                    amount=amount,
                    payments=count,
                )
                for day, provider, currency, amount, count in figures.revenue_per_day
            ],
        )

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
        if not 0 <= request.audit_limit <= wire.MAX_PAGE_SIZE:
            raise InvalidArgument(f"audit_limit must be 0-{wire.MAX_PAGE_SIZE}")
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
                at=wire.to_proto_time(row["at"]),
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
