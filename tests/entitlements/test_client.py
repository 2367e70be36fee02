"""The client internal callers use: deadlines, retry on UNAVAILABLE only, a cache kept fresh."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from entitlements_service.client import EntitlementsClient, expires_at
from entitlements_service.server import build
from paylayer.ops.processes import free_port
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.entitlements.conftest import DAY, new_user, paid, revoke_of
from tests.grpc_helpers import serving


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
    port = free_port()
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


def _served(code: str) -> float:
    """CheckEntitlement calls the in-process servers answered with `code`, from their metrics."""
    labels = {"service": "entitlements", "method": "CheckEntitlement", "code": code}
    return REGISTRY.get_sample_value("paylayer_grpc_server_handled_total", labels) or 0.0


async def test_an_invalid_argument_is_not_retried(
    entitlements_addr: str, settings: Settings
) -> None:
    before = _served("INVALID_ARGUMENT")
    async with EntitlementsClient(
        entitlements_addr, settings.internal_token, deadline=5.0, attempts=10
    ) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.check("", "premium")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _served("INVALID_ARGUMENT") - before == 1  # the server heard it once


async def test_a_call_to_nobody_gives_up_instead_of_hanging(settings: Settings) -> None:
    async with EntitlementsClient(
        f"127.0.0.1:{free_port()}", settings.internal_token, deadline=0.5
    ) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            # Generous: only a client that never gives up fails this.
            await asyncio.wait_for(client.check(new_user(), "premium"), 30)
    assert raised.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


async def test_the_local_cache_sees_a_revoke_made_elsewhere(
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
        deadline = time.monotonic() + 30
        while (await reader.check(user, "premium")).active:
            assert time.monotonic() < deadline, "the cache kept a revoked grant"
            await asyncio.sleep(0.01)


async def test_the_local_cache_is_dropped_when_heartbeats_stop(settings: Settings) -> None:
    """Its server gone, the client must not keep answering from memory: it asks, and fails."""
    async with serving(build(settings)) as writer_addr:
        reader_service = build(settings)
        reader_port = await reader_service.start("127.0.0.1:0")
        async with (
            EntitlementsClient(writer_addr, settings.internal_token) as writer,
            EntitlementsClient(
                f"127.0.0.1:{reader_port}", settings.internal_token, local_cache=True, attempts=1
            ) as reader,
        ):
            user = new_user()
            await writer.grant(paid(user, days=30))
            deadline = time.monotonic() + 30
            while not ((await reader.check(user, "premium")).active and reader.cached(user)):
                assert time.monotonic() < deadline, "the answer was never cached"
                await asyncio.sleep(0.02)
            await reader_service.stop()
            deadline = time.monotonic() + 30
            while reader.cached(user):
                assert time.monotonic() < deadline, "a cached answer outlived its heartbeats"
                await asyncio.sleep(0.02)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await reader.check(user, "premium")
    assert raised.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


class FallsSilent(entitlements_pb2_grpc.EntitlementsServiceServicer):
    """A server whose watch stream stays open but, once told, sends nothing more: a process
    frozen, or a proxy holding a dead connection. Its check answers tell which state it is in."""

    def __init__(self) -> None:
        self.silent = asyncio.Event()
        self.checks_answered = 0
        self.streams_opened = 0
        self.streams_ended = 0

    async def WatchEntitlements(
        self, request: entitlements_pb2.WatchEntitlementsRequest, context: Any
    ) -> AsyncIterator[entitlements_pb2.EntitlementChange]:
        self.streams_opened += 1
        try:
            while not self.silent.is_set():
                yield entitlements_pb2.EntitlementChange(action="heartbeat")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.silent.wait(), 0.1)
            await asyncio.Event().wait()  # open, and never another word
        finally:
            self.streams_ended += 1

    async def CheckEntitlement(
        self, request: entitlements_pb2.CheckEntitlementRequest, context: Any
    ) -> entitlements_pb2.CheckEntitlementResponse:
        self.checks_answered += 1
        # The truth moves on while the stream says nothing: a revoke no heartbeat will carry.
        return entitlements_pb2.CheckEntitlementResponse(active=not self.silent.is_set())


async def test_the_local_cache_is_dropped_when_an_open_stream_goes_silent() -> None:
    """No error, no end of stream, just no heartbeats: the client stops trusting its memory
    and asks the server, so an answer that changed meanwhile reaches the caller."""
    servicer = FallsSilent()
    server = grpc.aio.server()
    entitlements_pb2_grpc.add_EntitlementsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with EntitlementsClient(
            f"127.0.0.1:{port}", "the-token", local_cache=True, attempts=1
        ) as reader:
            user = new_user()
            deadline = time.monotonic() + 30
            while not ((await reader.check(user, "premium")).active and reader.cached(user)):
                assert time.monotonic() < deadline, "the answer was never cached"
                await asyncio.sleep(0.02)
            asked = servicer.checks_answered
            assert (await reader.check(user, "premium")).active
            assert servicer.checks_answered == asked, "a trusted answer was not served from memory"

            servicer.silent.set()
            deadline = time.monotonic() + 30
            while (await reader.check(user, "premium")).active:
                assert time.monotonic() < deadline, "a cached answer outlived its heartbeats"
                await asyncio.sleep(0.02)
            assert servicer.checks_answered > asked
            # The stream was open all along: silence alone withdrew the trust.
            assert (servicer.streams_opened, servicer.streams_ended) == (1, 0)
    finally:
        await server.stop(None)


async def test_a_service_without_its_database_answers_unavailable_so_callers_retry(
    settings: Settings,
) -> None:
    unreachable = replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    )
    before = _served("UNAVAILABLE")
    async with (
        serving(build(unreachable)) as addr,
        EntitlementsClient(addr, settings.internal_token, deadline=8.0, attempts=2) as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.check(new_user(), "premium")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # Two attempts, as asked: the channel adds no retries of its own on top.
    assert _served("UNAVAILABLE") - before == 2


async def test_a_watch_stream_presents_its_token_once() -> None:
    """A duplicated `authorization` header is one a strict proxy may refuse."""
    seen: list[list[str]] = []

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        seen.append([v for k, v in context.invocation_metadata() or () if k == "authorization"])
        yield entitlements_pb2.EntitlementChange(action="heartbeat").SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "paylayer.entitlements.v1.EntitlementsService",
        {"WatchEntitlements": grpc.unary_stream_rpc_method_handler(watch)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with EntitlementsClient(f"127.0.0.1:{port}", "the-token") as client:
            async for change in client.watch(heartbeats=True):
                assert change.action == "heartbeat"
                break
    finally:
        await server.stop(None)
    assert seen == [["Bearer the-token"]]
