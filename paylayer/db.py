"""The async SQLAlchemy engine every service uses, built from `DATABASE_URL`."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def async_url(database_url: str) -> str:
    """Accept the plain `postgresql://` form people paste and pick the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def create_engine(
    database_url: str, *, application_name: str, pool_size: int = 10, max_connections: int = 0
) -> AsyncEngine:
    """`max_connections` (DATABASE_POOL_SIZE) bounds the pool exactly, so that replicas times
    pools stay under PostgreSQL's max_connections; unset, the pool may double under bursts."""
    return create_async_engine(
        async_url(database_url),
        pool_size=max_connections or pool_size,
        max_overflow=0 if max_connections else pool_size,
        # Parameters are customers' data: never in an exception's text, so never in a log.
        hide_parameters=True,
        # No pre-ping: it costs a round trip on every checkout. After a PostgreSQL restart the
        # first call on a dead connection fails and SQLAlchemy then drops the whole pool; the
        # callers (the inbox worker, the providers' own retries) try again.
        pool_timeout=5,
        connect_args={
            "server_settings": {"application_name": application_name},
            "timeout": 5,
            "command_timeout": 10,
        },
    )


async def database_answers(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
