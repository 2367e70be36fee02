"""Composition root of the payments service: inbox, processor, downstream channels, Bot API."""

from __future__ import annotations

import logging

from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_client import open_channel
from paylayer.grpc_server import GrpcService
from paylayer.settings import ConfigError, Settings
from paylayer.tls import GrpcTls
from payments_service.bot_api import BotApi, BotApiError
from payments_service.channel_store import ChannelStore
from payments_service.channels import ChannelAccess
from payments_service.checkout import Checkout
from payments_service.downstream import Downstream
from payments_service.messages import MessagesFileError, load_texts
from payments_service.metrics import watch_inbox
from payments_service.outbox import ReceiptContext, Sender
from payments_service.processor import Processor
from payments_service.retention import forget_old_events
from payments_service.servicer import PaymentsServicer
from payments_service.store import Store
from payments_service.stripe_api import StripeApi
from protos.payments.v1 import payments_pb2, payments_pb2_grpc

log = logging.getLogger(__name__)


def build(settings: Settings) -> GrpcService:
    engine = create_engine(
        settings.database_url,
        application_name="payments",
        pool_size=20,
        max_connections=settings.database_pool_size,
    )
    catalogue = load_catalogue(settings.catalogue_path)
    try:
        texts = load_texts(settings.messages_path)
    except MessagesFileError as error:
        raise ConfigError(f"MESSAGES_PATH: {error}") from None
    tls = GrpcTls.from_settings(settings)
    accounts = open_channel(settings.accounts_addr, settings.internal_token, tls=tls)
    entitlements = open_channel(settings.entitlements_addr, settings.internal_token, tls=tls)
    bot = BotApi(settings.telegram_api_base, settings.telegram_bot_token)
    store = Store(engine)
    downstream = Downstream(accounts, entitlements)
    processor = Processor(
        store,
        downstream,
        catalogue,
        workers=settings.payments_workers,
        stripe_livemode=settings.stripe_livemode,
        database_url=settings.database_url,
    )
    channels = ChannelAccess(
        ChannelStore(engine),
        bot,
        catalogue,
        accounts,
        entitlements,
        interval_seconds=settings.channels_reconcile_seconds,
    )
    processor.channels = channels
    stripe_api = StripeApi(settings.stripe_api_key, settings.stripe_api_base)
    checkout = Checkout(
        store=store,
        processor=processor,
        catalogue=catalogue,
        stripe_api=stripe_api,
        bot=bot,
        accounts=accounts,
        success_url=settings.checkout_success_url,
        cancel_url=settings.checkout_cancel_url,
    )

    async def checkout_link(user_id: str, sku_name: str, message_id: int) -> str:
        url, _ = await checkout.create_checkout_session(
            user_id=user_id,
            telegram_user_id=0,
            sku_name=sku_name,
            success_url="",
            cancel_url="",
            request_id=f"renewal:{message_id}",
        )
        return url

    sender = Sender(
        engine,
        bot,
        downstream,
        catalogue,
        texts,
        checkout_link=checkout_link,
        # Shorter in fault tests, so a sender killed mid-call is noticed sooner.
        lease_seconds=settings.payments_outbox_lease_seconds,
    )
    processor.on_notices = sender.kick

    async def invite_lines(receipt: ReceiptContext) -> list[str]:
        """The buyer's own invite link to each chat of the tier they are not in yet."""
        if not channels.enabled:
            return []
        try:
            links = await channels.invite_links_for(
                receipt.user_id, receipt.entitlement, receipt.telegram_user_id
            )
        except BotApiError as error:
            # Telegram refused (the bot is no admin there, say): the receipt goes without the
            # link rather than never, and the bot can ask CreateInviteLinks later. Telegram away
            # (Unavailable) is raised: the receipt is then retried, links and all.
            log.warning("receipt without invite links for %s: %s", receipt.user_id, error)
            return []
        return [
            texts.line("invite", receipt.language, {"tier": receipt.entitlement, "link": link})
            for _, link in sorted(links.items())
        ]

    sender.receipt_extras.append(invite_lines)
    servicer = PaymentsServicer(store, processor, catalogue, bot, checkout, channels)

    async def close() -> None:
        await processor.drain()
        await accounts.close()
        await entitlements.close()
        await bot.close()
        await stripe_api.close()

    return GrpcService(
        name="payments",
        full_service_name=payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name,
        settings=settings,
        engine=engine,
        add_servicer=lambda server: payments_pb2_grpc.add_PaymentsServiceServicer_to_server(
            servicer, server
        ),
        background=[
            processor.run_workers,
            sender.run,
            lambda: watch_inbox(store),
            lambda: forget_old_events(store, settings.inbox_retention_days),
            channels.run_reconciler,
            channels.follow_entitlements,
        ],
        on_stop=[close],
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
