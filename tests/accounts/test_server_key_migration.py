"""The migration that keyed MT5 accounts by server name keys them exactly as the code looks them
up, whatever spaces and letters the names already stored hold."""

from __future__ import annotations

import asyncio

import asyncpg

from accounts_service.rules import server_key
from paylayer.ops.migrations import upgrade
from tests.conftest import fresh_database

# Spellings SQL and Python would key apart: Unicode spaces around a name (Python strips them,
# `btrim` of ASCII spaces does not), and non-ASCII capitals (`lower` under a C collation keeps
# them).
SERVERS = [
    "Audit-Live",
    " audit-demo\t",
    "\u00a0Broker-Real\u2003",
    "\u3000ÄRGER-Live",
    "ÉCOLE-Demo\u2009",
]


def test_the_backfilled_keys_are_the_keys_the_code_computes(admin_database_url: str) -> None:
    with fresh_database(admin_database_url, migrated=False) as url:
        upgrade("accounts", url, "0001")

        async def stored_keys() -> dict[str, str]:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute("INSERT INTO accounts.users (user_id) VALUES ('u-1')")
                await connection.executemany(
                    "INSERT INTO accounts.accounts (login, server, user_id, account_type)"
                    " VALUES ($1, $2, 'u-1', 'demo')",
                    [(login, server) for login, server in enumerate(SERVERS, start=1)],
                )
                await asyncio.to_thread(upgrade, "accounts", url)
                rows = await connection.fetch("SELECT server, server_key FROM accounts.accounts")
                return {row["server"]: row["server_key"] for row in rows}
            finally:
                await connection.close()

        keys = asyncio.run(stored_keys())
    assert keys == {server: server_key(server) for server in SERVERS}
    assert keys["\u00a0Broker-Real\u2003"] == "broker-real"
    assert keys["\u3000ÄRGER-Live"] == "ärger-live"
