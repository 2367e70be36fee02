"""Composition root of the entitlements service: units of work, use cases, cache, listener,
feed, gRPC kit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.cache import CheckCache
from entitlements_service.feed import ChangeFeed
from entitlements_service.listener import ChangeListener
from entitlements_service.rules import Grant
from entitlements_service.servicer import EntitlementsServicer
from entitlements_service.store import UnitOfWork
from entitlements_service.use_cases import Entitlements
from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_server import GrpcService
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc


@dataclass(frozen=True)
class Parts:
    """The service without its server: what `build` wires into the kit (and benchmarks reuse)."""

    engine: AsyncEngine
    servicer: EntitlementsServicer
    listener: ChangeListener
    feed: ChangeFeed


def compose(settings: Settings) -> Parts:
    engine = create_engine(
        settings.database_url,
        application_name="entitlements",
        max_connections=settings.database_pool_size,
    )
    catalogue = load_catalogue(settings.catalogue_path)
    granting_tiers = {tier: catalogue.granting_tiers(tier) for tier in catalogue.tier_closure}

    def begin() -> UnitOfWork:
        return UnitOfWork(engine)

    async def load_grants(user_id: str) -> list[Grant]:
        async with begin() as uow:
            return await uow.grants.grants_of_user(user_id, include_revoked=False)

    chats_by_tier = {tier: catalogue.chats_of(tier) for tier in catalogue.tier_closure}
    cache = CheckCache(load_grants, granting_tiers, chats_by_tier=chats_by_tier)
    feed = ChangeFeed()
    listener = ChangeListener(settings.database_url, cache, feed)
    entitlements = Entitlements(begin, cache, granting_tiers)
    servicer = EntitlementsServicer(entitlements, cache, feed)
    return Parts(engine=engine, servicer=servicer, listener=listener, feed=feed)


def build(settings: Settings) -> GrpcService:
    parts = compose(settings)

    async def end_watch_streams() -> None:
        parts.feed.interrupt("entitlements is shutting down; resubscribe")

    return GrpcService(
        name="entitlements",
        full_service_name=entitlements_pb2.DESCRIPTOR.services_by_name[
            "EntitlementsService"
        ].full_name,
        settings=settings,
        engine=parts.engine,
        add_servicer=lambda server: entitlements_pb2_grpc.add_EntitlementsServiceServicer_to_server(
            parts.servicer, server
        ),
        background=[parts.listener.run],
        on_draining=[end_watch_streams],
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
