"""Pre-checkout answers: how fast the gateway answers Telegram's pre_checkout_query.

    .venv/bin/python -m benchmarks.precheckout [--queries 3000] [--concurrency 32]
        [--bot none|slow|down] [--bot-delay 3]

Each query goes through the real gateway and payments (validation against the catalogue)
and its answer comes back in the webhook reply. Prints JSON.

With `--bot`, the gateway has a bot behind it (`BOT_UPDATES_URL`) that answers each update
only after `--bot-delay` seconds (`slow`) or that nothing listens for (`down`): the gateway
copies every query to that bot, and the answers must not wait on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets

import aiohttp

from benchmarks.harness import bench_settings, fresh_database, run_load, running_stack
from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import telegram_update
from paylayer.ops.processes import free_port
from paylayer.ops.stack import Stack
from tests.fakes.bot_backend import FakeBotBackend

BAR_P99_MS = 50


async def measure(stack: Stack, queries: int, concurrency: int) -> dict[str, object]:
    catalogue = load_catalogue(stack.settings.catalogue_path)
    url = f"{stack.gateway_url}/api/v1/telegram/webhook"
    headers = {
        "X-Telegram-Bot-Api-Secret-Token": stack.settings.telegram_webhook_secret,
        "Content-Type": "application/json",
    }
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        def query(update_id: int):  # type: ignore[no-untyped-def]
            body = json.dumps(
                telegram_update(
                    "pre-checkout",
                    catalogue,
                    telegram_user_id=secrets.randbelow(10**12) + 1,
                    sku=("premium_30d", "vip_30d")[update_id % 2],
                    update_id=update_id,
                )
            ).encode()

            async def call() -> bool:
                async with session.post(url, data=body, headers=headers) as reply:
                    answer = await reply.json()
                return reply.status == 200 and answer.get("ok") is True

            return call

        await run_load([query(i) for i in range(200)], concurrency)  # warm-up
        return await run_load([query(1000 + i) for i in range(queries)], concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bot", choices=["none", "slow", "down"], default="none")
    parser.add_argument("--bot-delay", type=float, default=3.0, help="seconds, with --bot slow")
    args = parser.parse_args()
    bot = FakeBotBackend(delay=args.bot_delay)
    extra_env = {}
    if args.bot != "none":
        # Down: a port nothing listens on, so every copy is refused at once.
        url = bot.url if args.bot == "slow" else f"http://127.0.0.1:{free_port()}/updates"
        extra_env = {"BOT_UPDATES_URL": url, "BOT_UPDATES_SECRET": secrets.token_urlsafe(16)}
    if args.bot == "slow":
        bot.start()
    try:
        with (
            fresh_database() as database_url,
            running_stack(bench_settings(database_url), extra_env) as stack,
        ):
            result = asyncio.run(measure(stack, args.queries, args.concurrency))
    finally:
        bot.stop()
    result.update(
        concurrency=args.concurrency,
        bot=args.bot if args.bot != "slow" else f"slow ({args.bot_delay:g} s)",
        bot_saw=len(bot.received),
        bar={
            "p99_at_most_50_ms": result["p99_ms"] <= BAR_P99_MS,
            "all_accepted": result["failures"] == 0,
        },
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
