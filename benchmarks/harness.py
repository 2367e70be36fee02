"""What every benchmark needs: a fresh database, the stack as real processes, a load loop."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from paylayer.embedded_pg import start_embedded, with_database
from paylayer.ops.migrations import upgrade_all
from paylayer.ops.stack import Stack, make_stack
from paylayer.settings import DEFAULT_CATALOGUE_PATH, Settings


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A migrated database of its own, on DATABASE_URL's server or an embedded one."""
    admin_url = os.environ.get("DATABASE_URL")
    server = None
    if not admin_url:
        data_dir = Path(tempfile.mkdtemp(prefix="paylayer-bench-")) / "pgdata"
        server, admin_url = start_embedded(data_dir, delete_on_exit=True)
    name = f"paylayer_bench_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(plain(admin_url))
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    database_url = with_database(plain(admin_url), name)
    try:
        upgrade_all(database_url)
        yield database_url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if server is not None:
            server.cleanup()


def bench_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        internal_token="bench-" + secrets.token_hex(8),
        stripe_webhook_secrets=("whsec_bench_" + secrets.token_hex(16),),
        telegram_webhook_secret="bench-" + secrets.token_hex(8),
        telegram_bot_token="1:bench",
        catalogue_path=DEFAULT_CATALOGUE_PATH,
        shutdown_grace_seconds=2,
    )


@contextmanager
def running_stack(settings: Settings, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    stack = make_stack(
        settings, Path(tempfile.mkdtemp(prefix="paylayer-bench-logs-")), extra_env=extra_env
    )
    try:
        stack.start_all()
        stack.wait_until_up()
        yield stack
    finally:
        stack.stop_all()


async def run_load(calls: list[Callable[[], Awaitable[bool]]], concurrency: int) -> dict[str, Any]:
    """Run the calls from `concurrency` senders; each returns whether it succeeded."""
    latencies: list[float] = []
    failures = 0
    pending = iter(calls)

    async def sender() -> None:
        nonlocal failures
        for call in pending:
            started = time.perf_counter()
            ok = await call()
            latencies.append(time.perf_counter() - started)
            failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 2),
        "failures": failures,
    }
