"""How fast the outbox sends messages to users, against the local Bot API.

    .venv/bin/python -m benchmarks.outbox [--messages 2000] [--senders 2]

Rows are put in the outbox at once (failed-renewal notices: each a sendMessage and nothing
else, so the figure is of the outbox itself, not of the calls a receipt or reminder makes
first), then `--senders` senders, as that many payments replicas would run, send them all.
Reports messages per second and how many sendMessage calls Telegram got: exactly one per
message, whatever the number of senders.

Each sender paces its sends to Telegram's allowance of about 30 messages per second per bot,
so one sender tops out near 30/s: the figure to check is that it reaches that pace, and that
each message is sent once. PostgreSQL: DATABASE_URL when set (a fresh database is made there
and dropped after), else the embedded server. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.dialects.postgresql import insert  # noqa: E402

from benchmarks.check import create_database, drop_database  # noqa: E402
from paylayer.catalogue import load_catalogue  # noqa: E402
from paylayer.db import create_engine  # noqa: E402
from paylayer.embedded_pg import start_embedded  # noqa: E402
from paylayer.grpc_client import open_channel  # noqa: E402
from paylayer.ops.migrations import upgrade  # noqa: E402
from paylayer.settings import DEFAULT_CATALOGUE_PATH, DEFAULT_MESSAGES_PATH  # noqa: E402
from payments_service.bot_api import BotApi  # noqa: E402
from payments_service.downstream import Downstream  # noqa: E402
from payments_service.messages import load_texts  # noqa: E402
from payments_service.outbox import Sender  # noqa: E402
from payments_service.tables import messages  # noqa: E402
from tests.fakes.bot_api import FakeBotApi  # noqa: E402

TOKEN = "123456:BENCH"


async def measure(url: str, count: int, senders: int) -> dict[str, Any]:
    bot_api = FakeBotApi(token=TOKEN)
    bot_api.start()
    engine = create_engine(url, application_name="outbox-bench", pool_size=10)
    # Never called by these rows (their chat is known, and a notice checks no entitlement).
    nowhere = open_channel("127.0.0.1:1", "unused")
    try:
        rows = [
            {
                "dedupe_key": f"bench:{index}:{secrets.token_hex(4)}",
                "kind": "payment_failed",
                "user_id": f"user-{index}",
                "telegram_user_id": 10**9 + index,
                "language": "en",
                "params": {"sku": "premium_30d", "tier": "premium", "provider": "telegram"},
            }
            for index in range(count)
        ]
        async with engine.begin() as connection:
            await connection.execute(insert(messages), rows)
        texts = load_texts(DEFAULT_MESSAGES_PATH)
        catalogue = load_catalogue(DEFAULT_CATALOGUE_PATH)
        bots = [BotApi(bot_api.base_url, TOKEN) for _ in range(senders)]
        running = [
            asyncio.create_task(
                Sender(
                    engine, bot, Downstream(nowhere, nowhere), catalogue, texts, poll_seconds=0.05
                ).run()
            )
            for bot in bots
        ]
        started = time.perf_counter()
        while True:
            async with engine.connect() as connection:
                sent = await connection.scalar(
                    select(func.count()).select_from(messages).where(messages.c.status == "sent")
                )
            if sent == count:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for bot in bots:
            await bot.close()
        calls = len(bot_api.calls_of("sendMessage"))
        return {
            "benchmark": "outbox",
            "messages": count,
            "senders": senders,
            "seconds": round(elapsed, 2),
            "messages_per_second": round(count / elapsed, 1),
            "send_message_calls": calls,
            "each_sent_once": calls == count and len(bot_api.sent) == count,
        }
    finally:
        await nowhere.close()
        await engine.dispose()
        bot_api.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL", "").replace("postgresql+asyncpg://", "postgresql://")
    server = None
    if not admin_url:
        server, admin_url = start_embedded(
            Path(tempfile.mkdtemp(prefix="paylayer-bench-")) / "pgdata", delete_on_exit=True
        )
    url = await create_database(admin_url)
    try:
        await asyncio.to_thread(upgrade, "payments", url)
        return await measure(url, args.messages, args.senders)
    finally:
        await drop_database(admin_url, url)
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=2)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
