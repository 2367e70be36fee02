"""`paylayer messages list|retry`: the outbox of messages to users (receipts, notices,
reminders)."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from paylayer.cli.common import add_json_flag, message_dict, print_json, print_table, run_rpc
from paylayer.settings import Settings
from protos.payments.v1 import payments_pb2, payments_pb2_grpc

STATUSES = (
    "pending",
    "sending",
    "sent",
    "failed",
    "unknown",
    "unreachable",
    "superseded",
    "no_chat",
)


def _addr(settings: Settings) -> str:
    return settings.payments_addr


def _stub(channel: grpc.aio.Channel) -> payments_pb2_grpc.PaymentsServiceStub:
    return payments_pb2_grpc.PaymentsServiceStub(channel)


def _when(stamp: Any) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if stamp.seconds else ""


def _row(message: payments_pb2.OutboxMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "kind": message.kind,
        "user": message.user_id,
        "chat": message.telegram_user_id or "",
        "status": message.status,
        "attempts": message.attempts,
        "due": _when(message.due_at),
        "sent": _when(message.sent_at),
        "error": message.error[:60],
    }


COLUMNS = ("id", "kind", "user", "chat", "status", "attempts", "due", "sent", "error")


def register(commands: argparse._SubParsersAction) -> None:
    messages = commands.add_parser(
        "messages", help="messages to users: receipts, notices, reminders"
    ).add_subparsers(dest="action", required=True)
    listing = messages.add_parser("list", help="newest first")
    listing.add_argument("--user-id", default="")
    listing.add_argument("--status", choices=STATUSES, default="")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--page-token", default="")
    add_json_flag(listing)
    listing.set_defaults(run=list_messages)
    retry = messages.add_parser(
        "retry", help="send a failed, unknown, unreachable or no_chat message again"
    )
    retry.add_argument("message_id", type=int)
    add_json_flag(retry)
    retry.set_defaults(run=retry_message)


def list_messages(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).ListMessages(
            payments_pb2.ListMessagesRequest(
                user_id=args.user_id,
                status=args.status,
                page_size=args.limit,
                page_token=args.page_token,
            )
        )
        if args.json:
            print_json(message_dict(reply))
            return
        print_table([_row(m) for m in reply.messages], COLUMNS)
        if reply.next_page_token:
            print(f"\nmore: --page-token {reply.next_page_token}")

    return run_rpc(_addr, call)


def retry_message(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await _stub(channel).RetryMessage(
            payments_pb2.RetryMessageRequest(message_id=args.message_id)
        )
        if args.json:
            print_json(message_dict(reply.message))
        else:
            print(f"message {reply.message.id}: {reply.message.status}, due now")

    return run_rpc(_addr, call)
