"""Channel access: who is entitled is who is in the chats, and stays so.

A stack of its own, on a database of its own, with a catalogue whose tiers list chats, and a
reconcile every second. The fake Bot API keeps each chat's members, so a test asserts who is
in the chat at the end, as the operator would see it in Telegram.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from paylayer.catalogue import Catalogue, load_catalogue
from paylayer.db import create_engine
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import telegram_update
from paylayer.settings import DEFAULT_CATALOGUE_PATH, REPO_ROOT
from payments_service.tables import chat_invite_links
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import KNOWN_SECRETS, fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi, FakeChat, add_chat
from tests.fakes.bot_backend import FakeBotBackend
from tests.payments.helpers import (
    eventually,
    new_buyer,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.payments.test_telegram import key_of
from tests.stack import Stack

PREMIUM_CHAT = -1001000000001
VIP_CHAT = -1001000000002
OWNER, ADMIN = 1001, 1002


def channel_catalogue(path: Path) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "tests" / "catalogue.yaml").read_text())
    raw["tiers"]["premium"]["chats"] = [PREMIUM_CHAT]
    raw["tiers"]["vip"]["chats"] = [VIP_CHAT]
    path.write_text(yaml.safe_dump(raw))
    return path


BOT_SECRET = "bot-secret-" + secrets.token_hex(8)
KNOWN_SECRETS.append(BOT_SECRET)


@pytest.fixture(scope="module")
def product_bot() -> Iterator[FakeBotBackend]:
    """The product's bot behind the gateway: it gets the chat updates too."""
    backend = FakeBotBackend()
    backend.start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def channel_stack(
    admin_database_url: str,
    bot_api: FakeBotApi,
    product_bot: FakeBotBackend,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    catalogue_path = channel_catalogue(tmp_path_factory.mktemp("channels") / "catalogue.yaml")
    with fresh_database(admin_database_url) as url:
        settings = make_settings(url, bot_api)
        extra_env = {
            "CATALOGUE_PATH": str(catalogue_path),
            "CHANNELS_RECONCILE_SECONDS": "1",
            "BOT_UPDATES_URL": product_bot.url,
            "BOT_UPDATES_SECRET": BOT_SECRET,
        }
        with running_stack(
            settings, tmp_path_factory.mktemp("channel-stack-logs"), extra_env=extra_env
        ) as running:
            yield running


@pytest.fixture(scope="module")
def catalogue(channel_stack: Stack) -> Catalogue:
    return load_catalogue(channel_stack.settings.catalogue_path)


@pytest.fixture
def chats(bot_api: FakeBotApi) -> dict[int, FakeChat]:
    """Both chats, each with its owner and an admin (the fake was reset for this test)."""
    for chat_id in (PREMIUM_CHAT, VIP_CHAT):
        add_chat(bot_api.chats, chat_id, owner=OWNER, admins=(ADMIN,))
    return bot_api.chats


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- talking to the stack ------------------------------------------------------------------


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


async def grant(
    stack: Stack, user_id: str, tier: str, *, seconds: float | None = None, days: int = 30
) -> str:
    """A manual grant (an operator's), ending `seconds` from now or stacking `days`."""
    reference = f"test-{secrets.token_hex(6)}"
    request = entitlements_pb2.GrantEntitlementRequest(
        user_id=user_id,
        entitlement=tier,
        source=entitlements_pb2.Source(provider="manual", reference=reference),
        reason="channel access test",
        granted_by="tests",
    )
    if seconds is not None:
        request.until.CopyFrom(_stamp(time.time() + seconds))
    else:
        request.duration_seconds = days * 86400
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        await entitlements_pb2_grpc.EntitlementsServiceStub(channel).GrantEntitlement(request)
    return reference


async def revoke(stack: Stack, reference: str) -> None:
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        await entitlements_pb2_grpc.EntitlementsServiceStub(channel).RevokeEntitlement(
            entitlements_pb2.RevokeEntitlementRequest(
                source=entitlements_pb2.Source(provider="manual", reference=reference),
                reason="revoked by the test",
                revoked_by="tests",
            )
        )


async def entitled(stack: Stack, user_id: str, tier: str) -> bool:
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        reply = await entitlements_pb2_grpc.EntitlementsServiceStub(channel).CheckEntitlement(
            entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=tier)
        )
    return bool(reply.active)


