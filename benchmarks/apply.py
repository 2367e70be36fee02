"""Applying webhooks: how soon a purchase becomes a grant, against a floor that grants in the
same transaction that records it.

    .venv/bin/python -m benchmarks.apply [--events 3000] [--steady-rate 200] [--singles 100]
        [--old-events 1000000 --old-users 100000]   # as after a year of business
        [--checks]   # CheckEntitlement quiet, then while a burst is applied

Prints JSON with:
- floor: one aiohttp process verifying and, in one transaction, recording and granting;
- burst: the stack's acknowledging (rps, p99), its apply rate (unique events from the first
  receipt to the last grant, from the inbox's own timestamps), the drain time after the last
  receipt, receipt-to-applied p50/p99/max, and whether grants equal unique events;
- steady: purchases sent at a fixed rate, receipt-to-applied p50/p99/max;
- single: one purchase at a time, from its 200 until CheckEntitlement says yes, p50/p99;
- cpu_ms_per_event, for the floor and the burst: CPU per unique event in each process and in
  PostgreSQL's backends. With every core busy, the rates stand in the inverse ratio of these.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg

from benchmarks.check import drive, server_cpu_seconds
from benchmarks.harness import bench_settings, fresh_database, plain, running_stack
from benchmarks.webhooks import deliveries, send_all, wait_http
from paylayer.catalogue import load_catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import sign_stripe, stripe_event
from paylayer.ops.processes import free_port
from paylayer.ops.stack import Stack
from paylayer.settings import DEFAULT_CATALOGUE_PATH
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.fakes.bot_api import FakeBotApi


def serve_bot_api(port: int, token: str) -> None:
    """A local Bot API in a process of its own: receipts are sent as they would be to Telegram,
    not retried against an address that cannot be reached, and the fake's CPU is not the
    senders'."""
    FakeBotApi(token=token, port=port).start()
    threading.Event().wait()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * share) - 1))]


def spread_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def database_backends(database_url: str) -> list[int]:
    """The server processes serving this database's connections (pools persist across a run)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return [row["pid"] for row in rows]


class CpuMeter:
    """CPU seconds spent by named processes and by PostgreSQL's backends between `start` and
    `stop`: on a machine whose cores are all busy, what each event costs in CPU is what sets
    the rate, so this says where the gap to the floor is."""

    def __init__(self, database_url: str, processes: dict[str, int]) -> None:
        self._database_url = database_url
        self._processes = processes
        self._before: dict[str, float] = {}
        self._backends_before: dict[int, float] = {}

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            return server_cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None

    def start(self) -> None:
        self._before = {name: self._cpu(pid) or 0.0 for name, pid in self._processes.items()}
        backends = asyncio.run(database_backends(self._database_url))
        self._backends_before = {pid: self._cpu(pid) or 0.0 for pid in backends}

    def stop(self, events: int) -> dict[str, float]:
        """CPU milliseconds per event, per process and for PostgreSQL; a backend that ended
        during the run is not counted, so PostgreSQL's figure is a floor."""
        spent = {
            name: (self._cpu(pid) or 0.0) - self._before[name]
            for name, pid in self._processes.items()
        }
        postgres = 0.0
        for pid in set(asyncio.run(database_backends(self._database_url))) | set(
            self._backends_before
        ):
            now = self._cpu(pid)
            if now is not None:
                postgres += now - self._backends_before.get(pid, 0.0)
        spent["postgres"] = postgres
        per_event = {name: round(seconds * 1000 / events, 3) for name, seconds in spent.items()}
        per_event["total"] = round(sum(spent.values()) * 1000 / events, 3)
        return per_event


