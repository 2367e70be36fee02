"""The floor for webhooks: the gateway's own verification plus one transaction, one process.

`python -m benchmarks.floor` (DATABASE_URL, STRIPE_WEBHOOK_SECRETS, LISTEN_ADDR). Nothing of
the real stack runs here: it is what one aiohttp process can do at best. With
FLOOR_GRANTS=1 the same transaction also writes a grant row: the floor for applying.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import text

from gateway.stripe_webhook import Rejected, verify
from paylayer.db import create_engine
from paylayer.settings import Settings

ENGINE = web.AppKey("engine", object)
GRANTS = os.environ.get("FLOOR_GRANTS") == "1"
# One statement, so one transaction: the event is recorded and its grant written, or neither.
_RECORD_AND_GRANT = text(
    "WITH recorded AS (INSERT INTO bench_floor.inbox (event_id, payload) VALUES (:id, :payload)"
    " ON CONFLICT DO NOTHING RETURNING event_id)"
    " INSERT INTO bench_floor.grants (reference, user_ref, entitlement, ends_at)"
    " SELECT :reference, :user_ref, 'premium', now() + interval '30 days' FROM recorded"
    " ON CONFLICT DO NOTHING"
)


def init_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)

    async def database(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, application_name="floor")
        async with engine.begin() as connection:
            await connection.execute(text("CREATE SCHEMA IF NOT EXISTS bench_floor"))
            await connection.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS bench_floor.inbox "
                    "(event_id text PRIMARY KEY, payload bytea NOT NULL)"
                )
            )
            await connection.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS bench_floor.grants (reference text PRIMARY KEY,"
                    " user_ref text NOT NULL, entitlement text NOT NULL,"
                    " ends_at timestamptz NOT NULL, granted_at timestamptz NOT NULL DEFAULT now())"
                )
            )
        # One statement, one transaction, no BEGIN/COMMIT round trips: as the inbox does it.
        app[ENGINE] = engine.execution_options(isolation_level="AUTOCOMMIT")
        yield
        await engine.dispose()

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = verify(
                body,
                request.headers.get("Stripe-Signature"),
                settings.stripe_webhook_secrets,
                time.time(),
            )
        except Rejected as rejection:
            return web.json_response({"error": rejection.message}, status=rejection.status)
        if GRANTS:
            obj = event["data"]["object"]
            async with request.app[ENGINE].connect() as connection:  # type: ignore[attr-defined]
                await connection.execute(
                    _RECORD_AND_GRANT,
                    {
                        "id": event["id"],
                        "payload": body,
                        "reference": obj.get("payment_intent") or obj.get("id"),
                        "user_ref": str(obj.get("metadata", {}).get("telegram_user_id", "")),
                    },
                )
            return web.json_response({"received": True})
        async with request.app[ENGINE].connect() as connection:  # type: ignore[attr-defined]
            await connection.execute(
                text(
                    "INSERT INTO bench_floor.inbox (event_id, payload)"
                    " VALUES (:id, :payload) ON CONFLICT DO NOTHING"
                ),
                {"id": event["id"], "payload": body},
            )
        return web.json_response({"received": True})

    app.cleanup_ctx.append(database)
    app.router.add_post("/api/v1/stripe/webhook", webhook)
    return app


if __name__ == "__main__":
    settings = Settings.from_env()
    host, port = settings.listen_addr.rsplit(":", 1)
    web.run_app(init_app(settings), host=host, port=int(port), print=None, access_log=None)
