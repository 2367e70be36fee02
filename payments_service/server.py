"""Composition root of the payments service: inbox, processor, downstream channels, Bot API."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_client import open_channel
from paylayer.grpc_server import GrpcService
from paylayer.settings import ConfigError, Settings
from paylayer.tls import GrpcTls
from payments_service.bot_api import BotApi, BotApiError
from payments_service.bot_limits import RateLimiter
from payments_service.channel_store import ChannelStore
from payments_service.channels import ChannelAccess
from payments_service.checkout import Checkout
from payments_service.downstream import Downstream
from payments_service.messages import MessagesFileError, Texts, load_texts
from payments_service.metrics import watch_inbox
from payments_service.outbox import ReceiptContext, ReceiptExtra, Sender
from payments_service.processor import Processor
from payments_service.retention import forget_old_events
from payments_service.servicer import PaymentsServicer
from payments_service.store import Store
from payments_service.stripe_api import StripeApi
from payments_service.unit_of_work import UnitOfWork
from protos.payments.v1 import payments_pb2, payments_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Clients:
    """What this service calls: the other two services and Telegram's and Stripe's APIs."""

    accounts: grpc.aio.Channel
    entitlements: grpc.aio.Channel
    bot: BotApi
    # One allowance for every call made as the bot: messages and membership calls alike.
    bot_limits: RateLimiter
    stripe_api: StripeApi

    async def close(self) -> None:
        await self.accounts.close()
        await self.entitlements.close()
        await self.bot.close()
        await self.stripe_api.close()


def build(settings: Settings) -> GrpcService:
    engine = _engine(settings)
    catalogue = load_catalogue(settings.catalogue_path)
    texts = _texts(settings)
    clients = _clients(settings)
    store = Store(engine)
    downstream = Downstream(clients.accounts, clients.entitlements)
    processor = _processor(settings, engine, store, downstream, catalogue)
    channels = _channel_access(settings, engine, clients, catalogue)
    processor.channels = channels
    checkout = _checkout(settings, store, processor, catalogue, clients)
    sender = _outbox_sender(settings, engine, clients, downstream, catalogue, texts, checkout)
    sender.receipt_extras.append(_invite_lines(channels, texts))
    processor.on_notices = sender.kick
    servicer = PaymentsServicer(store, processor, catalogue, clients.bot, checkout, channels)
    return _service(settings, engine, servicer, store, processor, sender, channels, clients)


# --- engine and stores ---------------------------------------------------------------------------


def _engine(settings: Settings) -> AsyncEngine:
    return create_engine(
        settings.database_url,
        application_name="payments",
        pool_size=20,
        max_connections=settings.database_pool_size,
    )


def _texts(settings: Settings) -> Texts:
    try:
        return load_texts(settings.messages_path)
    except MessagesFileError as error:
        raise ConfigError(f"MESSAGES_PATH: {error}") from None


# --- downstream clients --------------------------------------------------------------------------


def _clients(settings: Settings) -> _Clients:
    tls = GrpcTls.from_settings(settings)
    return _Clients(
        accounts=open_channel(settings.accounts_addr, settings.internal_token, tls=tls),
        entitlements=open_channel(settings.entitlements_addr, settings.internal_token, tls=tls),
        bot=BotApi(settings.telegram_api_base, settings.telegram_bot_token),
        bot_limits=RateLimiter(),
        stripe_api=StripeApi(settings.stripe_api_key, settings.stripe_api_base),
    )


# --- processor, channels and checkout ------------------------------------------------------------


def _processor(
    settings: Settings,
    engine: AsyncEngine,
    store: Store,
    downstream: Downstream,
    catalogue: Catalogue,
) -> Processor:
    return Processor(
        store,
        downstream,
        catalogue,
        workers=settings.payments_workers,
        stripe_livemode=settings.stripe_livemode,
        database_url=settings.database_url,
        begin=lambda: UnitOfWork(engine),
    )


def _channel_access(
    settings: Settings, engine: AsyncEngine, clients: _Clients, catalogue: Catalogue
) -> ChannelAccess:
    return ChannelAccess(
        ChannelStore(engine),
        clients.bot,
        catalogue,
        clients.accounts,
        clients.entitlements,
        interval_seconds=settings.channels_reconcile_seconds,
        limiter=clients.bot_limits,
    )


def _checkout(
    settings: Settings,
    store: Store,
    processor: Processor,
    catalogue: Catalogue,
    clients: _Clients,
) -> Checkout:
    return Checkout(
        store=store,
        processor=processor,
        catalogue=catalogue,
        stripe_api=clients.stripe_api,
        bot=clients.bot,
        accounts=clients.accounts,
        success_url=settings.checkout_success_url,
        cancel_url=settings.checkout_cancel_url,
    )


# --- the outbox's sender -------------------------------------------------------------------------


def _outbox_sender(
    settings: Settings,
    engine: AsyncEngine,
    clients: _Clients,
    downstream: Downstream,
    catalogue: Catalogue,
    texts: Texts,
    checkout: Checkout,
) -> Sender:
    return Sender(
        engine,
        clients.bot,
        downstream,
        catalogue,
        texts,
        checkout_link=_renewal_link(checkout),
        limiter=clients.bot_limits,
        # Shorter in fault tests, so a sender killed mid-call is noticed sooner.
        lease_seconds=settings.payments_outbox_lease_seconds,
    )


def _renewal_link(checkout: Checkout) -> Callable[[str, str, int], Awaitable[str]]:
    """A reminder's link to pay for the next period: a Checkout session of its own."""

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

    return checkout_link


def _invite_lines(channels: ChannelAccess, texts: Texts) -> ReceiptExtra:
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

    return invite_lines


# --- servicer and server -------------------------------------------------------------------------


def _service(
    settings: Settings,
    engine: AsyncEngine,
    servicer: PaymentsServicer,
    store: Store,
    processor: Processor,
    sender: Sender,
    channels: ChannelAccess,
    clients: _Clients,
) -> GrpcService:
    async def close() -> None:
        await processor.drain()
        await clients.close()

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
