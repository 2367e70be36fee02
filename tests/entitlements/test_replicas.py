"""Two replicas on one database: a change through one is seen by the other within a second,
watchers hear every change, and losing the LISTEN connection never leaves a stale answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.server import build
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2
from protos.entitlements.v1.entitlements_pb2_grpc import EntitlementsServiceStub
from tests.entitlements.conftest import BEARER, check, new_user, paid, revoke_of
from tests.grpc_helpers import channel_to, serving

STALE_AT_MOST_SECONDS = 1.0


@pytest.fixture(scope="module")
async def replicas(settings: Settings) -> AsyncIterator[tuple[EntitlementsServiceStub, ...]]:
    async with AsyncExitStack() as stack:
        stubs = []
        for _ in range(2):
            addr = await stack.enter_async_context(serving(build(settings)))
            channel = await stack.enter_async_context(channel_to(addr, settings.internal_token))
            stubs.append(EntitlementsServiceStub(channel))
        await _until_watchable(stubs)
        yield tuple(stubs)


async def _until_watchable(stubs: list[EntitlementsServiceStub]) -> None:
    """A fresh replica refuses watchers until its listener has proved it hears changes."""
    for stub in stubs:
        for _ in range(100):
            call = stub.WatchEntitlements(
                entitlements_pb2.WatchEntitlementsRequest(heartbeats=True),
                timeout=5,
                metadata=BEARER,
            )
            try:
                await call.read()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
            finally:
                call.cancel()


async def _seconds_until_inactive(stub: EntitlementsServiceStub, user: str) -> float:
    started = time.monotonic()
    while (await stub.CheckEntitlement(check(user))).active:
        if time.monotonic() - started > 5:
            break
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_revoke_through_one_replica_is_seen_by_the_other_within_a_second(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    user = new_user()
    payment = paid(user, days=30)
    await a.GrantEntitlement(payment)
    for _ in range(3):  # B now answers from its cache
        assert (await b.CheckEntitlement(check(user))).active

    await a.RevokeEntitlement(revoke_of(payment))
    assert await _seconds_until_inactive(b, user) < STALE_AT_MOST_SECONDS


async def test_a_grant_through_one_replica_is_seen_by_the_other_within_a_second(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    user = new_user()
    assert not (await b.CheckEntitlement(check(user, "vip"))).active
    await a.GrantEntitlement(paid(user, "vip", days=30))
    started = time.monotonic()
    while not (await b.CheckEntitlement(check(user, "premium"))).active:
        assert time.monotonic() - started < STALE_AT_MOST_SECONDS
        await asyncio.sleep(0.01)


async def test_a_watcher_hears_the_grants_and_revokes_of_its_user_only(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    user, someone_else = new_user(), new_user()
    call = b.WatchEntitlements(
        entitlements_pb2.WatchEntitlementsRequest(user_id=user), timeout=10, metadata=BEARER
    )
    try:
        await asyncio.sleep(0.1)  # let the subscription reach the server
        await a.GrantEntitlement(paid(someone_else, days=30))
        payment = paid(user, "vip", days=30)
        await a.GrantEntitlement(payment)
        await a.RevokeEntitlement(revoke_of(payment))

        granted = await asyncio.wait_for(call.read(), 2)
        revoked = await asyncio.wait_for(call.read(), 2)
    finally:
        call.cancel()
    assert (granted.action, granted.user_id, granted.entitlement) == ("grant", user, "vip")
    assert granted.grant.source.reference == payment.source.reference
    assert (revoked.action, revoked.grant.revoked) == ("revoke", True)


async def test_a_watcher_of_everyone_hears_every_user_and_heartbeats_when_asked(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    users = [new_user(), new_user()]
    call = b.WatchEntitlements(
        entitlements_pb2.WatchEntitlementsRequest(heartbeats=True), timeout=10, metadata=BEARER
    )
    try:
        first = await asyncio.wait_for(call.read(), STALE_AT_MOST_SECONDS)
        assert first.action == "heartbeat"
        for user in users:
            await a.GrantEntitlement(paid(user, days=1))
        heard: list[str] = []
        while len(heard) < 2:
            change = await asyncio.wait_for(call.read(), 2)
            if change.action == "grant" and change.user_id in users:
                heard.append(change.user_id)
    finally:
        call.cancel()
    assert heard == users


async def test_losing_the_listen_connection_never_leaves_a_stale_answer(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub], engine: AsyncEngine
) -> None:
    a, b = replicas
    user = new_user()
    payment = paid(user, days=30)
    await a.GrantEntitlement(payment)
    assert (await b.CheckEntitlement(check(user))).active
    watcher = b.WatchEntitlements(
        entitlements_pb2.WatchEntitlementsRequest(heartbeats=True), timeout=10, metadata=BEARER
    )
    assert (await watcher.read()).action == "heartbeat"  # subscribed before the cut

    async with engine.connect() as connection:
        killed = await connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'entitlements-listener'"
                " AND datname = current_database()"
            )
        )
    assert killed >= 2
    await a.RevokeEntitlement(revoke_of(payment))
    assert await _seconds_until_inactive(b, user) < STALE_AT_MOST_SECONDS

    # Watchers are told they may have missed changes, so they can start afresh.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            await asyncio.wait_for(watcher.read(), 5)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE

    # Back in step: a later change is heard again.
    await _until_watchable([a, b])
    again = paid(user, days=30)
    await a.GrantEntitlement(again)
    assert (await b.CheckEntitlement(check(user))).active
    await a.RevokeEntitlement(revoke_of(again))
    assert await _seconds_until_inactive(b, user) < STALE_AT_MOST_SECONDS


async def test_stopping_a_replica_ends_its_watch_streams_at_once(settings: Settings) -> None:
    service = build(settings)
    port = await service.start("127.0.0.1:0")
    async with channel_to(f"127.0.0.1:{port}", settings.internal_token) as channel:
        stub = EntitlementsServiceStub(channel)
        await _until_watchable([stub])
        call = stub.WatchEntitlements(
            entitlements_pb2.WatchEntitlementsRequest(), timeout=30, metadata=BEARER
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await service.stop()
        stopped_in = time.monotonic() - started
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stopped_in < settings.shutdown_grace_seconds


async def test_a_grant_revoked_by_hand_in_sql_is_seen_within_a_second(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub], engine: AsyncEngine
) -> None:
    """An operator's UPDATE bypasses the service; the table's trigger still tells every cache."""
    a, b = replicas
    user = new_user()
    await a.GrantEntitlement(paid(user, days=30))
    for stub in (a, b):
        assert (await stub.CheckEntitlement(check(user))).active
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE entitlements.grants SET revoked_at = now() WHERE user_id = :user"),
            {"user": user},
        )
    for stub in (a, b):
        assert await _seconds_until_inactive(stub, user) < STALE_AT_MOST_SECONDS
