"""Operator console page renders with a busy inbox: what an operator waits for.

    .venv/bin/python -m benchmarks.console [--events 100000] [--payments 20000] [--renders 30]

Seeds the inbox with `--events` events (mostly processed, some failed, ignored and pending,
received over 30 days, a day's worth in the last 24 hours), `--payments` purchases over 30 days
and one user with two grants and an MT5 account with 7 days of minute snapshots; starts the
stack as processes (the console among them), signs in, and renders each page `--renders`
times, one at a time, from the console's HTTP port (the server's render time as a browser
would wait for it, without the browser's own drawing). Prints JSON: per page p50, p95, max in
ms and the HTML size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.harness import bench_settings, fresh_database, plain, running_stack
from paylayer.grpc_client import open_channel
from paylayer.ops.stack import Stack
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc


async def seed(database_url: str, events: int, payments: int) -> dict[str, Any]:
    """Straight into the tables: a minute of SQL instead of hours of webhooks."""
    connection = await asyncpg.connect(database_url)
    started = time.perf_counter()
    try:
        # One in 30 events in the last day, the rest over the month before; a payload of the
        # size Stripe sends.
        await connection.execute(
            "INSERT INTO payments.inbox (provider, event_id, event_type, payload, status, error,"
            " attempts, payment_key, received_at, next_attempt_at, processed_at)"
            " SELECT CASE WHEN g % 4 = 0 THEN 'telegram' ELSE 'stripe' END, 'evt_bench_' || g,"
            " CASE WHEN g % 3 = 0 THEN 'charge.succeeded' ELSE 'checkout.session.completed' END,"
            ' convert_to(\'{"id": "evt_bench_\' || g || \'", "pad": "\' || repeat(\'x\', 1500)'
            " || '\"}', 'UTF8'),"
            " CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 50 = 1 THEN 'ignored'"
            "      WHEN g % 500 = 2 THEN 'pending' ELSE 'processed' END,"
            " CASE WHEN g % 50 = 0 THEN 'cannot tell who paid' ELSE '' END, 1,"
            " 'pi_bench_' || g, t, t, CASE WHEN g % 500 = 2 THEN NULL ELSE t END"
            " FROM (SELECT g, now() - (CASE WHEN g % 30 = 0 THEN random() * interval '1 day'"
            "       ELSE random() * interval '30 days' END) AS t"
            "       FROM generate_series(1, $1) AS g) AS s",
            events,
        )
        await connection.execute(
            "INSERT INTO payments.payments (provider, payment_key, user_id, sku, status,"
            " amount, currency, purchased_at)"
            " SELECT CASE WHEN g % 4 = 0 THEN 'telegram' ELSE 'stripe' END, 'pi_bench_' || g,"
            " 'bench-user-' || (g % 5000), 'premium_30d', 'succeeded',"
            " CASE WHEN g % 4 = 0 THEN 1500 ELSE 2900 END,"
            " CASE WHEN g % 4 = 0 THEN 'xtr' WHEN g % 7 = 0 THEN 'eur' ELSE 'usd' END,"
            " now() - random() * interval '30 days' FROM generate_series(1, $1) AS g",
            payments,
        )
        for table in ("payments.inbox", "payments.payments"):
            await connection.execute(f"ANALYZE {table}")
    finally:
        await connection.close()
    return {
        "events": events,
        "payments": payments,
        "seeded_in_s": round(time.perf_counter() - started, 1),
    }


async def trader(stack: Stack) -> str:
    """A user with two stacked grants and an MT5 account with 7 days of minute snapshots."""
    token = stack.settings.internal_token
    async with (
        open_channel(stack.addrs["accounts"], token) as accounts_channel,
        open_channel(stack.addrs["entitlements"], token) as entitlements_channel,
    ):
        accounts = accounts_pb2_grpc.AccountsServiceStub(accounts_channel)
        entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(entitlements_channel)
        user = (
            await accounts.ResolveUser(
                accounts_pb2.ResolveUserRequest(telegram_user_id=424242, create=True)
            )
        ).user
        for reference in ("bench-1", "bench-2"):
            await entitlements.GrantEntitlement(
                entitlements_pb2.GrantEntitlementRequest(
                    user_id=user.user_id,
                    entitlement="premium",
                    source=entitlements_pb2.Source(provider="manual", reference=reference),
                    duration_seconds=30 * 86400,
                    reason="benchmark",
                )
            )
        await accounts.LinkAccount(
            accounts_pb2.LinkAccountRequest(
                user_id=user.user_id,
                login=777,
                server="Bench-Live",
                account_type=accounts_pb2.ACCOUNT_TYPE_REAL,
            )
        )
        moment = Timestamp()
        moment.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
        await accounts.ReportAccountSnapshot(
            accounts_pb2.ReportAccountSnapshotRequest(
                login=777, server="Bench-Live", balance=10_000, equity=10_000, time=moment
            )
        )
    # The week before as history, straight into the table (a week of reports would take long).
    connection = await asyncpg.connect(plain(stack.settings.database_url))
    try:
        await connection.execute(
            "INSERT INTO accounts.snapshot_history (login, server_key, minute, time, balance,"
            " equity, drawdown) SELECT 777, 'bench-live', m, m, 10000,"
            " 10000 + 1000 * sin(extract(epoch FROM m) / 86400 * 6.28), 0.05"
            " FROM generate_series(date_trunc('minute', now()) - interval '7 days',"
            " date_trunc('minute', now()) - interval '2 minutes', interval '1 minute') AS m"
            " ON CONFLICT DO NOTHING"
        )
    finally:
        await connection.close()
    return str(user.user_id)


async def sign_in(http: aiohttp.ClientSession, url: str, token: str) -> None:
    async with http.get(f"{url}/signin") as page:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert csrf is not None
    async with http.post(
        f"{url}/signin", data={"csrf": csrf.group(1), "name": "bench", "token": token}
    ) as reply:
        assert reply.status == 200 and "Overview" in await reply.text()


async def measure(url: str, token: str, pages: dict[str, str], renders: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # unsafe: the cookie jar keeps cookies of an IP address (127.0.0.1) only when told to.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, url, token)
        for name, path in pages.items():
            times, size = [], 0
            for _ in range(renders + 2):  # two warm-ups, not counted
                started = time.perf_counter()
                async with http.get(f"{url}{path}") as reply:
                    body = await reply.read()
                    assert reply.status == 200, (path, reply.status)
                times.append((time.perf_counter() - started) * 1000)
                size = len(body)
            counted = sorted(times[2:])
            results[name] = {
                "p50_ms": round(statistics.median(counted), 1),
                "p95_ms": round(counted[int(0.95 * (len(counted) - 1))], 1),
                "max_ms": round(counted[-1], 1),
                "html_kb": round(size / 1024, 1),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--renders", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with fresh_database() as database_url:
        results["seeded"] = asyncio.run(seed(plain(database_url), args.events, args.payments))
        settings = bench_settings(database_url)
        with running_stack(settings) as stack:
            user_id = asyncio.run(trader(stack))
            url = f"http://{stack.instances['console'].listen_addr}"
            failed_event = "evt_bench_50"  # failed (every 50th), from Stripe (not every 4th)
            pages = {
                "overview": "/",
                "inbox": "/inbox",
                "inbox_failed_stripe": "/inbox?provider=stripe&status=failed",
                "inbox_type_and_dates": (
                    "/inbox?type=charge.succeeded&since="
                    + (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%d")
                ),
                "event": f"/inbox/stripe/{failed_event}",
                "payments": "/payments",
                "payments_by_key": "/payments?q=pi_bench_77",
                "user": f"/users/{user_id}",
            }
            results["pages"] = asyncio.run(
                measure(url, settings.internal_token, pages, args.renders)
            )
    results["run_id"] = str(uuid.uuid4())[:8]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
