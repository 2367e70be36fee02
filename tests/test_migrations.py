"""Each service's Alembic tree: at head its tables match the code, and it sees only its schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.migrations import SERVICES, service_metadata


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_at_head_match_the_tables_in_code(
    engine: AsyncEngine, service: str
) -> None:
    metadata = service_metadata(service)

    def diff(connection) -> list:  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, parent: type_ != "schema" or name == service,
                "version_table_schema": service,
                "compare_type": True,
            },
        )
        return compare_metadata(context, metadata)

    async with engine.connect() as connection:
        assert await connection.run_sync(diff) == []


VERSION_TABLE_SCHEMAS = text(
    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
)


@pytest.mark.parametrize("service", SERVICES)
async def test_version_table_lives_in_the_services_own_schema(
    engine: AsyncEngine, service: str
) -> None:
    async with engine.connect() as connection:
        schemas = set(await connection.scalars(VERSION_TABLE_SCHEMAS))
    assert service in schemas
    assert "public" not in schemas
