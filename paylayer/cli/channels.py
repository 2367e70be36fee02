"""`paylayer channels status|reconcile`: who is in the paid chats, and a reconcile pass now."""

from __future__ import annotations

import argparse

import grpc

from paylayer.cli.common import add_json_flag, message_dict, print_json, print_table, run_rpc
from paylayer.settings import Settings
from protos.payments.v1 import payments_pb2, payments_pb2_grpc


def _addr(settings: Settings) -> str:
    return settings.payments_addr


def register(commands: argparse._SubParsersAction) -> None:
    channels = commands.add_parser(
        "channels", help="the paid Telegram chats: members known, removals, reconcile"
    ).add_subparsers(dest="action", required=True)
    status = channels.add_parser("status", help="members known per chat, newest decisions")
    status.add_argument("--chat-id", type=int, default=0)
    status.add_argument("--telegram-user-id", type=int, default=0, help="only this user's audit")
    status.add_argument("--limit", type=int, default=20, help="audit rows shown")
    add_json_flag(status)
    status.set_defaults(run=channel_status)
    reconcile = channels.add_parser(
        "reconcile", help="remove now every known member who is not entitled"
    )
    add_json_flag(reconcile)
    reconcile.set_defaults(run=reconcile_channels)


def channel_status(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).GetChannelStatus(
            payments_pb2.GetChannelStatusRequest(
                chat_id=args.chat_id,
                telegram_user_id=args.telegram_user_id,
                audit_limit=args.limit,
            ),
            timeout=10,
        )
        if args.json:
            print_json(message_dict(reply))
            return
        print_table(
            [
                {
                    "chat": chat.chat_id,
                    "tiers": ",".join(chat.tiers),
                    "members": chat.members,
                    "admins": chat.admins,
                    "left": chat.left,
                }
                for chat in reply.chats
            ],
            ("chat", "tiers", "members", "admins", "left"),
        )
        print()
        print_table(
            [
                {
                    "at": entry.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                    "chat": entry.chat_id,
                    "telegram_user": entry.telegram_user_id,
                    "action": entry.action,
                    "reason": entry.reason[:60],
                }
                for entry in reply.audit
            ],
            ("at", "chat", "telegram_user", "action", "reason"),
        )

    return run_rpc(_addr, call)


def reconcile_channels(args: argparse.Namespace) -> int:
    async def call(channel: grpc.aio.Channel) -> None:
        # Rate limits pace the Bot API calls: a pass over a large chat takes a while.
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).ReconcileChannels(
            payments_pb2.ReconcileChannelsRequest(), timeout=600
        )
        if args.json:
            print_json(message_dict(reply))
            return
        print(
            f"{reply.members_checked} members checked, {reply.removed} removed, "
            f"{reply.kept_admins} admins kept, {reply.bot_api_calls} Bot API calls, "
            f"{reply.seconds:.1f} s"
        )
        for error in reply.errors:
            print(f"error: {error}")

    return run_rpc(_addr, call)
