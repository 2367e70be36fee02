"""Channel reconcile: one pass over a chat of 10,000 known members, against the fake Bot API.

    .venv/bin/python -m benchmarks.channels [--members 10000] [--gone 0.01]

A share `--gone` of the members has no access (their removal is 2 Bot API calls each, paced by
the rate limiter: 30 calls/s for the bot, 10 calls/s per chat); the others hold a 30-day grant.
Prints JSON: the first pass (checks and removals), a second pass (checks only, nothing to do),
the Bot API calls each made, and whether the chat's members equal the entitled plus the admins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from benchmarks.harness import bench_settings, fresh_database, plain, running_stack
from paylayer.grpc_client import open_channel
from paylayer.ops.stack import Stack
from paylayer.settings import DEFAULT_CATALOGUE_PATH
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.fakes.bot_api import FakeBotApi, add_chat

CHAT = -1009000000001
OWNER, ADMIN = 1, 2
BATCH = 500


def catalogue_with_chat() -> Path:
    raw = yaml.safe_load(DEFAULT_CATALOGUE_PATH.read_text())
    raw["tiers"]["premium"]["chats"] = [CHAT]
    path = Path(tempfile.mkdtemp(prefix="paylayer-bench-")) / "catalogue.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def seed(stack: Stack, members: list[int], entitled: set[int], database_url: str) -> None:
    """The members known to payments (as their chat_member updates would have left them),
    then accounts for every member and a 30-day premium grant for the entitled."""
    connection = await asyncpg.connect(plain(database_url))
    try:
        rows = [(CHAT, t, "member") for t in members] + [
            (CHAT, OWNER, "creator"),
            (CHAT, ADMIN, "administrator"),
        ]
        await connection.executemany(
            "INSERT INTO payments.chat_members (chat_id, telegram_user_id, status, observed_at)"
            " VALUES ($1, $2, $3, now())",
            rows,
        )
    finally:
        await connection.close()
    token = stack.settings.internal_token
    async with (
        open_channel(stack.addrs["accounts"], token) as accounts_channel,
        open_channel(stack.addrs["entitlements"], token) as entitlements_channel,
    ):
        accounts = accounts_pb2_grpc.AccountsServiceStub(accounts_channel)
        entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(entitlements_channel)
        for start in range(0, len(members), BATCH):
            batch = members[start : start + BATCH]
            reply = await accounts.ResolveUsers(
                accounts_pb2.ResolveUsersRequest(
                    requests=[
                        accounts_pb2.ResolveUserRequest(telegram_user_id=t, create=True)
                        for t in batch
                    ]
                ),
                timeout=60,
            )
            grants = [
                entitlements_pb2.GrantEntitlementRequest(
                    user_id=result.user.user_id,
                    entitlement="premium",
                    source=entitlements_pb2.Source(provider="manual", reference=f"bench-{t}"),
                    duration_seconds=30 * 86400,
                    reason="benchmark",
                    granted_by="bench",
                )
                for t, result in zip(batch, reply.results, strict=True)
                if t in entitled
            ]
            if grants:
                await entitlements.GrantEntitlements(
                    entitlements_pb2.GrantEntitlementsRequest(grants=grants), timeout=60
                )


async def reconcile(stack: Stack) -> dict[str, Any]:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        started = time.perf_counter()
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).ReconcileChannels(
            payments_pb2.ReconcileChannelsRequest(), timeout=1800
        )
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "members_checked": reply.members_checked,
        "removed": reply.removed,
        "bot_api_calls": reply.bot_api_calls,
        "errors": len(reply.errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--gone", type=float, default=0.01, help="share without access")
    args = parser.parse_args()
    members = [10**9 + secrets.randbelow(10**11) for _ in range(args.members)]
    members = list(dict.fromkeys(members))
    gone = set(members[: int(len(members) * args.gone)])
    entitled = set(members) - gone
    bot_api = FakeBotApi(token="1:bench")
    bot_api.start()
    chat = add_chat(bot_api.chats, CHAT, owner=OWNER, admins=(ADMIN,))
    chat.status.update(dict.fromkeys(members, "member"))
    results: dict[str, Any] = {"members": len(members), "without_access": len(gone)}
    try:
        with fresh_database() as database_url:
            settings = bench_settings(database_url)
            env = {
                "CATALOGUE_PATH": str(catalogue_with_chat()),
                "TELEGRAM_API_BASE": bot_api.base_url,
                "CHANNELS_RECONCILE_SECONDS": "86400",  # only the passes asked for here
            }
            with running_stack(settings, extra_env=env) as stack:
                seeding = time.perf_counter()
                asyncio.run(seed(stack, members, entitled, database_url))
                results["seed_seconds"] = round(time.perf_counter() - seeding, 1)
                # Payments follows every grant (invite links for chats not joined): let it finish.
                time.sleep(15)
                bot_api.calls.clear()
                results["first_pass"] = asyncio.run(reconcile(stack))
                results["first_pass"]["fake_saw_calls"] = len(bot_api.calls)
                bot_api.calls.clear()
                results["second_pass"] = asyncio.run(reconcile(stack))
                results["second_pass"]["fake_saw_calls"] = len(bot_api.calls)
                results["members_equal_entitled_plus_admins"] = chat.members == entitled | {
                    OWNER,
                    ADMIN,
                }
    finally:
        bot_api.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