async def reconcile(stack: Stack) -> payments_pb2.ReconcileChannelsResponse:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        return await payments_pb2_grpc.PaymentsServiceStub(channel).ReconcileChannels(
            payments_pb2.ReconcileChannelsRequest(), timeout=60
        )


async def channel_status(
    stack: Stack, telegram_user_id: int
) -> payments_pb2.GetChannelStatusResponse:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        return await payments_pb2_grpc.PaymentsServiceStub(channel).GetChannelStatus(
            payments_pb2.GetChannelStatusRequest(telegram_user_id=telegram_user_id, audit_limit=50)
        )


async def removals(stack: Stack, telegram_user_id: int) -> list[payments_pb2.ChannelAuditEntry]:
    """The audit's removals of this user, as `paylayer channels status` shows them."""
    audit = (await channel_status(stack, telegram_user_id)).audit
    return [entry for entry in audit if entry.action == "removed"]


async def invite_link(stack: Stack, chat_id: int, telegram_user_id: int) -> str | None:
    engine = create_engine(stack.settings.database_url, application_name="tests", pool_size=1)
    try:
        async with engine.connect() as connection:
            link = await connection.scalar(
                select(chat_invite_links.c.invite_link).where(
                    chat_invite_links.c.chat_id == chat_id,
                    chat_invite_links.c.telegram_user_id == telegram_user_id,
                )
            )
    finally:
        await engine.dispose()
    return str(link) if link else None


async def invite_links(stack: Stack, user_id: str) -> dict[int, str]:
    """What the bot gets for a user asking for their links again."""
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        reply = await payments_pb2_grpc.PaymentsServiceStub(channel).CreateInviteLinks(
            payments_pb2.CreateInviteLinksRequest(user_id=user_id), timeout=30
        )
    return {link.chat_id: link.invite_link for link in reply.links}


_update_ids = iter(range(800_000_000 + secrets.randbelow(10**7), 10**10))


def join_request_update(chat_id: int, telegram_user_id: int, link: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "chat": {"id": chat_id, "type": "channel", "title": "Signals"},
        "from": {"id": telegram_user_id, "is_bot": False, "first_name": "Buyer"},
        "user_chat_id": telegram_user_id,
        "date": int(time.time()),
    }
    if link:
        request["invite_link"] = {
            "invite_link": link,
            "creator": {"id": 1, "is_bot": True, "first_name": "Paylayer"},
            "creates_join_request": True,
            "is_primary": False,
            "is_revoked": False,
        }
    return {"update_id": next(_update_ids), "chat_join_request": request}


def member_update(chat_id: int, telegram_user_id: int, old: str, new: str) -> dict[str, Any]:
    user = {"id": telegram_user_id, "is_bot": False, "first_name": "Someone"}
    return {
        "update_id": next(_update_ids),
        "chat_member": {
            "chat": {"id": chat_id, "type": "channel", "title": "Signals"},
            "from": {"id": OWNER, "is_bot": False, "first_name": "Owner"},
            "date": int(time.time()),
            "old_chat_member": {"status": old, "user": user},
            "new_chat_member": {"status": new, "user": user},
        },
    }


async def join(
    http: aiohttp.ClientSession, stack: Stack, chat: FakeChat, telegram_user_id: int
) -> dict[str, Any]:
    """The buyer opens the invite link their receipt carried: a join request reaches us."""
    link = await eventually(
        lambda: invite_link(stack, chat.chat_id, telegram_user_id), lambda x: x is not None
    )
    assert link is not None, "no invite link was made for the grant"
    chat.request_join(telegram_user_id, link)
    update = join_request_update(chat.chat_id, telegram_user_id, link)
    status, _ = await post_telegram(http, stack, update)
    assert status == 200
    return update


