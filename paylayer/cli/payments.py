"""`paylayer events|payments|telegram ...`: the inbox, the ledger, and Telegram Stars."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from paylayer.cli.common import (
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
    replay = events.add_parser("replay", help="process a failed or ignored event again")
    replay.add_argument("event_id")
    replay.add_argument("--provider", choices=["stripe", "telegram"], default="stripe")
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


def replay_event(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ReplayEvent(
            payments_pb2.ReplayEventRequest(provider=args.provider, event_id=args.event_id)
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
