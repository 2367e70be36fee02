"""`paylayer events|payments|telegram ...`: the inbox, the ledger, and Telegram Stars."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from paylayer.cli import bot_webhook
from paylayer.cli.common import (
    UserError,
    add_json_flag,
    message_dict,
    print_json,
    print_table,
    run_rpc,
)
from paylayer.settings import Settings
from protos.payments.v1 import payments_pb2, payments_pb2_grpc

STATUSES = {
    "pending": payments_pb2.EVENT_STATUS_PENDING,
    "processed": payments_pb2.EVENT_STATUS_PROCESSED,
    "ignored": payments_pb2.EVENT_STATUS_IGNORED,
    "failed": payments_pb2.EVENT_STATUS_FAILED,
}


def _addr(settings: Settings) -> str:
    return settings.payments_addr


def _stub(channel: grpc.aio.Channel) -> payments_pb2_grpc.PaymentsServiceStub:
    return payments_pb2_grpc.PaymentsServiceStub(channel)


def _event_row(event: payments_pb2.Event) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "event_id": event.event_id,
        "type": event.event_type,
        "status": payments_pb2.EventStatus.Name(event.status).removeprefix("EVENT_STATUS_").lower(),
        "attempts": event.attempts,
        "received": event.received_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        "error": event.error[:60],
    }


def register(commands: argparse._SubParsersAction) -> None:
    events = commands.add_parser("events", help="the inbox of provider events").add_subparsers(
        dest="action", required=True
    )
    listing = events.add_parser("list", help="newest first")
    listing.add_argument("--status", choices=sorted(STATUSES))
    listing.add_argument("--type", default="", help="e.g. charge.refunded")
    listing.add_argument("--provider", choices=["stripe", "telegram"], default="")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--page-token", default="")
    add_json_flag(listing)
    listing.set_defaults(run=list_events)
    replay = events.add_parser(
        "replay", help="process a failed or ignored event again (or many: --status failed)"
    )
    replay.add_argument("event_id", nargs="?")
    replay.add_argument("--provider", choices=["stripe", "telegram"], default="")
    replay.add_argument("--status", choices=["failed", "ignored"], help="replay every such event")
    replay.add_argument("--type", default="", help="only events of this type")
    replay.add_argument("--since", help="only events received since: 3d, 12h, 30m")
    add_json_flag(replay)
    replay.set_defaults(run=replay_event)

    payments = commands.add_parser(
        "payments", help="the ledger: one row per purchase"
    ).add_subparsers(dest="action", required=True)
    ledger = payments.add_parser("list")
    ledger.add_argument("--user-id", default="")
    ledger.add_argument("--provider", choices=["stripe", "telegram"], default="")
    ledger.add_argument("--limit", type=int, default=50)
    add_json_flag(ledger)
    ledger.set_defaults(run=list_payments)

    telegram = commands.add_parser("telegram", help="Telegram Stars").add_subparsers(
        dest="action", required=True
    )
    reconcile = telegram.add_parser("reconcile", help="record paid Stars charges no update brought")
    add_json_flag(reconcile)
    reconcile.set_defaults(run=reconcile_telegram)
    invoice = telegram.add_parser("invoice", help="create an invoice link for a sku")
    invoice.add_argument("--user-id", required=True)
    invoice.add_argument("--sku", required=True)
    add_json_flag(invoice)
    invoice.set_defaults(run=create_invoice)
    refund = telegram.add_parser("refund", help="refund a Stars payment (and revoke its grant)")
    refund.add_argument("charge_id")
    add_json_flag(refund)
    refund.set_defaults(run=refund_payment)
    bot_webhook.register(telegram)


def list_events(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ListEvents(
            payments_pb2.ListEventsRequest(
                status=STATUSES.get(args.status or "", payments_pb2.EVENT_STATUS_UNSPECIFIED),
                event_type=args.type,
                provider=args.provider,
                page_size=args.limit,
                page_token=args.page_token,
            )
        )
        if args.json:
            print_json(message_dict(reply))
            return
        print_table(
            [_event_row(e) for e in reply.events],
            ("provider", "event_id", "type", "status", "attempts", "received", "error"),
        )
        if reply.next_page_token:
            print(f"\nmore: --page-token {reply.next_page_token}")

    return run_rpc(_addr, call)


def ago(text: str) -> Timestamp:
    """`3d`, `12h`, `30m` before now, as a timestamp."""
    found = re.fullmatch(r"(\d{1,5})([dhm])", text.strip())
    if found is None:
        raise UserError(f"give a duration like 3d, 12h or 30m, not {text!r}")
    seconds = int(found.group(1)) * {"d": 86400, "h": 3600, "m": 60}[found.group(2)]
    return Timestamp(seconds=int(time.time()) - seconds)


def replay_event(args: argparse.Namespace) -> int:
    if args.status:
        return replay_events(args)
    if not args.event_id:
        raise UserError("name an event to replay, or give --status failed to replay many")

    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ReplayEvent(
            payments_pb2.ReplayEventRequest(
                provider=args.provider or "stripe", event_id=args.event_id
            )
        )
        if args.json:
            print_json(message_dict(reply.event))
        else:
            row = _event_row(reply.event)
            print(
                f"{row['event_id']}: {row['status']}"
                + (f" ({reply.event.error})" if reply.event.error else "")
            )

    return run_rpc(_addr, call)


def list_payments(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ListPayments(
            payments_pb2.ListPaymentsRequest(
                user_id=args.user_id, provider=args.provider, page_size=args.limit
            )
        )
        if args.json:
            print_json(message_dict(reply))
            return
        rows = [
            {
                "provider": p.provider,
                "payment": p.payment_key,
                "user": p.user_id,
                "sku": p.sku,
                "status": p.status,
                "amount": f"{p.amount} {p.currency}",
                "refunded": p.amount_refunded,
            }
            for p in reply.payments
        ]
        print_table(rows, ("provider", "payment", "user", "sku", "status", "amount", "refunded"))

    return run_rpc(_addr, call)


def reconcile_telegram(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        # Paging through every transaction can take a while on a busy bot.
        reply = await _stub(channel).ReconcileTelegram(
            payments_pb2.ReconcileTelegramRequest(), timeout=120
        )
        if args.json:
            print_json(message_dict(reply))
        else:
            seen, recorded = reply.transactions_seen, reply.payments_recorded
            print(f"{seen} transactions seen, {recorded} payments recorded")

    return run_rpc(_addr, call)


def create_invoice(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).CreateInvoiceLink(
            payments_pb2.CreateInvoiceLinkRequest(user_id=args.user_id, sku=args.sku), timeout=15
        )
        if args.json:
            print_json(message_dict(reply))
        else:
            print(reply.url)

    return run_rpc(_addr, call)


def refund_payment(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).RefundPayment(
            payments_pb2.RefundPaymentRequest(provider="telegram", payment_key=args.charge_id),
            timeout=15,
        )
        if args.json:
            print_json(message_dict(reply.payment))
        else:
            print(f"{reply.payment.payment_key}: {reply.payment.status}")

    return run_rpc(_addr, call)


def replay_events(args: argparse.Namespace) -> int:
    since = ago(args.since) if args.since else None

    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ReplayEvents(
            payments_pb2.ReplayEventsRequest(
                status=STATUSES[args.status],
                event_type=args.type,
                provider=args.provider,
                since=since,
            ),
            timeout=60,
        )
        if args.json:
            print_json(message_dict(reply))
        else:
            print(f"{reply.replayed} events replayed")

    return run_rpc(_addr, call)


def register_checkout(commands: argparse._SubParsersAction) -> None:
    """`paylayer checkout|subscriptions|stripe …`: selling by card, subscriptions, backfill."""
    checkout = commands.add_parser("checkout", help="make a payment link").add_subparsers(
        dest="provider", required=True
    )
    stripe_link = checkout.add_parser("stripe", help="a Stripe Checkout link for a sku")
    buyer = stripe_link.add_mutually_exclusive_group(required=True)
    buyer.add_argument("--telegram-user", type=int)
    buyer.add_argument("--user-id")
    stripe_link.add_argument("--sku", required=True)
    stripe_link.add_argument("--success-url", default="")
    stripe_link.add_argument("--cancel-url", default="")
    add_json_flag(stripe_link)
    stripe_link.set_defaults(run=checkout_stripe)

    subscriptions = commands.add_parser(
        "subscriptions", help="Stripe and Stars subscriptions"
    ).add_subparsers(dest="action", required=True)
    listing = subscriptions.add_parser("list")
    listing.add_argument("--user-id", default="")
    listing.add_argument("--provider", choices=["stripe", "telegram"], default="")
    listing.add_argument("--limit", type=int, default=50)
    add_json_flag(listing)
    listing.set_defaults(run=list_subscriptions)
    for action, text in (("cancel", "cancel at the period end (or --now)"), ("resume", "undo")):
        command = subscriptions.add_parser(action, help=text)
        command.add_argument("subscription_id")
        command.add_argument("--user-id", required=True)
        command.add_argument("--provider", choices=["stripe", "telegram"], default="stripe")
        if action == "cancel":
            command.add_argument("--now", action="store_true", help="end access now (Stripe)")
        add_json_flag(command)
        command.set_defaults(run=change_subscription, action=action)

    stripe = commands.add_parser("stripe", help="Stripe").add_subparsers(
        dest="action", required=True
    )
    reconcile = stripe.add_parser("reconcile", help="record Stripe events the webhooks lost")
    reconcile.add_argument("--since", default="3d", help="how far back: 3d, 12h (Stripe: 30d)")
    add_json_flag(reconcile)
    reconcile.set_defaults(run=reconcile_stripe)


def checkout_stripe(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).CreateCheckoutSession(
            payments_pb2.CreateCheckoutSessionRequest(
                user_id=args.user_id or "",
                telegram_user_id=args.telegram_user or 0,
                sku=args.sku,
                success_url=args.success_url,
                cancel_url=args.cancel_url,
            ),
            timeout=30,
        )
        if args.json:
            print_json(message_dict(reply))
        else:
            print(reply.url)

    return run_rpc(_addr, call)


def _subscription_row(subscription: payments_pb2.Subscription) -> dict[str, Any]:
    end = subscription.current_period_end
    return {
        "provider": subscription.provider,
        "subscription": subscription.subscription_id,
        "user": subscription.user_id,
        "sku": subscription.sku,
        "status": subscription.status,
        "period_end": end.ToDatetime().strftime("%Y-%m-%d %H:%M") if end.seconds else "",
        "cancels": "at period end" if subscription.cancel_at_period_end else "",
    }


_SUBSCRIPTION_COLUMNS = ("provider", "subscription", "user", "sku", "status", "period_end")


def list_subscriptions(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ListSubscriptions(
            payments_pb2.ListSubscriptionsRequest(
                user_id=args.user_id, provider=args.provider, page_size=args.limit
            )
        )
        if args.json:
            print_json(message_dict(reply))
            return
        rows = [_subscription_row(s) for s in reply.subscriptions]
        print_table(rows, (*_SUBSCRIPTION_COLUMNS, "cancels"))

    return run_rpc(_addr, call)


def change_subscription(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        stub = _stub(channel)
        if args.action == "cancel":
            reply: Any = await stub.CancelSubscription(
                payments_pb2.CancelSubscriptionRequest(
                    user_id=args.user_id,
                    provider=args.provider,
                    subscription_id=args.subscription_id,
                    at_period_end=not args.now,
                ),
                timeout=30,
            )
        else:
            reply = await stub.ResumeSubscription(
                payments_pb2.ResumeSubscriptionRequest(
                    user_id=args.user_id,
                    provider=args.provider,
                    subscription_id=args.subscription_id,
                ),
                timeout=30,
            )
        if args.json:
            print_json(message_dict(reply.subscription))
        else:
            print_table(
                [_subscription_row(reply.subscription)], (*_SUBSCRIPTION_COLUMNS, "cancels")
            )

    return run_rpc(_addr, call)


def reconcile_stripe(args: argparse.Namespace) -> int:
    since = ago(args.since)

    async def call(channel: grpc.aio.Channel) -> None:
        # Paging through a month of events can take a while.
        reply = await _stub(channel).ReconcileStripe(
            payments_pb2.ReconcileStripeRequest(since=since), timeout=300
        )
        if args.json:
            print_json(message_dict(reply))
        else:
            print(f"{reply.events_seen} events seen, {reply.events_recorded} recorded")

    return run_rpc(_addr, call)
