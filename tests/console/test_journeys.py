"""What an operator does in the console, in Chromium: sign in, find a user and see why they have
access, replay a failed event, refund a payment, look at a trader's drawdown. And the same
doors shut to anyone without a session or with a forged form."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event, telegram_update
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from tests.conftest import CALLER_TOKENS
from tests.console.conftest import sign_in
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import (
    check,
    event_statuses,
    new_buyer,
    post_stripe,
    post_telegram,
    user_of_telegram,
    wait_settled,
)
from tests.payments.shop import Shop, shop_fixture  # noqa: F401 (the fixture)
from tests.payments.test_telegram import key_of
from tests.stack import Stack


async def bought_twice(shop: Shop) -> tuple[int, str]:
    """A Telegram buyer with two 30-day premium purchases by card: two stacked grants."""
    buyer = new_buyer()
    events = [
        stripe_event(
            "checkout.session.completed", shop.catalogue, sku="premium_30d", telegram_user_id=buyer
        )
        for _ in range(2)
    ]
    for event in events:
        assert (await post_stripe(shop.http, shop.stack, event))[0] == 200
    assert set((await wait_settled(shop.engine, "stripe", [e["id"] for e in events])).values()) == {
        "processed"
    }
    return buyer, await user_of_telegram(shop.stack, buyer)


async def trader_with_history(stack: Stack, user_id: str) -> int:
    """An MT5 account of the user with two hours of snapshots: up, a 30% fall, part back."""
    login = secrets.randbelow(10**9) + 1
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    async with open_channel(stack.addrs["accounts"], stack.settings.internal_token) as channel:
        accounts = accounts_pb2_grpc.AccountsServiceStub(channel)
        await accounts.LinkAccount(
            accounts_pb2.LinkAccountRequest(
                user_id=user_id,
                login=login,
                server="Console-Demo",
                account_type=accounts_pb2.ACCOUNT_TYPE_DEMO,
            )
        )
        for minute in range(0, 120, 2):
            equity = (
                10_000 + minute * 40
                if minute < 40
                else 11_600 - (minute - 40) * 60
                if minute < 80
                else 9_200 + (minute - 80) * 30
            )
            time = Timestamp()
            time.FromDatetime(start + timedelta(minutes=minute))
            await accounts.ReportAccountSnapshot(
                accounts_pb2.ReportAccountSnapshotRequest(
                    login=login,
                    server="Console-Demo",
                    balance=10_000,
                    equity=equity,
                    currency="USD",
                    leverage=100,
                    time=time,
                )
            )
    return login


async def test_sign_in_with_the_operator_token_then_the_overview(
    page: Any, console_url: str, stack: Stack, screenshots: Path
) -> None:
    response = await page.goto(f"{console_url}/")
    assert page.url.endswith("/signin")
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"

    # Another caller's token (the reader's) does not open the console.
    await page.fill("input[name=name]", "mallory")
    await page.fill("input[name=token]", CALLER_TOKENS["reader"])
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=That is not an operator token.")

    await sign_in(page, console_url, stack.settings.internal_token)
    await page.wait_for_selector(".chart[data-drawn=true] canvas")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "paylayer_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert stack.settings.internal_token not in cookie["value"]  # encrypted, not readable
    await page.screenshot(path=screenshots / "signed-in.png", full_page=True)


async def test_find_a_user_by_telegram_id_and_see_stacked_grants_explain_and_audit(
    page: Any,
    console_url: str,
    shop: Shop,
    screenshots: Path,
) -> None:
    buyer, user_id = await bought_twice(shop)
    await trader_with_history(shop.stack, user_id)
    await sign_in(page, console_url, shop.stack.settings.internal_token)

    await page.fill("form.find input[name=q]", str(buyer))
    await page.press("form.find input[name=q]", "Enter")
    await page.wait_for_selector(f"h1:has-text('{user_id}')")
    assert await page.text_content("#telegram-id") == str(buyer)
    # Two grants end to end in one lane, and explain names both.
    assert await page.locator("svg.lane rect.bar").count() == 2
    assert await page.locator("[data-entitlement=premium] ul.because li").count() == 2
    # Each payment wrote its receipt to the outbox with the grant: the page lists both.
    receipts = page.locator("#messages tbody tr", has_text="receipt")
    assert await receipts.count() == 2

    await page.select_option("form.grant select[name=entitlement]", "vip")
    await page.fill("form.grant input[name=days]", "7")
    await page.fill("form.grant input[name=reason]", "goodwill <b>after</b> an outage")
    await page.click("form.grant button[type=submit]")
    await page.wait_for_selector("text=Granted vip.")
    audit_row = page.locator("#audit tbody tr").first
    assert "operator for alice" in (await audit_row.text_content() or "")
    assert "goodwill <b>after</b> an outage" in (await audit_row.text_content() or "")
    await page.wait_for_selector(".chart[data-chart=account][data-drawn=true] canvas")
    await page.screenshot(path=screenshots / "user.png", full_page=True)

    vip = await check(shop.stack, user_id, "vip")
    assert vip.active and vip.grants[0].granted_by == "operator"
    assert vip.grants[0].reason == "goodwill <b>after</b> an outage"

    # The same page at a phone's width: nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.reload()
    await page.wait_for_selector(".chart[data-chart=account][data-drawn=true] canvas")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await page.screenshot(path=screenshots / "user-phone.png", full_page=True)


async def test_the_drawdown_chart_of_a_linked_account(
    page: Any,
    console_url: str,
    shop: Shop,
    screenshots: Path,
) -> None:
    _, user_id = await bought_twice(shop)
    login = await trader_with_history(shop.stack, user_id)
    await sign_in(page, console_url, shop.stack.settings.internal_token)
    await page.goto(f"{console_url}/users/{user_id}")

    account = page.locator(".account", has_text=str(login))
    await account.locator(".chart[data-drawn=true] canvas").first.wait_for()
    # 11,600 to 9,200 is a 20.7% fall from the peak; the chart's legend names both series.
    assert "max 20.7%" in (await account.text_content() or "")
    legend = await account.locator(".u-legend").text_content() or ""
    assert "equity" in legend and "drawdown %" in legend
    await account.screenshot(path=screenshots / "drawdown.png")


async def failed_then_fixable(shop: Shop) -> tuple[dict[str, Any], int]:
    """A card payment nobody can be found for (failed), then the checkout that links them."""
    customer = f"cus_{secrets.token_hex(6)}"
    event = stripe_event("charge.succeeded", shop.catalogue, sku="premium_30d", customer=customer)
    assert (await post_stripe(shop.http, shop.stack, event))[0] == 200
    assert await wait_settled(shop.engine, "stripe", [event["id"]]) == {event["id"]: "failed"}
    buyer = new_buyer()
    link = stripe_event(
        "checkout.session.completed",
        shop.catalogue,
        sku="premium_30d",
        telegram_user_id=buyer,
        customer=customer,
    )
    assert (await post_stripe(shop.http, shop.stack, link))[0] == 200
    await wait_settled(shop.engine, "stripe", [link["id"]])
    return event, buyer


async def test_replay_a_failed_event_and_see_it_applied(
    page: Any,
    console_url: str,
    shop: Shop,
    screenshots: Path,
) -> None:
    event, _ = await failed_then_fixable(shop)
    await sign_in(page, console_url, shop.stack.settings.internal_token)

    await page.click("a.tile[href='/inbox?status=failed']")
    await page.select_option("select[name=provider]", "stripe")
    await page.fill("input[name=type]", "charge.succeeded")
    await page.click("form.filters button[type=submit]")
    await page.click(f"a[href='/inbox/stripe/{event['id']}']")
    assert await page.text_content("#event-status") == "failed"
    assert "cannot tell who paid" in (await page.text_content("#event-error") or "")
    await page.click("button:has-text('Replay this event')")
    await page.wait_for_selector("text=Replayed: the event is now processed.")
    assert await page.text_content("#event-status") == "processed"
    assert "operator for alice" in (await page.text_content("dl.facts") or "")
    await page.screenshot(path=screenshots / "replayed-event.png", full_page=True)
    assert (await event_statuses(shop.engine, "stripe", [event["id"]])) == {
        event["id"]: "processed"
    }


async def test_replay_every_failed_event_matching_a_filter(
    page: Any,
    console_url: str,
    shop: Shop,
) -> None:
    first, _ = await failed_then_fixable(shop)
    second, _ = await failed_then_fixable(shop)
    await sign_in(page, console_url, shop.stack.settings.internal_token)

    await page.goto(f"{console_url}/inbox?provider=stripe&type=charge.succeeded&status=failed")
    await page.click("button:has-text('Replay every failed event matching this filter')")
    await page.wait_for_selector("text=events put back in the queue.")

    ids = [first["id"], second["id"]]
    assert await wait_settled(shop.engine, "stripe", ids) == {i: "processed" for i in ids}


async def test_refund_a_stars_payment_with_a_reason(
    page: Any,
    console_url: str,
    shop: Shop,
    bot_api: FakeBotApi,
    screenshots: Path,
) -> None:
    buyer, charge = new_buyer(), f"stxt{secrets.token_hex(12)}"
    update = telegram_update(
        "payment", shop.catalogue, telegram_user_id=buyer, sku="premium_30d", charge_id=charge
    )
    assert (await post_telegram(shop.http, shop.stack, update))[0] == 200
    await wait_settled(shop.engine, "telegram", [key_of(update)])
    await sign_in(page, console_url, shop.stack.settings.internal_token)

    await page.click("nav a:has-text('Payments')")
    await page.fill("form.filters input[name=q]", charge)
    await page.click("form.filters button[type=submit]")
    await page.click("a:has-text('Refund…')")
    await page.fill("input[name=reason]", "asked by the buyer in support")
    await page.check("input[name=confirm]")
    await page.screenshot(path=screenshots / "refund-confirm.png", full_page=True)
    await page.click("button:has-text('Refund')")
    await page.wait_for_selector("text=Refunded: the payment is now refunded.")

    assert [c["telegram_payment_charge_id"] for c in bot_api.calls_of("refundStarPayment")] == [
        charge
    ]
    assert await page.locator("span.badge.refunded").count() == 1


async def test_without_a_session_every_page_sends_to_sign_in_and_every_change_is_refused(
    console_url: str,
    shop: Shop,
    bot_api: FakeBotApi,
) -> None:
    event, buyer = await failed_then_fixable(shop)
    user_id = await user_of_telegram(shop.stack, buyer)
    for path in ("/", "/inbox", f"/inbox/stripe/{event['id']}", "/payments", f"/users/{user_id}"):
        async with shop.http.get(f"{console_url}{path}", allow_redirects=False) as reply:
            assert (reply.status, reply.headers["Location"]) == (303, "/signin"), path
    changes = {
        f"/inbox/stripe/{event['id']}/replay": {},
        "/inbox/replay": {"status": "failed"},
        "/payments/stripe/pi_x/refund": {"reason": "r", "confirm": "yes"},
        f"/users/{user_id}/grant": {
            "entitlement": "vip",
            "days": "30",
            "reason": "r",
            "nonce": "1",
        },
    }
    for path, form in changes.items():
        async with shop.http.post(
            f"{console_url}{path}", data=form, allow_redirects=False
        ) as reply:
            assert reply.status == 401, path
    assert await event_statuses(shop.engine, "stripe", [event["id"]]) == {event["id"]: "failed"}
    assert bot_api.calls_of("refundStarPayment") == []
    # Behind a proxy that terminated TLS, the session cookie is Secure as well.
    async with shop.http.get(
        f"{console_url}/signin", headers={"X-Forwarded-Proto": "https"}
    ) as reply:
        cookie = reply.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_a_forged_csrf_token_is_refused_and_changes_nothing(
    page: Any,
    console_url: str,
    shop: Shop,
) -> None:
    event, buyer = await failed_then_fixable(shop)
    user_id = await user_of_telegram(shop.stack, buyer)
    await sign_in(page, console_url, shop.stack.settings.internal_token)
    forged = {"csrf": secrets.token_urlsafe(32)}
    posts = {
        f"/inbox/stripe/{event['id']}/replay": forged,
        "/inbox/replay": {**forged, "status": "failed"},
        f"/users/{user_id}/grant": {
            **forged,
            "entitlement": "vip",
            "days": "30",
            "reason": "r",
            "nonce": "forged1",
        },
        f"/users/{user_id}/grant?": {
            "entitlement": "vip",
            "days": "30",
            "reason": "r",
            "nonce": "a",
        },
    }
    for path, form in posts.items():
        # The signed-in browser's own cookies, a form that did not come from the console.
        reply = await page.request.post(f"{console_url}{path}", form=form, max_redirects=0)
        assert reply.status == 403, path
    assert await event_statuses(shop.engine, "stripe", [event["id"]]) == {event["id"]: "failed"}
    vip = await check(shop.stack, user_id, "vip")
    assert not vip.active


async def test_an_event_payload_carrying_script_is_shown_as_text(
    page: Any,
    console_url: str,
    shop: Shop,
    screenshots: Path,
) -> None:
    hostile = "<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>"
    event = stripe_event(f"test.hostile_{secrets.token_hex(4)}", shop.catalogue)
    event["data"]["object"]["description"] = hostile
    assert (await post_stripe(shop.http, shop.stack, event))[0] == 200
    await wait_settled(shop.engine, "stripe", [event["id"]])
    await sign_in(page, console_url, shop.stack.settings.internal_token)

    await page.goto(f"{console_url}/inbox/stripe/{event['id']}")

    assert hostile in (await page.text_content("#payload") or "")
    assert await page.locator("#payload script, #payload img").count() == 0
    assert await page.evaluate("window.pwned === undefined")
    await page.screenshot(path=screenshots / "hostile-payload.png", full_page=True)


async def test_the_overview_shows_failing_events_and_revenue_per_channel(
    page: Any,
    console_url: str,
    shop: Shop,
    screenshots: Path,
) -> None:
    await failed_then_fixable(shop)
    await sign_in(page, console_url, shop.stack.settings.internal_token)

    assert int(await page.text_content("#failed-count") or "0") >= 1
    await page.wait_for_selector("[data-chart=lines][data-drawn=true] canvas")
    legend = await page.locator("[data-chart=lines] .u-legend").text_content() or ""
    assert "stripe USD" in legend
    await page.screenshot(path=screenshots / "overview.png", full_page=True)
