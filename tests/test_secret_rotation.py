"""Rotating the Stripe webhook secret: with two configured, events signed by either are taken,
and a third secret is still refused. If the gateway tried only one of them, this fails."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.ops.factories import stripe_event
from tests.conftest import KNOWN_SECRETS, fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import (
    check,
    event_statuses,
    new_buyer,
    post_stripe,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack

OLD_SECRET = "whsec_old_" + secrets.token_hex(16)
NEW_SECRET = "whsec_new_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def rotation_database(admin_database_url: str) -> Iterator[str]:
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def rotating(
    rotation_database: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = dataclasses.replace(
        make_settings(rotation_database, bot_api),
        stripe_webhook_secrets=(OLD_SECRET, NEW_SECRET),
    )
    KNOWN_SECRETS.extend([OLD_SECRET, NEW_SECRET])
    with running_stack(settings, tmp_path_factory.mktemp("rotation-logs")) as stack:
        yield stack


@pytest.fixture(scope="module")
async def rotation_engine(rotation_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(rotation_database, application_name="rotation-tests", pool_size=2)
    yield engine
    await engine.dispose()


async def test_events_signed_with_either_configured_secret_are_taken_and_applied(
    rotating: Stack, rotation_engine: AsyncEngine
) -> None:
    assert rotating.settings.stripe_webhook_secrets == (OLD_SECRET, NEW_SECRET)
    catalogue = load_catalogue(rotating.settings.catalogue_path)
    buyers = {OLD_SECRET: new_buyer(), NEW_SECRET: new_buyer()}
    events = {
        secret: stripe_event(
            "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
        )
        for secret, buyer in buyers.items()
    }
    async with aiohttp.ClientSession() as http:
        for secret, event in events.items():
            assert (await post_stripe(http, rotating, event, secret=secret))[0] == 200
    ids = [event["id"] for event in events.values()]
    assert set((await wait_settled(rotation_engine, "stripe", ids)).values()) == {"processed"}
    for buyer in buyers.values():
        assert (await check(rotating, await user_of_telegram(rotating, buyer), "premium")).active


async def test_any_other_secret_is_refused_and_nothing_is_recorded(
    rotating: Stack, rotation_engine: AsyncEngine
) -> None:
    catalogue = load_catalogue(rotating.settings.catalogue_path)
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    async with aiohttp.ClientSession() as http:
        for secret in ("whsec_retired_" + secrets.token_hex(16), OLD_SECRET + "x", NEW_SECRET[:-1]):
            assert (await post_stripe(http, rotating, event, secret=secret))[0] == 400
    assert await event_statuses(rotation_engine, "stripe", [event["id"]]) == {}
