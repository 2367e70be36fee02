"""The client internal callers use: deadlines, retry on UNAVAILABLE only, a cache kept fresh."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from datetime import UTC

import grpc
import pytest

from entitlements_service.client import EntitlementsClient, expires_at
from entitlements_service.server import build
from paylayer.settings import Settings
from tests.entitlements.conftest import DAY, new_user, paid, revoke_of
from tests.grpc_helpers import serving


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_grant_check_and_revoke_through_the_client(
    entitlements_addr: str, settings: Settings
) -> None:
    user = new_user()
    request = paid(user, "vip", days=30)
    async with EntitlementsClient(entitlements_addr, settings.internal_token) as client:
        assert (await client.grant(request)).created
        answer = await client.check(user, "premium")
        assert answer.active
        assert expires_at(answer) == request.purchased_at.ToDatetime(tzinfo=UTC) + 30 * DAY
        await client.revoke(revoke_of(request))
        assert not (await client.check(user, "premium")).active
        assert [g.revoked for g in (await client.list(user, include_revoked=True)).grants] == [True]


async def test_a_call_made_while_the_server_is_starting_succeeds_by_retrying(
    settings: Settings,
) -> None:
    port = _free_port()
    async with EntitlementsClient(
        f"127.0.0.1:{port}", settings.internal_token, deadline=6.0, attempts=10
    ) as client:
        early = asyncio.create_task(client.check(new_user(), "premium"))
        await asyncio.sleep(0.3)
        service = build(settings)
        await service.start(f"127.0.0.1:{port}")
        try:
            answer = await early
        finally:
            await service.stop()
    assert not answer.active


async def test_an_invalid_argument_is_not_retried(
    entitlements_addr: str, settings: Settings
) -> None:
    async with EntitlementsClient(
        entitlements_addr, settings.internal_token, deadline=5.0, attempts=10
    ) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.check("", "premium")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 0.5


async def test_a_call_to_nobody_gives_up_at_its_deadline(settings: Settings) -> None:
    async with EntitlementsClient(
        f"127.0.0.1:{_free_port()}", settings.internal_token, deadline=0.5
    ) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.check(new_user(), "premium")
    assert raised.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    assert time.monotonic() - started < 1.5


async def test_the_local_cache_sees_a_revoke_made_elsewhere_within_a_second(
    settings: Settings,
) -> None:
    async with (
        serving(build(settings)) as replica_a,
        serving(build(settings)) as replica_b,
        EntitlementsClient(replica_a, settings.internal_token) as writer,
        EntitlementsClient(replica_b, settings.internal_token, local_cache=True) as reader,
    ):
        user = new_user()
        payment = paid(user, days=30)
        await writer.grant(payment)
        for _ in range(200):  # until the reader's watch is up and its answer cached
            if (await reader.check(user, "premium")).active and reader.cached(user):
                break
            await asyncio.sleep(0.02)
        assert reader.cached(user)

        await writer.revoke(revoke_of(payment))
        started = time.monotonic()
        while (await reader.check(user, "premium")).active:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.01)


async def test_a_service_without_its_database_answers_unavailable_so_callers_retry(
    settings: Settings,
) -> None:
    unreachable = replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{_free_port()}/nowhere"
    )
    async with (
        serving(build(unreachable)) as addr,
        EntitlementsClient(addr, settings.internal_token, deadline=8.0, attempts=2) as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.check(new_user(), "premium")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
