"""POST /api/v1/stripe/webhook: verify the signature, then have payments commit the event."""

from __future__ import annotations

import json
import logging
import time

import grpc
import stripe
from aiohttp import web

from gateway.keys import PAYMENTS, SETTINGS
from gateway.metrics import WEBHOOK_REJECTIONS
from paylayer.logs import request_id_var
from protos.payments.v1 import payments_pb2

log = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300


class Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _signed_at(header: str) -> int:
    """The timestamp the library verified, read by the library's own parser, so the two can
    never disagree on a header with spaces, repeated keys or odd numbers."""
    timestamp, _ = stripe.WebhookSignature._get_timestamp_and_signatures(
        header, stripe.WebhookSignature.EXPECTED_SCHEME
    )
    return int(timestamp)


def verify(body: bytes, header: str | None, secrets: tuple[str, ...], now: float) -> dict:
    """The event, once its signature matches one of the secrets and its time is within 300 s."""
    if not header:
        raise Rejected(400, "missing_signature", "missing Stripe-Signature header")
    if not header.isascii():
        # Stripe's comparison raises on non-ASCII text instead of failing the match.
        raise Rejected(400, "bad_signature", "signature does not match, or is too old")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, TOLERANCE_SECONDS)
            break
        except stripe.SignatureVerificationError:
            continue
        except UnicodeDecodeError:
            raise Rejected(400, "bad_body", "body is not UTF-8") from None
        except (TypeError, ValueError, OverflowError):
            # A header the library chokes on rather than refuses: still only a bad header.
            raise Rejected(400, "bad_signature", "malformed Stripe-Signature header") from None
    else:
        raise Rejected(400, "bad_signature", "signature does not match, or is too old")
    # The library bounds only the past; a timestamp far ahead is as suspect as one far behind.
    if _signed_at(header) > now + TOLERANCE_SECONDS:
        raise Rejected(400, "future_timestamp", "signature timestamp is in the future")
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python allows
        raise Rejected(400, "not_json", "signed body is not JSON") from None
    if not (
        isinstance(event, dict)
        and event.get("object") == "event"
        and isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    ):
        raise Rejected(400, "not_event", "signed body is not a Stripe event")
    return event


async def stripe_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        body = await request.read()
        event = verify(
            body,
            request.headers.get("Stripe-Signature"),
            settings.stripe_webhook_secrets,
            time.time(),
        )
    except web.HTTPRequestEntityTooLarge:
        WEBHOOK_REJECTIONS.labels("stripe", "too_large").inc()
        return web.json_response({"error": "body over 1 MiB"}, status=413)
    except Rejected as rejection:
        WEBHOOK_REJECTIONS.labels("stripe", rejection.reason).inc()
        return web.json_response({"error": rejection.message}, status=rejection.status)

    request_id_var.set(f"stripe:{event['id']}")
    try:
        # Stripe retries anything that is not 2xx; answering 503 well before its own timeout
        # keeps the retry fast and the gateway's connections free.
        reply = await request.app[PAYMENTS].HandleStripeEvent(
            payments_pb2.HandleStripeEventRequest(payload=body),
            timeout=settings.gateway_payments_deadline_seconds,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            WEBHOOK_REJECTIONS.labels("stripe", "invalid_event").inc()
            return web.json_response({"error": error.details()}, status=400)
        log.warning("payments could not record %s: %s", event["id"], error.code().name)
        return web.json_response({"error": "not recorded, retry later"}, status=503)
    log.info("recorded %s%s", event["type"], " (duplicate)" if reply.duplicate else "")
    return web.json_response({"received": True, "duplicate": reply.duplicate})