async def in_chat(chat: FakeChat, telegram_user_id: int, want: bool, within: float = 30) -> bool:
    """Whether the chat came to have (want) or not have the user within `within` seconds."""
    return await eventually(lambda: _now((telegram_user_id in chat.members) == want), bool, within)


async def _now(value: bool) -> bool:
    return value


async def _now_texts(value: list[str]) -> list[str]:
    return value


def bans_of(bot_api: FakeBotApi, telegram_user_id: int) -> int:
    return sum(
        1 for call in bot_api.calls_of("banChatMember") if call["user_id"] == telegram_user_id
    )


@dataclass(frozen=True)
class Room:
    """What a chat story works with: the stack whose catalogue lists the chats, a session to
    its gateway, the fake Bot API and both chats in it."""

    stack: Stack
    http: aiohttp.ClientSession
    bot_api: FakeBotApi
    chats: dict[int, FakeChat]


@pytest.fixture
def room(
    channel_stack: Stack,
    http: aiohttp.ClientSession,
    bot_api: FakeBotApi,
    chats: dict[int, FakeChat],
) -> Room:
    return Room(channel_stack, http, bot_api, chats)


@dataclass(frozen=True)
class Member:
    telegram_user_id: int
    user_id: str
    access_ends: float  # time.time() when the grant ends


async def member_for_a_while(room: Room, chat: FakeChat, tier: str, seconds: float) -> Member:
    """A new buyer granted `tier` for `seconds`, let into the chat with their own link."""
    buyer = new_buyer()
    user_id = await user_of_telegram(room.stack, buyer)
    ends = time.time() + seconds
    await grant(room.stack, user_id, tier, seconds=seconds)
    await join(room.http, room.stack, chat, buyer)
    assert await in_chat(chat, buyer, True), "the entitled buyer's join request was not approved"
    return Member(buyer, user_id, ends)


# --- the stories ---------------------------------------------------------------------------


async def test_pay_invite_join_expire_removed_pay_again_back(
    room: Room,
    catalogue: Catalogue,
) -> None:
    chat = room.chats[PREMIUM_CHAT]
    member = await member_for_a_while(room, chat, "premium", seconds=10)
    buyer, user_id = member.telegram_user_id, member.user_id
    (made,) = [
        c for c in room.bot_api.calls_of("createChatInviteLink") if c["chat_id"] == PREMIUM_CHAT
    ]
    assert made["creates_join_request"] is True and 0 < len(made["name"]) <= 32
    # premium gives no seat in the vip chat
    assert await invite_link(room.stack, VIP_CHAT, buyer) is None
    assert await invite_links(room.stack, user_id) == {}  # in the chat already

    assert await in_chat(chat, buyer, False), "still in the chat after access expired"
    assert bans_of(room.bot_api, buyer) == 1
    removed = await eventually(lambda: removals(room.stack, buyer), bool)
    assert [a.reason for a in removed] == ["access ended"]
    assert chat.status[buyer] == "left", "removed but left banned: could never come back"

    # Pays again (Stars): the same personal link lets them back in.
    payment = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d")
    assert (await post_telegram(room.http, room.stack, payment))[0] == 200
    await eventually(lambda: entitled(room.stack, user_id, "premium"), bool)
    # The receipt for that payment carries their own link, as they are not in the chat.
    receipts = await eventually(
        lambda: _now_texts([t for t in room.bot_api.sent_to(buyer) if t.startswith("Thank you")]),
        bool,
    )
    link = await invite_link(room.stack, PREMIUM_CHAT, buyer)
    assert link is not None and link in receipts[0]
    await join(room.http, room.stack, chat, buyer)
    assert await in_chat(chat, buyer, True), "paid again but not let back in"


