"""`paylayer trigger`: realistic, signed provider webhooks posted to the gateway."""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

from paylayer.catalogue import load_catalogue
from paylayer.cli.common import UserError, settings
from paylayer.ops.factories import sign_stripe, stripe_event, telegram_update
from paylayer.settings import DEFAULT_ADDRS, Settings


def register(commands: argparse._SubParsersAction) -> None:
    trigger = commands.add_parser("trigger", help="post a realistic, signed webhook to the gateway")
    providers = trigger.add_subparsers(dest="provider", required=True)
    gateway_default = f"http://{DEFAULT_ADDRS['gateway']}"

    stripe_parser = providers.add_parser("stripe", help="a signed Stripe event")
    stripe_parser.add_argument("type", help="e.g. checkout.session.completed, charge.refunded")
    stripe_parser.add_argument("--telegram-user", type=int)
    stripe_parser.add_argument("--user-id")
    stripe_parser.add_argument("--sku")
    stripe_parser.add_argument("--payment-intent", help="reuse to describe the same purchase")
    stripe_parser.add_argument("--customer")
    stripe_parser.add_argument("--gateway", default=gateway_default)
    stripe_parser.set_defaults(run=_trigger_stripe)

    telegram_parser = providers.add_parser("telegram", help="a Telegram Stars update")
    telegram_parser.add_argument("kind", choices=["pre-checkout", "payment", "refund"])
    telegram_parser.add_argument("--user", type=int, required=True, help="Telegram user id")
    telegram_parser.add_argument("--sku", required=True)
    telegram_parser.add_argument("--charge", help="telegram_payment_charge_id (refund needs it)")
    telegram_parser.add_argument("--gateway", default=gateway_default)
    telegram_parser.set_defaults(run=_trigger_telegram)


async def _post(url: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(
                url, data=body.encode(), headers={"Content-Type": "application/json", **headers}
            ) as reply,
        ):
            return reply.status, await reply.text()
    except aiohttp.ClientError as error:
        raise UserError(f"cannot reach the gateway at {url}: {error}") from None


def refuse_when_live(config: Settings) -> None:
    """A signed fake webhook against a live deployment would grant real access for nothing."""
    if config.trigger_disabled:
        raise UserError("trigger is disabled in this image (PAYLAYER_TRIGGER_DISABLED is set)")
    if config.stripe_livemode:
        raise UserError("refusing to sign webhooks for a live deployment (Stripe live mode)")


def _trigger_stripe(args: argparse.Namespace) -> int:
    config = settings()
    refuse_when_live(config)
    if not config.stripe_webhook_secrets:
        raise UserError(
            "STRIPE_WEBHOOK_SECRETS is not set (and no `paylayer dev` secrets were found)"
        )
    catalogue = load_catalogue(config.catalogue_path)
    if args.sku and args.sku not in catalogue.skus:
        raise UserError(f"unknown sku {args.sku!r}; the catalogue has {', '.join(catalogue.skus)}")
    event = stripe_event(
        args.type,
        catalogue,
        sku=args.sku,
        telegram_user_id=args.telegram_user,
        user_id=args.user_id,
        customer=args.customer,
        payment_intent=args.payment_intent,
    )
    body = json.dumps(event)
    status, text = asyncio.run(
        _post(
            f"{args.gateway}/api/v1/stripe/webhook",
            body,
            {"Stripe-Signature": sign_stripe(body, config.stripe_webhook_secrets[0])},
        )
    )
    print(f"{event['type']} {event['id']} -> HTTP {status} {text}")
    return 0 if status == 200 else 1


def _trigger_telegram(args: argparse.Namespace) -> int:
    config = settings()
    refuse_when_live(config)
    if not config.telegram_webhook_secret:
        raise UserError(
            "TELEGRAM_WEBHOOK_SECRET is not set (and no `paylayer dev` secrets were found)"
        )
    if args.kind == "refund" and not args.charge:
        raise UserError("a refund names the payment: give --charge")
    catalogue = load_catalogue(config.catalogue_path)
    update = telegram_update(
        args.kind, catalogue, telegram_user_id=args.user, sku=args.sku, charge_id=args.charge
    )
    status, text = asyncio.run(
        _post(
            f"{args.gateway}/api/v1/telegram/webhook",
            json.dumps(update),
            {"X-Telegram-Bot-Api-Secret-Token": config.telegram_webhook_secret},
        )
    )
    print(f"update {update['update_id']} ({args.kind}) -> HTTP {status} {text}")
    return 0 if status == 200 else 1
