"""POST /api/v1/telegram/webhook: check the secret token, hand the update to payments or the bot.

A pre-checkout query is answered in the response body (Telegram's webhook reply), so the
answer costs no extra round trip and always comes well inside Telegram's 10 s. Join requests
and membership changes are recorded by payments (channel access), then relayed to the bot.
Every other update belongs to the product's bot (`gateway.bot_forward`).
"""

from __future__ import annotations

import hmac
import json
import logging

import grpc
from aiohttp import web

from gateway.bot_forward import is_channel_update, is_payment_update
from gateway.keys import BOT_FORWARDER, PAYMENTS, SETTINGS
from gateway.metrics import WEBHOOK_REJECTIONS
from paylayer.logs import request_id_var
from protos.payments.v1 import payments_pb2

log = logging.getLogger(__name__)

TRY_AGAIN = "Payments are busy right now. Please try again in a minute."


def _pre_checkout_reply(query_id: str, ok: bool, error_message: str = "") -> web.Response:
    answer: dict[str, object] = {
        "method": "answerPreCheckoutQuery",
        "pre_checkout_query_id": query_id,
        "ok": ok,
    }
    if not ok:
        answer["error_message"] = error_message
    return web.json_response(answer)


async def telegram_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    token = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if not hmac.compare_digest(token.encode(), settings.telegram_webhook_secret.encode()):
        WEBHOOK_REJECTIONS.labels("telegram", "bad_secret").inc()
        return web.json_response({"error": "wrong secret token"}, status=401)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        WEBHOOK_REJECTIONS.labels("telegram", "too_large").inc()
        return web.json_response({"error": "body over 1 MiB"}, status=413)
    try:
        update = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        update = None
    if not (
        isinstance(update, dict)
        and isinstance(update.get("update_id"), int)
        and not isinstance(update.get("update_id"), bool)
    ):
        WEBHOOK_REJECTIONS.labels("telegram", "not_update").inc()
        return web.json_response({"error": "body is not a Telegram update"}, status=400)

    request_id_var.set(f"telegram:{update['update_id']}")
    forwarder = request.app[BOT_FORWARDER]
    channel_update = is_channel_update(update)
    if not is_payment_update(update) and not channel_update:
        if forwarder is None:
            return web.json_response({"ok": True})
        return await forwarder.relay(body)
    query = update.get("pre_checkout_query")
    try:
        reply = await request.app[PAYMENTS].HandleTelegramUpdate(
            payments_pb2.HandleTelegramUpdateRequest(payload=body),
            timeout=settings.gateway_payments_deadline_seconds,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            WEBHOOK_REJECTIONS.labels("telegram", "invalid_update").inc()
            return web.json_response({"error": error.details()}, status=400)
        log.warning("payments could not take update %s: %s", update["update_id"], error.code().name)
        if isinstance(query, dict) and isinstance(query.get("id"), str):
            # Never leave the buyer waiting: a clear "no" now beats Telegram's timeout.
            return _pre_checkout_reply(query["id"], False, TRY_AGAIN)
        return web.json_response({"error": "not recorded, retry later"}, status=503)
    if forwarder is not None and channel_update:
        # Recorded first; then the bot's to answer, as for any update that is not a payment.
        return await forwarder.relay(body)
    if forwarder is not None:
        # Recorded (or answered) first; the bot's copy never delays Telegram's answer.
        forwarder.copy_later(body)
    if reply.HasField("event"):
        log.info("recorded %s%s", reply.event.event_type, " (duplicate)" if reply.duplicate else "")
    if reply.HasField("pre_checkout"):
        answer = reply.pre_checkout
        return _pre_checkout_reply(answer.pre_checkout_query_id, answer.ok, answer.error_message)
    return web.json_response({"ok": True})