async def test_a_join_request_without_access_is_declined(
    room: Room,
) -> None:
    stranger, premium_buyer = new_buyer(), new_buyer()
    chat = room.chats[VIP_CHAT]
    chat.pending.update({stranger, premium_buyer})
    user_id = await user_of_telegram(room.stack, premium_buyer)
    await grant(room.stack, user_id, "premium")
    for telegram_user_id in (stranger, premium_buyer):
        update = join_request_update(VIP_CHAT, telegram_user_id, None)
        assert (await post_telegram(room.http, room.stack, update))[0] == 200
    await eventually(lambda: _now(not chat.pending), bool)
    assert not chat.pending and chat.members == {OWNER, ADMIN}
    declined = {c["user_id"] for c in room.bot_api.calls_of("declineChatJoinRequest")}
    assert declined == {stranger, premium_buyer}


async def test_vip_gets_premium_chat_too(
    channel_stack: Stack, http: aiohttp.ClientSession, chats: dict[int, FakeChat]
) -> None:
    buyer = new_buyer()
    user_id = await user_of_telegram(channel_stack, buyer)
    await grant(channel_stack, user_id, "vip")
    async with open_channel(
        channel_stack.addrs["entitlements"], channel_stack.settings.internal_token
    ) as channel:
        explained = await entitlements_pb2_grpc.EntitlementsServiceStub(channel).CheckEntitlement(
            entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement="premium")
        )
    # Explain: the chats this user should be in.
    assert sorted(explained.chats) == sorted([PREMIUM_CHAT, VIP_CHAT])
    links = await invite_links(channel_stack, user_id)  # asked again: the same links
    assert links == {
        chat_id: await invite_link(channel_stack, chat_id, buyer)
        for chat_id in (PREMIUM_CHAT, VIP_CHAT)
    }
    assert len(set(links.values())) == 2
    for chat_id in (PREMIUM_CHAT, VIP_CHAT):
        await join(http, channel_stack, chats[chat_id], buyer)
        assert await in_chat(chats[chat_id], buyer, True)
    assert (
        await invite_links(channel_stack, await user_of_telegram(channel_stack, new_buyer())) == {}
    )


async def test_a_refund_removes_once(
    room: Room,
    catalogue: Catalogue,
) -> None:
    buyer = new_buyer()
    chat = room.chats[PREMIUM_CHAT]
    payment = telegram_update("payment", catalogue, telegram_user_id=buyer, sku="premium_30d")
    assert (await post_telegram(room.http, room.stack, payment))[0] == 200
    await join(room.http, room.stack, chat, buyer)
    assert await in_chat(chat, buyer, True)

    paid = payment["message"]["successful_payment"]
    refund = telegram_update(
        "refund",
        catalogue,
        telegram_user_id=buyer,
        sku="premium_30d",
        charge_id=paid["telegram_payment_charge_id"],
        payload=paid["invoice_payload"],
    )
    assert (await post_telegram(room.http, room.stack, refund))[0] == 200
    assert (await post_telegram(room.http, room.stack, refund))[0] == 200  # redelivered
    assert await in_chat(chat, buyer, False), "refunded but still in the chat"
    await reconcile(room.stack)
    await reconcile(room.stack)
    assert bans_of(room.bot_api, buyer) == 1
    removed = await removals(room.stack, buyer)
    # Said by whichever noticed first: the revoke on the change stream ("…: refunded") or a
    # periodic reconcile that ran in between ("access ended"). Either way, once.
    assert len(removed) == 1 and removed[0].reason.startswith("access ended"), removed


async def test_a_renewal_across_the_expiry_never_removes(
    room: Room,
) -> None:
    chat = room.chats[PREMIUM_CHAT]
    member = await member_for_a_while(room, chat, "premium", seconds=10)
    buyer, first_ends = member.telegram_user_id, member.access_ends
    await grant(room.stack, member.user_id, "premium", days=30)  # renewed before the end
    assert time.time() < first_ends, "too slow to renew before the end: the test proves nothing"
    await asyncio.sleep(first_ends - time.time() + 1.5)  # the first grant's end has passed
    await reconcile(room.stack)
    assert buyer in chat.members
    assert bans_of(room.bot_api, buyer) == 0


