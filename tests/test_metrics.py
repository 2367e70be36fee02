"""Each process's /metrics, scraped after known traffic: the figures agree with what was sent."""

from __future__ import annotations

import secrets

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
from payments_service.tables import chat_join_requests, inbox, messages
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.payments.helpers import eventually, post_stripe, wait_settled
from tests.stack import Stack


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        text = await reply.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def stack_idle(engine: AsyncEngine) -> None:
    """Wait until payments has no work left that would make calls of its own: no event due in
    the inbox (retries included; one a test parked for later is not work now), no message to a
    user due or being sent, no join request undecided. Counts taken before and after then
    differ by this test's traffic alone."""

    async def busy() -> dict[str, int]:
        async with engine.connect() as connection:
            return {
                "inbox": int(
                    await connection.scalar(
                        select(func.count())
                        .select_from(inbox)
                        .where(inbox.c.status == "pending", inbox.c.next_attempt_at <= func.now())
                    )
                    or 0
                ),
                "messages": int(
                    await connection.scalar(
                        select(func.count())
                        .select_from(messages)
                        .where(
                            messages.c.status.in_(("pending", "sending")),
                            messages.c.due_at <= func.now(),
                        )
                    )
                    or 0
                ),
                "join requests": int(
                    await connection.scalar(
                        select(func.count())
                        .select_from(chat_join_requests)
                        .where(chat_join_requests.c.decision == "pending")
                    )
                    or 0
                ),
            }

    # Generous: a poison event of an earlier test may take about a minute to be failed.
    left = await eventually(busy, lambda work: not any(work.values()), within=120)
    if any(left.values()):
        async with engine.connect() as connection:
            pending = (
                await connection.execute(
                    select(
                        inbox.c.provider,
                        inbox.c.event_type,
                        inbox.c.event_id,
                        inbox.c.attempts,
                        inbox.c.next_attempt_at,
                        inbox.c.error,
                    ).where(inbox.c.status == "pending")
                )
            ).all()
        raise AssertionError(f"the stack never went idle: {left}; pending: {pending}")


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_grpc_metrics_count_each_rpc_by_method_and_code(
    stack: Stack, engine: AsyncEngine
) -> None:
    url = f"http://{stack.metrics_addrs['entitlements']}/metrics"
    handled = "paylayer_grpc_server_handled_total"
    await stack_idle(engine)
    before = await scrape(url)
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        stub = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
        for _ in range(3):
            await stub.CheckEntitlement(
                entitlements_pb2.CheckEntitlementRequest(
                    user_id="metrics-user", entitlement="premium"
                )
            )
        try:
            await stub.CheckEntitlement(
                entitlements_pb2.CheckEntitlementRequest(user_id="", entitlement="premium")
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    labels = {"service": "entitlements", "method": "CheckEntitlement"}
    await stack_idle(engine)

    def counted(samples: dict, code: str) -> float:  # type: ignore[type-arg]
        return value(samples, handled, **labels, code=code) - value(
            before, handled, **labels, code=code
        )

    # The server counts a call as its answer leaves: wait for the count, then compare.
    after = await eventually(
        lambda: scrape(url),
        lambda samples: counted(samples, "OK") >= 3 and counted(samples, "INVALID_ARGUMENT") >= 1,
    )
    assert counted(after, "OK") == 3
    assert counted(after, "INVALID_ARGUMENT") == 1
    assert value(after, "paylayer_grpc_server_handling_seconds_count", **labels) >= 4


async def test_malformed_protobuf_is_invalid_argument_not_internal(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.addrs["entitlements"]) as channel:
        rpc = channel.unary_unary("/paylayer.entitlements.v1.EntitlementsService/CheckEntitlement")
        try:
            await rpc(
                b"\x0a\xff\xff\xff\xff\x0f",  # field 1 claims a length far past the end
                metadata=(("authorization", f"Bearer {stack.settings.internal_token}"),),
                timeout=2,
            )
            raise AssertionError("a malformed request was accepted")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_gateway_and_payments_metrics_agree_with_the_webhooks_sent(
    stack: Stack, engine: AsyncEngine
) -> None:
    gateway_url = f"http://{stack.metrics_addrs['gateway']}/metrics"
    payments_url = f"http://{stack.metrics_addrs['payments']}/metrics"
    await stack_idle(engine)
    gateway_before, payments_before = await scrape(gateway_url), await scrape(payments_url)
    catalogue = load_catalogue(stack.settings.catalogue_path)
    events = [
        stripe_event(
            "checkout.session.completed",
            catalogue,
            sku="premium_30d",
            telegram_user_id=secrets.randbelow(10**9) + 1,
        )
        for _ in range(4)
    ]
    async with aiohttp.ClientSession() as http:
        for event in events:
            assert (await post_stripe(http, stack, event))[0] == 200
        assert (await post_stripe(http, stack, events[0]))[0] == 200  # a duplicate
        for _ in range(2):
            assert (await post_stripe(http, stack, events[1], secret="whsec_wrong"))[0] == 400
    gateway_after = await scrape(gateway_url)
    rejected = "paylayer_gateway_webhook_rejections_total"
    assert (
        value(gateway_after, rejected, provider="stripe", reason="bad_signature")
        - value(gateway_before, rejected, provider="stripe", reason="bad_signature")
        == 2
    )
    requests = "paylayer_gateway_http_requests_total"
    route = {"route": "/api/v1/stripe/webhook"}
    assert (
        value(gateway_after, requests, **route, code="200")
        - value(gateway_before, requests, **route, code="200")
        == 5
    )

    payments_after = await scrape(payments_url)
    received = "paylayer_payments_events_received_total"
    kind = {"provider": "stripe", "type": "checkout.session.completed"}
    assert value(payments_after, received, **kind) - value(payments_before, received, **kind) == 4
    await wait_settled(engine, "stripe", [e["id"] for e in events])
    await stack_idle(engine)
    payments_after = await scrape(payments_url)
    finished = "paylayer_payments_events_finished_total"
    done = {**kind, "outcome": "processed"}
    assert value(payments_after, finished, **done) - value(payments_before, finished, **done) == 4
    duplicates = "paylayer_payments_events_duplicate_total"
    assert (
        value(payments_after, duplicates, provider="stripe")
        - value(payments_before, duplicates, provider="stripe")
        == 1
    )


async def test_accounts_metrics_count_its_rpcs(stack: Stack, engine: AsyncEngine) -> None:
    url = f"http://{stack.metrics_addrs['accounts']}/metrics"
    handled = "paylayer_grpc_server_handled_total"
    labels = {"service": "accounts", "method": "ResolveUser"}
    await stack_idle(engine)
    before = await scrape(url)
    async with open_channel(stack.addrs["accounts"], stack.settings.internal_token) as channel:
        stub = accounts_pb2_grpc.AccountsServiceStub(channel)
        for _ in range(2):
            await stub.ResolveUser(
                accounts_pb2.ResolveUserRequest(
                    telegram_user_id=secrets.randbelow(10**9) + 1, create=True
                )
            )
        try:
            unknown = secrets.randbelow(10**9) + 10**10  # never created by any test
            await stub.ResolveUser(accounts_pb2.ResolveUserRequest(telegram_user_id=unknown))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
    await stack_idle(engine)

    def counted(samples: dict, code: str) -> float:  # type: ignore[type-arg]
        return value(samples, handled, **labels, code=code) - value(
            before, handled, **labels, code=code
        )

    # The server counts a call as its answer leaves: wait for the count, then compare.
    after = await eventually(
        lambda: scrape(url),
        lambda samples: counted(samples, "OK") >= 2 and counted(samples, "NOT_FOUND") >= 1,
    )
    assert counted(after, "OK") == 2
    assert counted(after, "NOT_FOUND") == 1
