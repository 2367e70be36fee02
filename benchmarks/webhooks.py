"""Webhook throughput and latency: the floor and the full stack, one load generator, one run.

    .venv/bin/python -m benchmarks.webhooks [--events 2000] [--concurrency 32]

32 concurrent senders post signed `checkout.session.completed` events, 20% of deliveries being
duplicates of events already sent. Prints JSON: rps, p50 and p99 of each target, their ratio,
and whether the grants made equal the unique events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import psutil

from benchmarks.harness import bench_settings, fresh_database, plain, running_stack
from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import sign_stripe, stripe_event
from paylayer.ops.processes import free_port
from paylayer.ops.stack import Stack
from paylayer.settings import DEFAULT_CATALOGUE_PATH

Delivery = tuple[str, bytes, str]  # event id, body, signature


def deliveries(count: int, secret: str, duplicate_share: float) -> list[Delivery]:
    catalogue = load_catalogue(DEFAULT_CATALOGUE_PATH)
    unique: list[Delivery] = []
    for _ in range(count):
        event = stripe_event(
            "checkout.session.completed",
            catalogue,
            sku="premium_30d",
            telegram_user_id=secrets.randbelow(10**12) + 10**9,
        )
        body = json.dumps(event)
        unique.append((event["id"], body.encode(), sign_stripe(body, secret)))
    duplicates = int(count * duplicate_share / (1 - duplicate_share))
    mixed = unique + random.choices(unique, k=duplicates)
    random.shuffle(mixed)
    return mixed


async def send_all(url: str, work: list[Delivery], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(work)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for _event_id, body, signature in queue:
                started = time.perf_counter()
                async with session.post(
                    url,
                    data=body,
                    headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
                ) as reply:
                    await reply.read()
                latencies.append(time.perf_counter() - started)
                statuses[reply.status] = statuses.get(reply.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "non_2xx": sum(n for code, n in statuses.items() if not 200 <= code < 300),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


async def wait_for_grants(
    database_url: str, event_ids: list[str], within: float = 120
) -> dict[str, Any]:
    connection = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + within
        while True:
            pending = await connection.fetchval(
                "SELECT count(*) FROM payments.inbox"
                " WHERE status = 'pending' AND event_id = ANY($1)",
                event_ids,
            )
            if pending == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        references = await connection.fetch(
            "SELECT payment_key FROM payments.inbox"
            " WHERE event_id = ANY($1) AND status = 'processed'",
            event_ids,
        )
        grants = await connection.fetchval(
            "SELECT count(*) FROM entitlements.grants"
            " WHERE provider = 'stripe' AND reference = ANY($1)",
            [r["payment_key"] for r in references],
        )
        return {
            "unique_events": len(event_ids),
            "processed": len(references),
            "grants": grants,
            "still_pending": pending,
        }
    finally:
        await connection.close()


def cpu_seconds(processes: dict[str, subprocess.Popen[Any]]) -> dict[str, float]:
    times = {}
    for name, process in processes.items():
        cpu = psutil.Process(process.pid).cpu_times()
        times[name] = cpu.user + cpu.system
    return times


def wait_http(url: str, within: float = 30) -> None:
    async def probe() -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.post(url, data=b"{}") as reply:
                        if reply.status in (400, 200):
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(url)
                await asyncio.sleep(0.1)

    asyncio.run(probe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000, help="unique events per target")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--duplicates", type=float, default=0.2, help="share of deliveries that repeat"
    )
    args = parser.parse_args()

    with fresh_database() as database_url:
        settings = bench_settings(database_url)
        secret = settings.stripe_webhook_secrets[0]
        with running_stack(settings) as stack:
            floor_addr = f"127.0.0.1:{free_port()}"
            floor = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.floor"],
                env={**stack.env, "LISTEN_ADDR": floor_addr},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                results = measure(args, stack, database_url, secret, f"http://{floor_addr}")
            finally:
                floor.terminate()
                floor.wait()
    print(json.dumps(results, indent=2))


def measure(
    args: argparse.Namespace, stack: Stack, database_url: str, secret: str, floor_base: str
) -> dict[str, Any]:
    floor_url = f"{floor_base}/api/v1/stripe/webhook"
    stack_url = f"{stack.gateway_url}/api/v1/stripe/webhook"
    wait_http(floor_url)
    results: dict[str, Any] = {
        "events": args.events,
        "concurrency": args.concurrency,
        "duplicate_share": args.duplicates,
    }
    # Warm both (pools, connections), and let the stack apply its warm-up before measuring, so
    # each target is measured on an otherwise quiet machine.
    asyncio.run(send_all(floor_url, deliveries(200, secret, 0), args.concurrency))
    warmup = deliveries(200, secret, 0)
    asyncio.run(send_all(stack_url, warmup, args.concurrency))
    asyncio.run(wait_for_grants(plain(database_url), [event_id for event_id, _, _ in warmup]))

    results["floor"] = asyncio.run(
        send_all(floor_url, deliveries(args.events, secret, args.duplicates), args.concurrency)
    )
    stack_work = deliveries(args.events, secret, args.duplicates)
    cpu_before = cpu_seconds(stack.processes)
    started = time.perf_counter()
    results["stack"] = asyncio.run(send_all(stack_url, stack_work, args.concurrency))
    unique_ids = sorted({event_id for event_id, _, _ in stack_work})
    effects = asyncio.run(wait_for_grants(plain(database_url), unique_ids))
    # Acknowledging is not the end: every event must also be applied. This is the rate at
    # which the whole burst was received and applied, end to end.
    effects["applied_per_second"] = round(len(unique_ids) / (time.perf_counter() - started), 1)
    results["stack"]["effects"] = effects
    cpu_after = cpu_seconds(stack.processes)
    results["stack"]["cpu_seconds_by_process"] = {
        name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_after
    }
    results["ratio"] = round(results["stack"]["rps"] / results["floor"]["rps"], 3)
    results["grants_equal_unique_events"] = effects["grants"] == effects["unique_events"]
    results["bar"] = {
        "ratio_at_least_0_5": results["ratio"] >= 0.5,
        "p99_at_most_100_ms": results["stack"]["p99_ms"] <= 100,
        "no_non_2xx": results["stack"]["non_2xx"] == 0,
    }
    return results


if __name__ == "__main__":
    main()