async def test_admins_are_never_removed_and_others_let_in_without_access_are(
    room: Room,
) -> None:
    chat = room.chats[PREMIUM_CHAT]
    intruder = new_buyer()
    chat.status[intruder] = "member"  # an admin added them by hand
    for update in (
        member_update(PREMIUM_CHAT, intruder, "left", "member"),
        # Our record of the admin is stale (a member once): Telegram refuses, we keep them.
        member_update(PREMIUM_CHAT, ADMIN, "left", "member"),
        member_update(PREMIUM_CHAT, OWNER, "left", "creator"),
    ):
        assert (await post_telegram(room.http, room.stack, update))[0] == 200
    assert await in_chat(chat, intruder, False)
    await reconcile(room.stack)
    assert chat.members == {OWNER, ADMIN}
    assert all(call["user_id"] != OWNER for call in room.bot_api.calls_of("banChatMember"))


async def test_flood_control_is_waited_out(
    room: Room,
) -> None:
    chat = room.chats[PREMIUM_CHAT]
    intruder = new_buyer()
    chat.status[intruder] = "member"
    room.bot_api.membership_floods = 2
    assert (
        await post_telegram(
            room.http, room.stack, member_update(PREMIUM_CHAT, intruder, "left", "member")
        )
    )[0] == 200
    assert await in_chat(chat, intruder, False)
    assert room.bot_api.membership_floods == 0


async def test_chat_updates_reach_the_bot_too_and_its_answer_is_relayed(
    channel_stack: Stack,
    http: aiohttp.ClientSession,
    product_bot: FakeBotBackend,
    chats: dict[int, FakeChat],
) -> None:
    product_bot.reset()
    product_bot.reply = {"method": "sendMessage", "chat_id": 5, "text": "welcome"}
    stranger = new_buyer()
    chats[PREMIUM_CHAT].pending.add(stranger)
    update = join_request_update(PREMIUM_CHAT, stranger, None)
    status, body = await post_telegram(http, channel_stack, update)
    assert status == 200 and body == product_bot.reply
    assert [r.update for r in product_bot.updates_with(update["update_id"])] == [update]
    await eventually(lambda: _now(not chats[PREMIUM_CHAT].pending), bool)
    assert stranger not in chats[PREMIUM_CHAT].members


async def test_an_expiry_while_payments_was_down_is_acted_on_once_after_start(
    room: Room,
) -> None:
    chat = room.chats[VIP_CHAT]
    member = await member_for_a_while(room, chat, "vip", seconds=10)
    buyer = member.telegram_user_id
    await asyncio.to_thread(room.stack.stop, "payments")
    await asyncio.sleep(
        max(0.0, member.access_ends - time.time()) + 1
    )  # the grant ends while it is down
    assert buyer in chat.members
    room.stack.start("payments")
    await room.stack.up()
    assert await in_chat(chat, buyer, False, within=60), "expired while down, never removed"
    await reconcile(room.stack)
    assert bans_of(room.bot_api, buyer) == 1


def test_the_cli_shows_the_chats_and_reconciles(channel_stack: Stack) -> None:
    def paylayer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "paylayer.cli", "channels", *args],
            env=channel_stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = paylayer("status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert {c["chat_id"]: c["tiers"] for c in shown["chats"]} == {
        str(PREMIUM_CHAT): ["premium", "vip"],
        str(VIP_CHAT): ["vip"],
    }
    reconciled = paylayer("reconcile")
    assert reconciled.returncode == 0, reconciled.stderr
    assert "members checked" in reconciled.stdout


