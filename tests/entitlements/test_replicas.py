"""Two replicas on one database: a change through one is seen by the other, watchers hear every
change, and losing the LISTEN connection never leaves a stale answer.

How soon is a benchmark's business; here every wait is a poll with a generous deadline. The
replicas own their database, since a test here cuts their LISTEN connections."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.server import build
from paylayer.db import create_engine
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2
from protos.entitlements.v1.entitlements_pb2_grpc import EntitlementsServiceStub
from tests.conftest import fresh_database
from tests.entitlements.conftest import BEARER, check, new_user, paid, revoke_of
from tests.grpc_helpers import channel_to, serving

# Deadlines for polls, not promises: far above any healthy figure.
WITHIN_SECONDS = 30.0


@pytest.fixture(scope="module")
def replicas_settings(settings: Settings, admin_database_url: str) -> Iterator[Settings]:
    with fresh_database(admin_database_url) as url:
        yield dataclasses.replace(settings, database_url=url)


@pytest.fixture(scope="module")
async def replicas_engine(replicas_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(replicas_settings.database_url, application_name="replica-tests")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def replicas(
    replicas_settings: Settings,
) -> AsyncIterator[tuple[EntitlementsServiceStub, ...]]:
    settings = replicas_settings
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


async def _until_active(
    stub: EntitlementsServiceStub, user: str, active: bool, entitlement: str = "premium"
) -> bool:
    """Poll until the replica's answer is `active`; the last answer seen."""
    deadline = time.monotonic() + WITHIN_SECONDS
    while True:
        answer = (await stub.CheckEntitlement(check(user, entitlement))).active
        if answer == active or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.01)


async def _next_change(call: grpc.aio.UnaryStreamCall) -> entitlements_pb2.EntitlementChange:
    """The next message that is not a heartbeat."""
    while True:
        change = await asyncio.wait_for(call.read(), WITHIN_SECONDS)
        if change.action != "heartbeat":
            return change


async def test_a_revoke_through_one_replica_is_seen_by_the_other(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    user = new_user()
    payment = paid(user, days=30)
    await a.GrantEntitlement(payment)
    for _ in range(3):  # B now answers from its cache
        assert (await b.CheckEntitlement(check(user))).active

    await a.RevokeEntitlement(revoke_of(payment))
    assert await _until_active(b, user, False) is False


async def test_a_grant_through_one_replica_is_seen_by_the_other(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    user = new_user()
    assert not (await b.CheckEntitlement(check(user, "vip"))).active
    await a.GrantEntitlement(paid(user, "vip", days=30))
    assert await _until_active(b, user, True) is True  # vip includes premium


async def test_a_watcher_hears_the_grants_and_revokes_of_its_user_only(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
) -> None:
    a, b = replicas
    user, someone_else = new_user(), new_user()
    call = b.WatchEntitlements(
        entitlements_pb2.WatchEntitlementsRequest(user_id=user, heartbeats=True),
        timeout=60,
        metadata=BEARER,
    )
    try:
        # The first heartbeat says the subscription is live: nothing after it can be missed.
        assert (await asyncio.wait_for(call.read(), WITHIN_SECONDS)).action == "heartbeat"
        await a.GrantEntitlement(paid(someone_else, days=30))
        payment = paid(user, "vip", days=30)
        await a.GrantEntitlement(payment)
        await a.RevokeEntitlement(revoke_of(payment))

        granted = await _next_change(call)
        revoked = await _next_change(call)
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
        entitlements_pb2.WatchEntitlementsRequest(heartbeats=True), timeout=60, metadata=BEARER
    )
    try:
        first = await asyncio.wait_for(call.read(), WITHIN_SECONDS)
        assert first.action == "heartbeat"
        for user in users:
            await a.GrantEntitlement(paid(user, days=1))
        heard: list[str] = []
        while len(heard) < 2:
            change = await _next_change(call)
            if change.action == "grant" and change.user_id in users:
                heard.append(change.user_id)
    finally:
        call.cancel()
    assert heard == users


async def test_losing_the_listen_connection_never_leaves_a_stale_answer(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
    replicas_engine: AsyncEngine,
) -> None:
    a, b = replicas
    user = new_user()
    payment = paid(user, days=30)
    await a.GrantEntitlement(payment)
    assert (await b.CheckEntitlement(check(user))).active
    watcher = b.WatchEntitlements(
        entitlements_pb2.WatchEntitlementsRequest(heartbeats=True), timeout=60, metadata=BEARER
    )
    assert (await watcher.read()).action == "heartbeat"  # subscribed before the cut

    async with replicas_engine.connect() as connection:
        killed = await connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'entitlements-listener'"
                " AND datname = current_database()"
            )
        )
    assert killed == 2  # the two replicas' own, and nobody else's
    await a.RevokeEntitlement(revoke_of(payment))
    assert await _until_active(b, user, False) is False

    # Watchers are told they may have missed changes, so they can start afresh.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            await asyncio.wait_for(watcher.read(), WITHIN_SECONDS)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE

    # Back in step: a later change is heard again.
    await _until_watchable([a, b])
    again = paid(user, days=30)
    await a.GrantEntitlement(again)
    assert (await b.CheckEntitlement(check(user))).active
    await a.RevokeEntitlement(revoke_of(again))
    assert await _until_active(b, user, False) is False


async def test_stopping_a_replica_ends_its_watch_streams_instead_of_waiting_them_out(
    settings: Settings,
) -> None:
    """With a grace far longer than the wait below, a stop held up by an endless stream would
    never finish in time: the stream is ended by the stop itself, and told UNAVAILABLE."""
    service = build(dataclasses.replace(settings, shutdown_grace_seconds=600))
    port = await service.start("127.0.0.1:0")
    async with channel_to(f"127.0.0.1:{port}", settings.internal_token) as channel:
        stub = EntitlementsServiceStub(channel)
        await _until_watchable([stub])
        call = stub.WatchEntitlements(
            entitlements_pb2.WatchEntitlementsRequest(heartbeats=True), timeout=60, metadata=BEARER
        )
        assert (await asyncio.wait_for(call.read(), WITHIN_SECONDS)).action == "heartbeat"
        await asyncio.wait_for(service.stop(), WITHIN_SECONDS)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await asyncio.wait_for(call.read(), WITHIN_SECONDS)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_grant_revoked_by_hand_in_sql_is_seen_by_every_replica(
    replicas: tuple[EntitlementsServiceStub, EntitlementsServiceStub],
    replicas_engine: AsyncEngine,
) -> None:
    """An operator's UPDATE bypasses the service; the table's trigger still tells every cache."""
    a, b = replicas
    user = new_user()
    await a.GrantEntitlement(paid(user, days=30))
    for stub in (a, b):
        assert (await stub.CheckEntitlement(check(user))).active
    async with replicas_engine.begin() as connection:
        await connection.execute(
            text("UPDATE entitlements.grants SET revoked_at = now() WHERE user_id = :user"),
            {"user": user},
        )
    for stub in (a, b):
        assert await _until_active(stub, user, False) is False
