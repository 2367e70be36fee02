"""Each service's Alembic tree: at head its tables match the code, and it sees only its schema."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.ops.migrations import SERVICES, alembic_config, service_metadata, upgrade
from tests.conftest import fresh_database


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


@pytest.mark.parametrize("service", SERVICES)
def test_every_migration_downgrades_to_nothing_and_upgrades_again(
    admin_database_url: str, service: str
) -> None:
    """A release can be rolled back: each tree goes down to base and up to head again, on a
    database of its own, and ends where the code says."""
    with fresh_database(admin_database_url) as url:
        command.downgrade(alembic_config(service, url), "base")

        async def tables_left() -> set[str]:
            connection = await asyncpg.connect(url)
            try:
                rows = await connection.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
                    " AND table_name <> 'alembic_version'",
                    service,
                )
                return {row["table_name"] for row in rows}
            finally:
                await connection.close()

        assert asyncio.run(tables_left()) == set()
        upgrade(service, url)
        in_code = {name.split(".", 1)[1] for name in service_metadata(service).tables}
        assert asyncio.run(tables_left()) == in_code