async def applied(database_url: str, event_ids: list[str], within: float = 300) -> dict[str, Any]:
    """Wait until none of these events is pending; their timings from the inbox's clock."""
    connection = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + within
        while True:
            pending = await connection.fetchval(
                "SELECT count(*) FROM payments.inbox WHERE status = 'pending'"
                " AND event_id = ANY($1)",
                event_ids,
            )
            if pending == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        rows = await connection.fetch(
            "SELECT payment_key, received_at, processed_at, status FROM payments.inbox"
            " WHERE event_id = ANY($1)",
            event_ids,
        )
        grants = await connection.fetchval(
            "SELECT count(*) FROM entitlements.grants WHERE provider = 'stripe'"
            " AND reference = ANY($1) AND revoked_at IS NULL",
            [row["payment_key"] for row in rows],
        )
    finally:
        await connection.close()
    done = [row for row in rows if row["processed_at"] is not None]
    first_received = min(row["received_at"] for row in rows)
    last_received = max(row["received_at"] for row in rows)
    last_applied = max(row["processed_at"] for row in done)
    waits = [(row["processed_at"] - row["received_at"]).total_seconds() for row in done]
    span = (last_applied - first_received).total_seconds()
    return {
        "unique_events": len(event_ids),
        "processed": sum(row["status"] == "processed" for row in rows),
        "still_pending": pending,
        "grants": grants,
        "apply_rate_per_s": round(len(done) / span, 1) if span > 0 else None,
        "drain_after_last_receipt_s": round((last_applied - last_received).total_seconds(), 2),
        "receipt_to_applied": spread_ms(waits),
    }


async def steady(url: str, secret: str, rate: float, seconds: float) -> list[str]:
    """Purchases at a fixed rate, each sent on schedule whatever the answers take."""
    work = deliveries(int(rate * seconds), secret, 0)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(at: float, body: bytes, signature: str) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()

        start = time.monotonic() + 0.2
        await asyncio.gather(
            *(send(start + i / rate, body, sig) for i, (_, body, sig) in enumerate(work))
        )
    return [event_id for event_id, _, _ in work]


async def single_purchases(stack: Stack, secret: str, tries: int) -> list[float]:
    """From a purchase's 200 until CheckEntitlement says yes, one purchase at a time."""
    catalogue = load_catalogue(DEFAULT_CATALOGUE_PATH)
    url = f"{stack.gateway_url}/api/v1/stripe/webhook"
    token = stack.settings.internal_token
    visible_after: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        open_channel(stack.addrs["accounts"], token) as accounts_channel,
        open_channel(stack.addrs["entitlements"], token) as entitlements_channel,
    ):
        accounts = accounts_pb2_grpc.AccountsServiceStub(accounts_channel)
        entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(entitlements_channel)
        for _ in range(tries):
            buyer = secrets.randbelow(10**12) + 10**9
            user = await accounts.ResolveUser(
                accounts_pb2.ResolveUserRequest(telegram_user_id=buyer, create=True)
            )
            event = stripe_event(
                "checkout.session.completed",
                catalogue,
                sku="premium_30d",
                user_id=user.user.user_id,
            )
            body = json.dumps(event)
            headers = {"Stripe-Signature": sign_stripe(body, secret)}
            async with session.post(url, data=body.encode(), headers=headers) as reply:
                assert reply.status == 200, await reply.text()
            acknowledged = time.perf_counter()
            request = entitlements_pb2.CheckEntitlementRequest(
                user_id=user.user.user_id, entitlement="premium"
            )
            while not (await entitlements.CheckEntitlement(request)).active:
                if time.perf_counter() - acknowledged > 10:
                    raise TimeoutError("a single purchase was not visible within 10 s")
            visible_after.append(time.perf_counter() - acknowledged)
    return visible_after


