"""CheckEntitlement against a bare grpc.aio health check, side by side: the bar it must clear.

    .venv/bin/python benchmarks/check.py [--seconds 8] [--users 10000] [--concurrency 32]

Every server runs as a separate process, alone on its port, on the same event loop (uvloop,
as the kit runs services):

- `bare_health`: a bare `grpc.aio.server()` serving only grpc.health.v1, no interceptor;
- `check`: the entitlements service as deployed (`python -m entitlements_service`: the shared
  ServiceInterceptor, the cache, the LISTEN connection);
- `check_without_kit`: the same servicer, cache and listener on a bare `grpc.aio.server()`,
  which shows what the shared interceptor costs.

One load process drives each in turn with the same number of concurrent callers, over one
channel, with a deadline on every call; check calls carry the bearer token, as every internal
caller must. Users are drawn at random among `--users`, some with active
grants (duration, vip, lifetime), some expired, most with none; every user is checked once
before measuring, so the figures are of a warm cache, the service's steady state.

PostgreSQL: DATABASE_URL when set (a fresh database is made on that server and dropped after),
else the embedded server in a temporary directory. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from entitlements_service.server import compose  # noqa: E402
from entitlements_service.tables import grants  # noqa: E402
from paylayer.embedded_pg import start_embedded, with_database  # noqa: E402
from paylayer.ops.migrations import upgrade  # noqa: E402
from paylayer.ops.processes import free_port  # noqa: E402
from paylayer.settings import Settings  # noqa: E402
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc  # noqa: E402

DEADLINE_SECONDS = 2.0
BAR_RATIO = 0.7
BAR_P99_MS = 15.0


async def serve_bare_health(port: int) -> None:
    """The floor: grpc.aio with the stock health servicer and nothing else."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    await server.wait_for_termination()


async def serve_check_without_kit(port: int) -> None:
    """The entitlements servicer, cache and listener on a bare server: no interceptor."""
    parts = compose(Settings.from_env())
    server = grpc.aio.server()
    entitlements_pb2_grpc.add_EntitlementsServiceServicer_to_server(parts.servicer, server)
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    listening = asyncio.create_task(parts.listener.run())
    await server.start()
    await server.wait_for_termination()
    listening.cancel()


def run_loop(main: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


# --- the database -------------------------------------------------------------------------


async def create_database(admin_url: str) -> str:
    name = f"paylayer_bench_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def seed(url: str, users: list[str], active_fraction: float) -> int:
    """Grants straight into the table: the benchmark is of checks, not of grants."""
    now = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    chooser = random.Random(7)
    active = 0
    for user in users:
        roll = chooser.random()
        if roll < active_fraction:
            active += 1
            kind = chooser.choice(["premium_30d", "premium_30d", "vip_30d", "premium_life"])
            purchased = now - timedelta(days=chooser.uniform(0, 20))
            entitlement = "vip" if kind.startswith("vip") else "premium"
            duration = None if kind == "premium_life" else 30 * 86400
            rows.append((user, entitlement, purchased, duration, kind == "premium_life"))
            if chooser.random() < 0.3:  # a second purchase, stacked after the first
                rows.append((user, entitlement, purchased + timedelta(days=1), 30 * 86400, False))
        elif roll < active_fraction + 0.1:  # paid once, long expired
            rows.append((user, "premium", now - timedelta(days=90), 30 * 86400, False))
    connection = await asyncpg.connect(url)
    try:
        await connection.copy_records_to_table(
            grants.name,
            schema_name=grants.schema,
            columns=[
                "grant_id",
                "provider",
                "reference",
                "user_id",
                "entitlement",
                "event_id",
                "purchased_at",
                "duration_seconds",
                "lifetime",
            ],
            records=[
                (
                    uuid.uuid4(),
                    "stripe",
                    f"pi_{uuid.uuid4().hex}",
                    user,
                    entitlement,
                    f"evt_{uuid.uuid4().hex}",
                    purchased,
                    duration,
                    lifetime,
                )
                for user, entitlement, purchased, duration, lifetime in rows
            ],
        )
    finally:
        await connection.close()
    return active


# --- load ---------------------------------------------------------------------------------


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float, pid: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    cpu_before = server_cpu_seconds(pid)
    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    cpu_used = server_cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": errors,
        "calls_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "server_cpu_us_per_call": round(cpu_used / max(len(latencies), 1) * 1e6, 1),
    }


async def wait_until_serving(addr: str, seconds: float = 30) -> None:
    give_up_at = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > give_up_at:
                raise RuntimeError(f"{addr} never became SERVING")
            await asyncio.sleep(0.1)


def start_servers(
    env: dict[str, str], health_port: int, without_kit_port: int
) -> dict[str, subprocess.Popen[bytes]]:
    return {
        "bare_health": subprocess.Popen(
            [sys.executable, __file__, "--serve-bare-health", str(health_port)], cwd=REPO_ROOT
        ),
        "check": subprocess.Popen(
            [sys.executable, "-m", "entitlements_service"], cwd=REPO_ROOT, env=env
        ),
        "check_without_kit": subprocess.Popen(
            [sys.executable, __file__, "--serve-check-without-kit", str(without_kit_port)],
            cwd=REPO_ROOT,
            env=env,
        ),
    }