def test_channel_status_and_reconcile_are_the_operators_only(channel_stack: Stack) -> None:
    from paylayer.callers import may_call

    for name in ("gateway", "payments", "bot", "reader"):
        for method in ("GetChannelStatus", "ReconcileChannels"):
            assert not may_call(name, f"/paylayer.payments.v1.PaymentsService/{method}")
    assert may_call("operator", "/paylayer.payments.v1.PaymentsService/ReconcileChannels")


# --- the property: after anything, the members are the entitled plus the admins --------------

STEPS = st.lists(
    st.sampled_from(
        ["grant_short", "grant_long", "revoke", "pay_stars", "refund", "restart", "duplicate"]
    ),
    min_size=2,
    max_size=6,
)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=STEPS, tiers=st.lists(st.sampled_from(["premium", "vip"]), min_size=6, max_size=6))
def test_members_are_the_entitled_plus_the_admins_after_any_sequence(
    channel_stack: Stack, bot_api: FakeBotApi, steps: list[str], tiers: list[str]
) -> None:
    asyncio.run(_run_sequence(channel_stack, bot_api, steps, tiers))


async def _run_sequence(
    stack: Stack, bot_api: FakeBotApi, steps: list[str], tiers: list[str]
) -> None:
    bot_api.reset()
    for chat_id in (PREMIUM_CHAT, VIP_CHAT):
        add_chat(bot_api.chats, chat_id, owner=OWNER, admins=(ADMIN,))
    catalogue = load_catalogue(stack.settings.catalogue_path)
    buyers = [new_buyer() for _ in range(3)]
    users = {buyer: await user_of_telegram(stack, buyer) for buyer in buyers}
    grants: list[tuple[int, str]] = []  # (buyer, manual reference)
    payments: list[tuple[int, dict[str, Any]]] = []
    sent: list[dict[str, Any]] = []
    short_until = 0.0
    async with aiohttp.ClientSession() as http:

        async def post(update: dict[str, Any]) -> None:
            sent.append(update)
            assert (await post_telegram(http, stack, update))[0] == 200

        async def let_in(buyer: int) -> None:
            """Everyone wants to be in: they ask the bot for their links and use them."""
            links = await invite_links(stack, users[buyer])
            for chat_id, link in links.items():
                chat = bot_api.chats[chat_id]
                if buyer not in chat.members and buyer not in chat.pending:
                    chat.request_join(buyer, link)
                    await post(join_request_update(chat_id, buyer, link))

        for index, step in enumerate(steps):
            buyer = buyers[index % len(buyers)]
            tier = tiers[index]
            if step in ("grant_short", "grant_long"):
                short = step == "grant_short"
                reference = await grant(stack, users[buyer], tier, seconds=3 if short else None)
                short_until = max(short_until, time.time() + 3) if short else short_until
                grants.append((buyer, reference))
                await asyncio.sleep(0.5)
                await let_in(buyer)
            elif step == "revoke" and grants:
                await revoke(stack, grants.pop(0)[1])
            elif step == "pay_stars":
                sku = "vip_30d" if tier == "vip" else "premium_30d"
                update = telegram_update("payment", catalogue, telegram_user_id=buyer, sku=sku)
                payments.append((buyer, update))
                await post(update)
                await asyncio.sleep(0.5)
                await let_in(buyer)
            elif step == "refund" and payments:
                payer, paid_update = payments.pop(0)
                paid = paid_update["message"]["successful_payment"]
                await post(
                    telegram_update(
                        "refund",
                        catalogue,
                        telegram_user_id=payer,
                        sku=paid["invoice_payload"].split(":")[0],
                        charge_id=paid["telegram_payment_charge_id"],
                        payload=paid["invoice_payload"],
                    )
                )
            elif step == "restart":
                await asyncio.to_thread(stack.stop, "payments")
                stack.start("payments")
                await stack.up()
            elif step == "duplicate" and sent:
                await post(sent[-1])
        # Every short grant has ended, every event is applied, then a pass: the end state.
        await asyncio.sleep(max(0.0, short_until - time.time()) + 0.5)
        for buyer in buyers:
            await let_in(buyer)
        await asyncio.sleep(2)
        await reconcile(stack)

        for chat_id in catalogue.chats:
            tiers_of_chat = catalogue.tiers_giving_chat(chat_id)
            expected = {OWNER, ADMIN}
            for buyer in buyers:
                for tier in tiers_of_chat:
                    if await entitled(stack, users[buyer], tier):
                        expected.add(buyer)
            members = await eventually(
                lambda chat_id=chat_id: _set(bot_api.chats[chat_id].members),
                lambda found, expected=expected: found == expected,
            )
            assert members == expected, (chat_id, steps, tiers)


