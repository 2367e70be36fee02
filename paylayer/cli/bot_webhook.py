"""`paylayer telegram set-webhook URL`, and the webhook's state for `paylayer health`.

The gateway is the bot's one webhook, so these talk to Telegram's Bot API directly with
`TELEGRAM_BOT_TOKEN` (at `TELEGRAM_API_BASE`), not through any service.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp

from paylayer.cli.common import UserError, add_json_flag, print_json, settings
from paylayer.settings import Settings

# What the layer and a bot behind it need. Payments come as `pre_checkout_query` and as
# messages (`successful_payment`, `refunded_payment`); channel access needs
# `chat_join_request` and `chat_member`, which Telegram sends only when asked for by name.
ALLOWED_UPDATES = (
    "message",
    "edited_message",
    "callback_query",
    "inline_query",
    "pre_checkout_query",
    "chat_join_request",
    "chat_member",
    "my_chat_member",
)
BOT_API_DEADLINE_SECONDS = 10.0


class BotApiFailed(Exception):
    """Telegram (or the way to it) did not do what was asked; the message says why."""


async def call_bot_api(
    config: Settings,
    method: str,
    params: dict[str, Any],
    deadline: float = BOT_API_DEADLINE_SECONDS,
) -> Any:
    if not config.telegram_bot_token:
        raise BotApiFailed("TELEGRAM_BOT_TOKEN is not set")
    url = f"{config.telegram_api_base}/bot{config.telegram_bot_token}/{method}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=deadline)) as session,
            session.post(url, json=params) as reply,
        ):
            answer = await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        # Never the URL in the message: it carries the bot token.
        raise BotApiFailed(f"Bot API unreachable ({type(error).__name__})") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        description = answer.get("description") if isinstance(answer, dict) else None
        raise BotApiFailed(f"{method} failed: {description or 'no description'}")
    return answer.get("result")


def register(telegram: argparse._SubParsersAction) -> None:
    set_webhook_parser = telegram.add_parser(
        "set-webhook", help="point the bot's webhook at the gateway (with the secret token)"
    )
    set_webhook_parser.add_argument(
        "url", help="the gateway's public URL, e.g. https://pay.example.com/api/v1/telegram/webhook"
    )
    set_webhook_parser.add_argument(
        "--drop-pending-updates", action="store_true", help="discard updates Telegram holds"
    )
    add_json_flag(set_webhook_parser)
    set_webhook_parser.set_defaults(run=set_webhook)


def set_webhook(args: argparse.Namespace) -> int:
    config = settings()
    if not config.telegram_webhook_secret:
        raise UserError("TELEGRAM_WEBHOOK_SECRET is not set: the gateway would refuse every update")
    params: dict[str, Any] = {
        "url": args.url,
        "secret_token": config.telegram_webhook_secret,
        "allowed_updates": list(ALLOWED_UPDATES),
    }
    if args.drop_pending_updates:
        params["drop_pending_updates"] = True
    try:
        asyncio.run(call_bot_api(config, "setWebhook", params))
    except BotApiFailed as error:
        raise UserError(str(error)) from None
    if args.json:
        print_json({"url": args.url, "allowed_updates": list(ALLOWED_UPDATES)})
    else:
        print(f"webhook set: {args.url}")
        print(f"  updates: {', '.join(ALLOWED_UPDATES)}")
    return 0


async def webhook_state(config: Settings) -> dict[str, Any]:
    """getWebhookInfo's pending count and last error, or why it could not be asked."""
    try:
        # Short: a health check must not hang on a Telegram that cannot be reached.
        info = await call_bot_api(config, "getWebhookInfo", {}, deadline=3.0)
    except BotApiFailed as error:
        return {"error": str(error)}
    if not isinstance(info, dict):
        return {"error": "getWebhookInfo gave no WebhookInfo"}
    return {
        "url": info.get("url", ""),
        "pending_update_count": info.get("pending_update_count", 0),
        "last_error_message": info.get("last_error_message", ""),
    }


def describe_webhook(state: dict[str, Any]) -> str:
    if "error" in state:
        return f"UNKNOWN ({state['error']})"
    if not state["url"]:
        return "NOT SET"
    text = f"{state['pending_update_count']} pending"
    if state["last_error_message"]:
        text += f", last error: {state['last_error_message']}"
    return text