async def seed_a_year(database_url: str, old_events: int, users: int) -> dict[str, float]:
    """What a year leaves behind: old processed events in the inbox and users with grants,
    written straight into the tables (a minute of SQL instead of hours of webhooks)."""
    connection = await asyncpg.connect(database_url)
    started = time.perf_counter()
    try:
        await connection.execute(
            "INSERT INTO payments.inbox (provider, event_id, event_type, payload, status,"
            " payment_key, received_at, next_attempt_at, processed_at)"
            " SELECT 'stripe', 'evt_old_' || g, 'checkout.session.completed',"
            " convert_to(repeat('x', 1500), 'UTF8'), 'processed', 'pi_old_' || g,"
            " now() - interval '60 days', now() - interval '60 days', now() - interval '60 days'"
            " FROM generate_series(1, $1) AS g",
            old_events,
        )
        await connection.execute(
            "INSERT INTO accounts.users (user_id, telegram_user_id)"
            " SELECT 'old-' || g, 7000000000 + g FROM generate_series(1, $1) AS g",
            users,
        )
        await connection.execute(
            "INSERT INTO entitlements.grants (grant_id, provider, reference, user_id,"
            " entitlement, event_id, purchased_at, duration_seconds)"
            " SELECT gen_random_uuid(), 'stripe', 'pi_old_' || g, 'old-' || g, 'premium',"
            " 'stripe:evt_old_' || g, now() - interval '10 days', 2592000"
            " FROM generate_series(1, $1) AS g",
            users,
        )
        await connection.execute(
            "INSERT INTO payments.payments (provider, payment_key, user_id, sku, status,"
            " amount, currency) SELECT 'stripe', 'pi_old_' || g, 'old-' || g, 'premium_30d',"
            " 'succeeded', 2900, 'usd' FROM generate_series(1, $1) AS g",
            users,
        )
        for table in (
            "payments.inbox",
            "payments.payments",
            "accounts.users",
            "entitlements.grants",
        ):
            await connection.execute(f"ANALYZE {table}")
    finally:
        await connection.close()
    return {
        "old_events": old_events,
        "users_with_grants": users,
        "seeded_in_s": round(time.perf_counter() - started, 1),
    }


def _burst(url: str, secret: str, events: int) -> None:
    """A burst of purchases from another process (spawned), so it competes for the cores as
    Stripe would, not for this process's event loop."""
    asyncio.run(send_all(url, deliveries(events, secret, 0.2), 32))


async def checks(stack: Stack, seconds: float) -> dict[str, float]:
    """CheckEntitlement from 32 callers for `seconds`, over users of the burst's kind."""
    token = stack.settings.internal_token
    async with open_channel(stack.addrs["entitlements"], token) as channel:
        stub = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
        users = [f"check-{secrets.token_hex(4)}" for _ in range(500)]
        requests = [
            entitlements_pb2.CheckEntitlementRequest(user_id=user, entitlement="premium")
            for user in users
        ]
        for request in requests:  # warm: the figures are of the cache's steady state
            await stub.CheckEntitlement(request, timeout=5)
        return await drive(
            lambda: stub.CheckEntitlement(random.choice(requests), timeout=1),
            32,
            seconds,
            stack.processes["entitlements"].pid,
        )


def checks_while_applying(stack: Stack, secret: str, events: int) -> dict[str, Any]:
    quiet = asyncio.run(checks(stack, 5))
    sender = multiprocessing.get_context("spawn").Process(
        target=_burst, args=(f"{stack.gateway_url}/api/v1/stripe/webhook", secret, events)
    )
    sender.start()
    try:
        time.sleep(1.5)  # the burst under way, and its applying with it
        busy = asyncio.run(checks(stack, 5))
    finally:
        sender.join()
    return {
        "quiet": quiet,
        "during_burst": busy,
        "ratio": round(busy["calls_per_second"] / quiet["calls_per_second"], 3),
    }