def stop_servers(servers: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in servers.values():
        process.terminate()
    for process in servers.values():
        process.wait(timeout=15)


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    users = [f"bench-user-{n:05d}" for n in range(args.users)]
    active = await seed(url, users, args.active_fraction)
    token = "bench-" + secrets.token_hex(12)
    bearer = (("authorization", f"Bearer {token}"),)
    health_port, check_port, without_kit_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "INTERNAL_TOKEN": token,
        "LISTEN_ADDR": f"127.0.0.1:{check_port}",
        # Its own metrics port, so a running `paylayer dev` does not clash with it.
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "LOG_LEVEL": "WARNING",
    }
    servers = await asyncio.to_thread(start_servers, env, health_port, without_kit_port)
    try:
        await wait_until_serving(f"127.0.0.1:{health_port}")
        await wait_until_serving(f"127.0.0.1:{check_port}")
        await wait_until_serving(f"127.0.0.1:{without_kit_port}")
        chooser = random.Random(11)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as health_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{check_port}") as check_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{without_kit_port}") as without_kit_channel,
        ):
            health_stub = health_pb2_grpc.HealthStub(health_channel)
            check_stub = entitlements_pb2_grpc.EntitlementsServiceStub(check_channel)
            without_kit_stub = entitlements_pb2_grpc.EntitlementsServiceStub(without_kit_channel)
            health_request = health_pb2.HealthCheckRequest()
            check_requests = [
                entitlements_pb2.CheckEntitlementRequest(user_id=user, entitlement=tier)
                for user in users
                for tier in ("premium", "vip")
            ]

            async def bare_health_call() -> None:
                await health_stub.Check(health_request, timeout=DEADLINE_SECONDS)

            async def check_call() -> None:
                await check_stub.CheckEntitlement(
                    chooser.choice(check_requests), timeout=DEADLINE_SECONDS, metadata=bearer
                )

            async def check_without_kit_call() -> None:
                await without_kit_stub.CheckEntitlement(
                    chooser.choice(check_requests), timeout=DEADLINE_SECONDS, metadata=bearer
                )

            calls = {
                "bare_health": bare_health_call,
                "check": check_call,
                "check_without_kit": check_without_kit_call,
            }

            # Warm up: every user once (the caches), and a second of each (the connections).
            active_seen = 0
            for stub in (check_stub, without_kit_stub):
                active_seen = 0
                for start in range(0, len(check_requests), 256):
                    batch = check_requests[start : start + 256]
                    replies = await asyncio.gather(
                        *(
                            stub.CheckEntitlement(
                                request, timeout=DEADLINE_SECONDS, metadata=bearer
                            )
                            for request in batch
                        )
                    )
                    active_seen += sum(
                        reply.active
                        for request, reply in zip(batch, replies, strict=True)
                        if request.entitlement == "premium"
                    )
            for name, call in calls.items():
                await drive(call, args.concurrency, 1.0, servers[name].pid)

            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
            for _ in range(args.rounds):  # interleaved, so drift hits each alike
                for name, call in calls.items():
                    rounds[name].append(
                        await drive(call, args.concurrency, args.seconds, servers[name].pid)
                    )
    finally:
        await asyncio.to_thread(stop_servers, servers)

    def best(runs: list[dict[str, float]]) -> dict[str, float]:
        return max(runs, key=lambda run: run["calls_per_second"])

    bare, check = best(rounds["bare_health"]), best(rounds["check"])
    without_kit = best(rounds["check_without_kit"])
    ratio = round(check["calls_per_second"] / bare["calls_per_second"], 3)
    return {
        "setup": {
            "servers": "separate processes; load from one process, one channel per server",
            "concurrency": args.concurrency,
            "users": args.users,
            "users_active_for_premium": active_seen,
            "users_seeded_active": active,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "cache": "warm (every user checked once before measuring)",
        },
        "bare_health": bare,
        "check": check,
        "check_without_kit": without_kit,
        "all_rounds": rounds,
        "ratio": ratio,
        "ratio_without_kit": round(without_kit["calls_per_second"] / bare["calls_per_second"], 3),
        # What the ratio would be were the servers, not the load process, the limit.
        "server_cpu_ratio": round(
            bare["server_cpu_us_per_call"] / check["server_cpu_us_per_call"], 3
        ),
        "server_cpu_ratio_without_kit": round(
            bare["server_cpu_us_per_call"] / without_kit["server_cpu_us_per_call"], 3
        ),
        "bar": {"ratio_at_least": BAR_RATIO, "p99_ms_at_most": BAR_P99_MS},
        "passed": ratio >= BAR_RATIO and check["p99_ms"] <= BAR_P99_MS and not check["errors"],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL", "").replace("postgresql+asyncpg://", "postgresql://")
    server = None
    if not admin_url:
        server, admin_url = start_embedded(
            Path(tempfile.mkdtemp(prefix="paylayer-bench-")) / "pgdata", delete_on_exit=True
        )
    url = await create_database(admin_url)
    try:
        await asyncio.to_thread(upgrade, "entitlements", url)
        return await measure(args, url)
    finally:
        await drop_database(admin_url, url)
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--active-fraction", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve-bare-health", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve-check-without-kit", type=int, metavar="PORT", help=argparse.SUPPRESS
    )
    arguments = parser.parse_args()
    if arguments.serve_bare_health:
        run_loop(serve_bare_health(arguments.serve_bare_health))
    elif arguments.serve_check_without_kit:
        run_loop(serve_check_without_kit(arguments.serve_check_without_kit))
    else:
        print(json.dumps(run_loop(main(arguments)), indent=2))
