"""`paylayer entitlements ...`: check, list, grant (by hand, with a reason) and revoke."""

from __future__ import annotations

import argparse
import getpass
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from paylayer.cli.common import add_json_flag, message_dict, print_json, print_table, run_rpc
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

GRANT_COLUMNS = ("source", "tier", "term", "purchased", "starts", "ends", "state")
TIER_COLUMNS = ("tier", "active", "until")


def _entitlements_addr(settings: Settings) -> str:
    return settings.entitlements_addr


def _stub(channel: grpc.aio.Channel) -> entitlements_pb2_grpc.EntitlementsServiceStub:
    return entitlements_pb2_grpc.EntitlementsServiceStub(channel)


def _when(message: Timestamp) -> str:
    return message.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M")


def _term(grant: entitlements_pb2.Grant) -> str:
    if grant.lifetime:
        return "lifetime"
    if grant.HasField("until"):
        return f"until {_when(grant.until)}"
    days = grant.duration_seconds / 86400
    return f"{days:g} days"


def _grant_row(grant: entitlements_pb2.Grant) -> dict[str, Any]:
    return {
        "source": f"{grant.source.provider}:{grant.source.reference}",
        "tier": grant.entitlement,
        "term": _term(grant),
        "purchased": _when(grant.purchased_at),
        "starts": _when(grant.starts_at) if grant.HasField("starts_at") else "-",
        "ends": _when(grant.ends_at) if grant.HasField("ends_at") else "never",
        "state": "revoked" if grant.revoked else "granted",
    }


def _standing(active: bool, lifetime: bool, expires_at: Timestamp, has_expiry: bool) -> str:
    if not active:
        return "inactive"
    if lifetime:
        return "active for life"
    return f"active until {_when(expires_at)}" if has_expiry else "active"


def check(args: argparse.Namespace) -> int:
    request = entitlements_pb2.CheckEntitlementRequest(
        user_id=args.user_id, entitlement=args.entitlement
    )

    async def call(channel: grpc.aio.Channel) -> int:
        answer = await _stub(channel).CheckEntitlement(request)
        if args.json:
            print_json(message_dict(answer))
        else:
            standing = _standing(
                answer.active, answer.lifetime, answer.expires_at, answer.HasField("expires_at")
            )
            print(f"{args.user_id} {args.entitlement}: {standing}")
            if answer.grants:
                print_table([_grant_row(g) for g in answer.grants], GRANT_COLUMNS)
        # Scripts can test the answer: `paylayer entitlements check u1 vip && ...`
        return 0 if answer.active else 1

    return run_rpc(_entitlements_addr, call)


def list_entitlements(args: argparse.Namespace) -> int:
    request = entitlements_pb2.ListEntitlementsRequest(
        user_id=args.user_id, include_revoked=args.include_revoked
    )

    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).ListEntitlements(request)
        if args.json:
            print_json(message_dict(response))
            return 0
        print_table(
            [
                {
                    "tier": status.entitlement,
                    "active": "yes" if status.active else "no",
                    "until": (
                        "lifetime"
                        if status.lifetime
                        else _when(status.expires_at)
                        if status.HasField("expires_at")
                        else "-"
                    ),
                }
                for status in response.entitlements
            ],
            TIER_COLUMNS,
        )
        print()
        print_table([_grant_row(g) for g in response.grants], GRANT_COLUMNS)
        return 0

    return run_rpc(_entitlements_addr, call)


def grant(args: argparse.Namespace) -> int:
    request = entitlements_pb2.GrantEntitlementRequest(
        user_id=args.user_id,
        entitlement=args.entitlement,
        source=entitlements_pb2.Source(
            provider=args.provider, reference=args.reference or f"cli-{uuid.uuid4().hex}"
        ),
        event_id=args.event_id,
        reason=args.reason,
        granted_by=args.by,
    )
    if args.days is not None:
        request.duration_seconds = round(args.days * 86400)
    elif args.until is not None:
        request.until.FromDatetime(args.until)
    else:
        request.lifetime = True

    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).GrantEntitlement(request)
        if args.json:
            print_json(message_dict(response))
            return 0
        outcome = "granted" if response.created else "already known, unchanged"
        print(f"{outcome}: {request.source.provider}:{request.source.reference}")
        print_table([_grant_row(response.grant)], GRANT_COLUMNS)
        return 0

    return run_rpc(_entitlements_addr, call)


def revoke(args: argparse.Namespace) -> int:
    request = entitlements_pb2.RevokeEntitlementRequest(
        source=entitlements_pb2.Source(provider=args.provider, reference=args.reference),
        event_id=args.event_id,
        reason=args.reason,
        revoked_by=args.by,
    )

    async def call(channel: grpc.aio.Channel) -> int:
        response = await _stub(channel).RevokeEntitlement(request)
        if args.json:
            print_json(message_dict(response))
        elif response.tombstone:
            print("nothing granted yet: a tombstone now keeps any later grant of it revoked")
        else:
            print(f"revoked: {args.provider}:{args.reference}")
            print_table([_grant_row(response.grant)], GRANT_COLUMNS)
        return 0

    return run_rpc(_entitlements_addr, call)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("entitlements", help="tiers: check, list, grant, revoke")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    check_parser = actions.add_parser(
        "check", help="is a user entitled now, until when, thanks to which grants (exit 1: no)"
    )
    check_parser.add_argument("user_id")
    check_parser.add_argument("entitlement", nargs="?", default="premium")
    add_json_flag(check_parser)
    check_parser.set_defaults(run=check)

    list_parser = actions.add_parser("list", help="every tier of a user, and the grants")
    list_parser.add_argument("user_id")
    list_parser.add_argument("--include-revoked", action="store_true")
    add_json_flag(list_parser)
    list_parser.set_defaults(run=list_entitlements)

    grant_parser = actions.add_parser("grant", help="grant by hand (manual, promotional)")
    grant_parser.add_argument("user_id")
    grant_parser.add_argument("entitlement", help="a tier of the catalogue: premium, vip, ...")
    term = grant_parser.add_mutually_exclusive_group(required=True)
    term.add_argument("--days", type=float, help="stacked after the user's other grants")
    term.add_argument("--until", type=_moment, help="a fixed end, ISO (UTC unless given)")
    term.add_argument("--lifetime", action="store_true")
    grant_parser.add_argument("--reason", required=True, help="why: kept in the audit")
    grant_parser.add_argument("--by", default=_who(), help="who decided (default: cli:$USER)")
    grant_parser.add_argument("--provider", default="manual", help="manual, promo, ...")
    grant_parser.add_argument(
        "--reference", help="makes the grant idempotent (default: a new one each time)"
    )
    grant_parser.add_argument("--event-id", default="", help="what caused it, if anything")
    add_json_flag(grant_parser)
    grant_parser.set_defaults(run=grant)

    revoke_parser = actions.add_parser("revoke", help="revoke the grant of one source")
    revoke_parser.add_argument("provider", help="stripe, telegram, manual, ...")
    revoke_parser.add_argument("reference", help="the payment or manual reference")
    revoke_parser.add_argument("--reason", default="", help="why: kept in the audit")
    revoke_parser.add_argument("--by", default=_who(), help="who decided (default: cli:$USER)")
    revoke_parser.add_argument("--event-id", default="")
    add_json_flag(revoke_parser)
    revoke_parser.set_defaults(run=revoke)
