"""Alembic's env.py body, shared by every service's migration tree; each keeps its version
table inside its own schema. Running the trees is `paylayer.ops.migrations`."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from paylayer.db import async_url


def run_env(metadata: MetaData, schema: str) -> None:
    """The body of every service's `migrations/env.py`."""
    database_url = context.config.attributes["database_url"]

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        # Autogenerate must only ever see this service's own schema.
        return type_ != "schema" or name == schema

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(async_url(database_url), poolclass=pool.NullPool)
        try:
            async with engine.begin() as connection:
                # Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
                # when the schema exists, which a per-service role does not have.
                exists = await connection.scalar(
                    text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
                )
                if not exists:
                    await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())
