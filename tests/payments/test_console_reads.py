"""The reads the operator console is built on: one event with its payload, the overview."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import CALLER_TOKENS
from tests.payments.helpers import new_buyer, post_stripe, wait_settled
from tests.stack import Stack

Stub = payments_pb2_grpc.PaymentsServiceStub


@pytest.fixture
async def payments_stub(stack: Stack) -> AsyncIterator[Stub]:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        yield Stub(channel)


async def test_an_event_comes_back_with_its_raw_payload(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: Stub,
) -> None:
    event = stripe_event(f"test.console_{secrets.token_hex(4)}", catalogue)
    event["data"]["object"]["description"] = "<script>alert(1)</script>"
    assert (await post_stripe(http, stack, event))[0] == 200
    await wait_settled(engine, "stripe", [event["id"]])

    reply = await payments_stub.GetEvent(
        payments_pb2.GetEventRequest(provider="stripe", event_id=event["id"])
    )

    assert reply.event.status == payments_pb2.EVENT_STATUS_IGNORED
    assert b"<script>alert(1)</script>" in reply.payload
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await payments_stub.GetEvent(
            payments_pb2.GetEventRequest(provider="stripe", event_id="evt_never_seen")
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_overview_counts_todays_revenue_and_outcomes(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: Stub,
) -> None:
    before = await payments_stub.GetOverview(payments_pb2.GetOverviewRequest())
    purchase = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    price = catalogue.skus["premium_30d"].stripe_prices[0]
    assert (await post_stripe(http, stack, purchase))[0] == 200
    await wait_settled(engine, "stripe", [purchase["id"]])

    after = await payments_stub.GetOverview(payments_pb2.GetOverviewRequest())

    def revenue(reply: payments_pb2.GetOverviewResponse) -> int:
        return sum(
            r.amount
            for r in reply.revenue_per_day
            if (r.provider, r.currency) == ("stripe", price.currency)
        )

    def processed(reply: payments_pb2.GetOverviewResponse) -> int:
        return sum(
            h.count
            for h in reply.events_per_hour
            if h.status == payments_pb2.EVENT_STATUS_PROCESSED
        )

    assert revenue(after) - revenue(before) == price.amount
    assert processed(after) > processed(before)
    payment_key = purchase["data"]["object"]["payment_intent"]
    found = await payments_stub.ListPayments(
        payments_pb2.ListPaymentsRequest(payment_key=payment_key)
    )
    assert [p.amount for p in found.payments] == [price.amount]


async def test_the_reader_may_not_read_payloads_or_the_overview(stack: Stack) -> None:
    async with open_channel(stack.addrs["payments"], CALLER_TOKENS["reader"]) as channel:
        stub = Stub(channel)
        for call in (
            stub.GetOverview(payments_pb2.GetOverviewRequest()),
            stub.GetEvent(payments_pb2.GetEventRequest(provider="stripe", event_id="evt_x")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