async def floor_grants(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM bench_floor.grants"))
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3000, help="unique purchases in the burst")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duplicates", type=float, default=0.2)
    parser.add_argument("--steady-rate", type=float, default=200)
    parser.add_argument("--steady-seconds", type=float, default=10)
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument(
        "--old-events", type=int, default=0, help="processed events already in the inbox"
    )
    parser.add_argument("--old-users", type=int, default=0, help="users with grants already")
    parser.add_argument(
        "--checks", action="store_true", help="also CheckEntitlement, quiet and during a burst"
    )
    args = parser.parse_args()

    results: dict[str, Any] = {"events": args.events, "concurrency": args.concurrency}
    with fresh_database() as database_url:
        bot_api_port = free_port()
        settings = bench_settings(database_url)
        settings = replace(settings, telegram_api_base=f"http://127.0.0.1:{bot_api_port}")
        bot_api = multiprocessing.get_context("spawn").Process(
            target=serve_bot_api, args=(bot_api_port, settings.telegram_bot_token), daemon=True
        )
        bot_api.start()
        secret = settings.stripe_webhook_secrets[0]
        if args.old_events or args.old_users:
            results["seeded"] = asyncio.run(
                seed_a_year(plain(database_url), args.old_events, args.old_users)
            )
        with running_stack(settings) as stack:
            floor_addr = f"127.0.0.1:{free_port()}"
            floor_process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.floor"],
                env={**stack.env, "LISTEN_ADDR": floor_addr, "FLOOR_GRANTS": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                floor_url = f"http://{floor_addr}/api/v1/stripe/webhook"
                stack_url = f"{stack.gateway_url}/api/v1/stripe/webhook"
                wait_http(floor_url)
                asyncio.run(send_all(floor_url, deliveries(200, secret, 0), args.concurrency))
                warmup = deliveries(200, secret, 0)
                asyncio.run(send_all(stack_url, warmup, args.concurrency))
                asyncio.run(applied(plain(database_url), [e for e, _, _ in warmup]))

                before = asyncio.run(floor_grants(plain(database_url)))
                floor_work = deliveries(args.events, secret, args.duplicates)
                floor_unique = len({e for e, _, _ in floor_work})
                floor_cpu = CpuMeter(plain(database_url), {"floor": floor_process.pid})
                floor_cpu.start()
                floor = asyncio.run(send_all(floor_url, floor_work, args.concurrency))
                floor["cpu_ms_per_event"] = floor_cpu.stop(floor_unique)
                floor["grants"] = asyncio.run(floor_grants(plain(database_url))) - before
                # The floor grants as it acknowledges: its apply rate is its unique events over
                # the whole burst.
                floor["apply_rate_per_s"] = round(
                    floor_unique * floor["rps"] / floor["requests"], 1
                )
                results["floor"] = floor

                burst_work = deliveries(args.events, secret, args.duplicates)
                burst_unique = sorted({e for e, _, _ in burst_work})
                stack_cpu = CpuMeter(
                    plain(database_url),
                    {name: process.pid for name, process in stack.processes.items()},
                )
                stack_cpu.start()
                burst = asyncio.run(send_all(stack_url, burst_work, args.concurrency))
                burst["applied"] = asyncio.run(applied(plain(database_url), burst_unique))
                burst["cpu_ms_per_event"] = stack_cpu.stop(len(burst_unique))
                results["burst"] = burst

                steady_ids = asyncio.run(
                    steady(stack_url, secret, args.steady_rate, args.steady_seconds)
                )
                results["steady"] = {
                    "rate_per_s": args.steady_rate,
                    **asyncio.run(applied(plain(database_url), steady_ids)),
                }
                singles = asyncio.run(single_purchases(stack, secret, args.singles))
                results["single_purchase_visible_after_200"] = spread_ms(singles)
                if args.checks:
                    results["checks"] = checks_while_applying(stack, secret, 2 * args.events)
            finally:
                floor_process.terminate()
                floor_process.wait()

    apply_ratio = (
        results["burst"]["applied"]["apply_rate_per_s"] / results["floor"]["apply_rate_per_s"]
    )
    results["apply_ratio"] = round(apply_ratio, 3)
    results["ack_ratio"] = round(results["burst"]["rps"] / results["floor"]["rps"], 3)
    results["bar"] = {
        "apply_at_least_half_the_floor": apply_ratio >= 0.5,
        "grants_equal_unique_events": results["burst"]["applied"]["grants"]
        == results["burst"]["applied"]["unique_events"],
        "ack_p99_at_most_100_ms": results["burst"]["p99_ms"] <= 100,
        "no_non_2xx": results["burst"]["non_2xx"] == 0,
        "steady_p99_at_most_1_s": results["steady"]["receipt_to_applied"]["p99_ms"] <= 1000,
        "single_p50_at_most_50_ms": results["single_purchase_visible_after_200"]["p50_ms"] <= 50,
    }
    if "checks" in results:
        busy = results["checks"]["during_burst"]
        results["bar"]["checks_during_burst_at_least_0_8_of_quiet"] = (
            results["checks"]["ratio"] >= 0.8
        )
        results["bar"]["checks_during_burst_p99_at_most_15_ms"] = busy["p99_ms"] <= 15
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
