"""Intruders: no token, a wrong token, a replayed webhook, and secrets looked for in the logs."""

from __future__ import annotations

import json
import time

import aiohttp
import grpc
import pytest

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import sign_stripe, stripe_event
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2
from protos.payments.v1 import payments_pb2
from tests.conftest import secrets_in
from tests.payments.helpers import post_stripe
from tests.stack import Stack

pytestmark = pytest.mark.faults

DESCRIPTORS = {
    "payments": payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    "entitlements": entitlements_pb2.DESCRIPTOR.services_by_name["EntitlementsService"],
    "accounts": accounts_pb2.DESCRIPTOR.services_by_name["AccountsService"],
}


def methods_of(service: str) -> list[tuple[str, bool]]:
    """Every RPC of a service, read from its descriptor, and whether it streams its answer."""
    return [(m.name, m.server_streaming) for m in DESCRIPTORS[service].methods]


@pytest.mark.parametrize("service", sorted(DESCRIPTORS))
@pytest.mark.parametrize("authorization", [None, "Bearer not-the-token", "bearer", ""])
async def test_every_rpc_refuses_a_missing_or_wrong_token(
    stack: Stack, service: str, authorization: str | None
) -> None:
    metadata = (("authorization", authorization),) if authorization is not None else ()
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        for method, streaming in methods_of(service):
            path = f"/{DESCRIPTORS[service].full_name}/{method}"
            rpc = channel.unary_stream(path) if streaming else channel.unary_unary(path)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                call = rpc(b"", metadata=metadata, timeout=5)
                if streaming:
                    async for _ in call:
                        pass
                else:
                    await call
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, method


async def test_a_replayed_stripe_request_older_than_the_tolerance_is_refused(stack: Stack) -> None:
    catalogue = load_catalogue(stack.settings.catalogue_path)
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="vip_30d", telegram_user_id=77
    )
    body = json.dumps(event)
    captured = sign_stripe(body, stack.settings.stripe_webhook_secrets[0], int(time.time()) - 301)
    async with aiohttp.ClientSession() as http:
        status, _ = await post_stripe(http, stack, body.encode(), signature=captured)
    assert status == 400


def test_the_log_scan_finds_a_secret_when_there_is_one() -> None:
    """The end-of-run scan (conftest.pytest_sessionfinish) would fail on this line."""
    line = json.dumps({"message": "calling https://api.telegram.org/bot123:SECRET/getMe"})
    assert secrets_in(line, ["123:SECRET"]) == ["123:SECRET"]
    assert secrets_in(line, ["whsec_other"]) == []


def test_no_secret_reached_the_logs_so_far(stack: Stack) -> None:
    leaked = {
        path.name: secrets_in(path.read_text(errors="replace"), stack.settings.secrets())
        for path in stack.log_dir.glob("*.log")
    }
    assert not any(leaked.values()), leaked
    assert any(path.stat().st_size for path in stack.log_dir.glob("*.log")), "no logs were written"