async def _set(members: set[int]) -> set[int]:
    return set(members)


def test_the_catalogue_maps_tiers_to_chats_with_clear_errors(tmp_path: Path) -> None:
    catalogue = load_catalogue(channel_catalogue(tmp_path / "c.yaml"))
    assert catalogue.chats_of("vip") == {PREMIUM_CHAT, VIP_CHAT}
    assert catalogue.chats_of("premium") == {PREMIUM_CHAT}
    assert catalogue.tiers_giving_chat(PREMIUM_CHAT) == {"premium"}
    assert not load_catalogue(DEFAULT_CATALOGUE_PATH).chats  # the default sells none yet
    raw = yaml.safe_load((tmp_path / "c.yaml").read_text())
    for bad in (["@signals"], "-100123", [True], [0]):
        raw["tiers"]["vip"]["chats"] = bad
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(ValueError, match="chat"):
            load_catalogue(tmp_path / "bad.yaml")


async def test_chat_updates_that_are_not_ours_or_make_no_sense_are_ignored_with_a_reason(
    channel_stack: Stack, http: aiohttp.ClientSession, bot_api: FakeBotApi
) -> None:
    other_chat = join_request_update(-1005555555555, new_buyer(), None)
    nonsense = {"update_id": next(_update_ids), "chat_join_request": {"chat": [1], "from": "x"}}
    stale = member_update(PREMIUM_CHAT, new_buyer(), "left", "member")
    stale["chat_member"]["new_chat_member"]["status"] = "sorcerer"
    updates = [other_chat, nonsense, stale]
    for update in updates:
        assert (await post_telegram(http, channel_stack, update))[0] == 200
    keys = [key_of(update) for update in updates]
    engine = create_engine(channel_stack.settings.database_url, application_name="tests")
    try:
        statuses = await wait_settled(engine, "telegram", keys)
    finally:
        await engine.dispose()
    assert set(statuses.values()) == {"ignored"}, statuses
    assert not bot_api.calls_of("approveChatJoinRequest")


async def test_check_entitlements_answers_many_as_check_entitlement_answers_each(
    channel_stack: Stack,
) -> None:
    vip_user = await user_of_telegram(channel_stack, new_buyer())
    nobody = await user_of_telegram(channel_stack, new_buyer())
    await grant(channel_stack, vip_user, "vip")
    checks = [
        entitlements_pb2.CheckEntitlementRequest(user_id=user, entitlement=tier)
        for user in (vip_user, nobody)
        for tier in ("premium", "vip")
    ]
    async with open_channel(
        channel_stack.addrs["entitlements"], channel_stack.settings.internal_token
    ) as channel:
        stub = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
        reply = await stub.CheckEntitlements(
            entitlements_pb2.CheckEntitlementsRequest(checks=checks)
        )
        assert [r.active for r in reply.results] == [True, True, False, False]
        for check, answer in zip(checks, reply.results, strict=True):
            assert answer == await stub.CheckEntitlement(check)
        for bad in (
            [entitlements_pb2.CheckEntitlementRequest(user_id=nobody, entitlement="gold")],
            [entitlements_pb2.CheckEntitlementRequest(user_id="", entitlement="vip")],
            checks[:1] * 1001,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckEntitlements(entitlements_pb2.CheckEntitlementsRequest(checks=bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
