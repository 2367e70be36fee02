"""The console's pages: each reads the services over gRPC as the signed-in operator."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
import grpc
from aiohttp import web
from aiohttp_session import get_session, new_session
from google.protobuf.timestamp_pb2 import Timestamp

from console import shape
from console.keys import CALLER_TOKENS_KEY, CATALOGUE_KEY, SERVICES_KEY
from console.security import (
    MAX_OPERATOR_NAME,
    chart_json,
    csrf_token,
    is_operator_token,
)
from console.services import Stubs
from protos.accounts.v1 import accounts_pb2
from protos.entitlements.v1 import entitlements_pb2
from protos.payments.v1 import payments_pb2

log = logging.getLogger(__name__)

STATUSES = {
    "pending": payments_pb2.EVENT_STATUS_PENDING,
    "processed": payments_pb2.EVENT_STATUS_PROCESSED,
    "ignored": payments_pb2.EVENT_STATUS_IGNORED,
    "failed": payments_pb2.EVENT_STATUS_FAILED,
}
STATUS_NAMES = {value: name for name, value in STATUSES.items()}
PROVIDERS = ("stripe", "telegram")
INBOX_PAGE = 50
CHART_DAYS = 7
CHART_POINTS = 1200  # about one per pixel of a wide chart
MAX_REASON = 500
MESSAGES_SHOWN = 50


def when(stamp: Timestamp) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else None


def stamp_of(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def render(request: web.Request, template: str, context: dict[str, Any]) -> web.Response:
    session = await get_session(request)
    flashes = session.pop("flash", [])
    base = {
        "csrf": csrf_token(session),
        "operator": session.get("operator", ""),
        "flashes": flashes,
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context})


async def flash(request: web.Request, kind: str, message: str) -> None:
    session = await get_session(request)
    session["flash"] = [*session.get("flash", []), [kind, message]]


async def operator_stubs(request: web.Request) -> tuple[Stubs, str]:
    session = await get_session(request)
    return request.app[SERVICES_KEY].for_token(session["token"]), session["operator"]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def grpc_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A service's refusal becomes a page an operator can read, never a traceback."""
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details() or ""
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            # The token was rotated out (or is not the operator's any more): sign in again.
            session = await get_session(request)
            session.invalidate()
            raise web.HTTPSeeOther("/signin") from None
        status = {
            grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.INVALID_ARGUMENT: 400,
            grpc.StatusCode.FAILED_PRECONDITION: 409,
            grpc.StatusCode.ALREADY_EXISTS: 409,
        }.get(code, 503)
        if status == 503:
            log.warning("console: %s answered %s", request.path, code.name)
        response = await render(
            request, "error.html", {"code": code.name, "details": details, "status": status}
        )
        response.set_status(status)
        return response


# --- sign-in ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def signin_page(request: web.Request) -> web.Response:
    return await render(request, "signin.html", {"error": ""})


async def signin(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    name = str(form.get("name", "")).strip()
    token = str(form.get("token", "")).strip()
    if not is_operator_token(request.app[CALLER_TOKENS_KEY], token):
        log.warning("console: a sign-in with a token that is not the operator's")
        response = await render(request, "signin.html", {"error": "That is not an operator token."})
        response.set_status(401)
        return response
    if not name or len(name) > MAX_OPERATOR_NAME or not name.isprintable():
        response = await render(
            request, "signin.html", {"error": f"Give your name (at most {MAX_OPERATOR_NAME})."}
        )
        response.set_status(400)
        return response
    # A new session (and CSRF token) on sign-in: one planted before cannot be reused.
    session = await new_session(request)
    session["token"] = token
    session["operator"] = name
    csrf_token(session)
    log.info("console: %s signed in", name)
    raise web.HTTPSeeOther("/")


async def signout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPSeeOther("/signin")


# --- overview -----------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    stubs, _ = await operator_stubs(request)
    now = datetime.now(UTC)
    reply = await stubs.payments.GetOverview(payments_pb2.GetOverviewRequest(hours=24, days=30))
    hourly = [
        (h.hour.ToDatetime(tzinfo=UTC), STATUS_NAMES.get(h.status, "?"), h.count)
        for h in reply.events_per_hour
    ]
    daily = [
        (r.day.ToDatetime(tzinfo=UTC), r.provider, r.currency, r.amount, r.payments)
        for r in reply.revenue_per_day
    ]
    totals: dict[str, int] = {}
    for _, status, count in hourly:
        totals[status] = totals.get(status, 0) + count
    revenue_totals: dict[tuple[str, str], int] = {}
    for _, provider, currency, amount, _count in daily:
        revenue_totals[(provider, currency)] = revenue_totals.get((provider, currency), 0) + amount
    return await render(
        request,
        "overview.html",
        {
            "failed": reply.failed_events,
            "pending": reply.pending_events,
            "oldest_pending": shape.age(when(reply.oldest_pending_received_at), now),
            "totals": totals,
            "revenue_totals": [
                (provider, shape.money(amount, currency))
                for (provider, currency), amount in sorted(revenue_totals.items())
            ],
            "hourly_json": chart_json(shape.hourly_series(hourly, now, 24)),
            "revenue_json": chart_json(shape.revenue_series(daily, now, 30)),
        },
    )


# --- inbox --------------------------------------------------------------------------------


def _date(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a date (YYYY-MM-DD)") from None


def _inbox_filter(query: Any) -> dict[str, Any]:
    provider = query.get("provider", "")
    status = query.get("status", "")
    if provider and provider not in PROVIDERS:
        raise web.HTTPBadRequest(text="unknown provider")
    if status and status not in STATUSES:
        raise web.HTTPBadRequest(text="unknown status")
    event_type = str(query.get("type", "")).strip()[:255]
    since = _date(query.get("since", ""), "since")
    until = _date(query.get("until", ""), "until")
    return {
        "provider": provider,
        "status": status,
        "type": event_type,
        "since": since,
        # The whole of the last day asked for.
        "until": until + timedelta(days=1) if until else None,
        "since_text": query.get("since", ""),
        "until_text": query.get("until", ""),
    }


async def inbox(request: web.Request) -> web.Response:
    stubs, _ = await operator_stubs(request)
    chosen = _inbox_filter(request.query)
    listing = payments_pb2.ListEventsRequest(
        status=STATUSES.get(chosen["status"], payments_pb2.EVENT_STATUS_UNSPECIFIED),
        event_type=chosen["type"],
        provider=chosen["provider"],
        page_size=INBOX_PAGE,
        page_token=request.query.get("page", "")[:20],
    )
    if chosen["since"]:
        listing.received_since.CopyFrom(stamp_of(chosen["since"]))
    if chosen["until"]:
        listing.received_before.CopyFrom(stamp_of(chosen["until"]))
    reply = await stubs.payments.ListEvents(listing)
    events = [
        {
            "provider": e.provider,
            "event_id": e.event_id,
            "type": e.event_type,
            "status": STATUS_NAMES.get(e.status, "?"),
            "attempts": e.attempts,
            "error": e.error,
            "received_at": when(e.received_at),
            "payment_key": e.payment_key,
        }
        for e in reply.events
    ]
    next_query = {key: value for key, value in request.query.items() if key != "page" and value} | {
        "page": reply.next_page_token
    }
    return await render(
        request,
        "inbox.html",
        {
            "events": events,
            "chosen": chosen,
            "providers": PROVIDERS,
            "statuses": list(STATUSES),
            "next_query": next_query if reply.next_page_token else None,
            "replayable": chosen["status"] in ("failed", "ignored"),
        },
    )


async def replay_matching(request: web.Request) -> web.StreamResponse:
    stubs, operator = await operator_stubs(request)
    form = await request.post()
    chosen = _inbox_filter(form)
    if chosen["status"] not in ("failed", "ignored"):
        raise web.HTTPBadRequest(text="only failed or ignored events replay")
    replay = payments_pb2.ReplayEventsRequest(
        status=STATUSES[chosen["status"]],
        event_type=chosen["type"],
        provider=chosen["provider"],
        requested_by=operator,
    )
    if chosen["since"]:
        replay.since.CopyFrom(stamp_of(chosen["since"]))
    reply = await stubs.payments.ReplayEvents(replay)
    log.info("console: %s replayed %d %s events", operator, reply.replayed, chosen["status"])
    await flash(request, "ok", f"{reply.replayed} events put back in the queue.")
    raise web.HTTPSeeOther(request.app.router["inbox"].url_for().with_query({"status": "pending"}))


async def event_detail(request: web.Request) -> web.Response:
    stubs, _ = await operator_stubs(request)
    provider, event_id = request.match_info["provider"], request.match_info["event_id"]
    reply = await stubs.payments.GetEvent(
        payments_pb2.GetEventRequest(provider=provider, event_id=event_id)
    )
    e = reply.event
    return await render(
        request,
        "event.html",
        {
            "event": {
                "provider": e.provider,
                "event_id": e.event_id,
                "type": e.event_type,
                "status": STATUS_NAMES.get(e.status, "?"),
                "attempts": e.attempts,
                "error": e.error,
                "received_at": when(e.received_at),
                "processed_at": when(e.processed_at),
                "next_attempt_at": when(e.next_attempt_at),
                "payment_key": e.payment_key,
                "replayed_by": reply.replayed_by,
            },
            "payload": shape.pretty_payload(reply.payload),
        },
    )


async def replay_one(request: web.Request) -> web.StreamResponse:
    stubs, operator = await operator_stubs(request)
    provider, event_id = request.match_info["provider"], request.match_info["event_id"]
    reply = await stubs.payments.ReplayEvent(
        payments_pb2.ReplayEventRequest(provider=provider, event_id=event_id, requested_by=operator)
    )
    status = STATUS_NAMES.get(reply.event.status, "?")
    log.info("console: %s replayed %s:%s, now %s", operator, provider, event_id, status)
    await flash(request, "ok", f"Replayed: the event is now {status}.")
    raise web.HTTPSeeOther(request.path.removesuffix("/replay"))


# --- payments -----------------------------------------------------------------------------


def _payment_row(p: payments_pb2.Payment) -> dict[str, Any]:
    return {
        "provider": p.provider,
        "payment_key": p.payment_key,
        "user_id": p.user_id,
        "sku": p.sku,
        "status": p.status,
        "amount": shape.money(p.amount, p.currency),
        "refunded": shape.money(p.amount_refunded, p.currency) if p.amount_refunded else "",
        "created_at": when(p.created_at),
        "refundable": p.status in ("succeeded", "partially_refunded"),
    }


async def _find_user(stubs: Stubs, text: str) -> accounts_pb2.User | None:
    """A user by internal id, Telegram id, Stripe customer or email; None when nobody."""
    text = text.strip()
    request = accounts_pb2.ResolveUserRequest()
    if text.isdigit() and len(text) <= 18:
        request.telegram_user_id = int(text)
    elif text.startswith("cus_"):
        request.stripe_customer_id = text
    elif "@" in text:
        request.email = text
    else:
        try:
            request.user_id = str(uuid.UUID(text))
        except ValueError:
            return None
    try:
        return (await stubs.accounts.ResolveUser(request)).user
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return None
        raise


async def payments_page(request: web.Request) -> web.Response:
    stubs, _ = await operator_stubs(request)
    query = request.query.get("q", "").strip()[:255]
    listing = payments_pb2.ListPaymentsRequest(page_size=50)
    found_user = None
    if query:
        found_user = await _find_user(stubs, query)
        if found_user is not None:
            listing.user_id = found_user.user_id
        else:
            listing.payment_key = query
    reply = await stubs.payments.ListPayments(listing)
    return await render(
        request,
        "payments.html",
        {
            "q": query,
            "user": found_user,
            "payments": [_payment_row(p) for p in reply.payments],
        },
    )


async def _payment(stubs: Stubs, provider: str, payment_key: str) -> payments_pb2.Payment:
    reply = await stubs.payments.ListPayments(
        payments_pb2.ListPaymentsRequest(payment_key=payment_key, provider=provider, page_size=1)
    )
    if not reply.payments:
        raise web.HTTPNotFound(text="no such payment")
    return reply.payments[0]


async def refund_page(request: web.Request) -> web.Response:
    stubs, _ = await operator_stubs(request)
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise web.HTTPNotFound()
    payment = await _payment(stubs, provider, request.match_info["payment_key"])
    return await render(request, "refund.html", {"payment": _payment_row(payment)})


async def refund(request: web.Request) -> web.StreamResponse:
    stubs, operator = await operator_stubs(request)
    provider, payment_key = request.match_info["provider"], request.match_info["payment_key"]
    form = await request.post()
    reason = str(form.get("reason", "")).strip()
    if not reason or len(reason) > MAX_REASON:
        await flash(request, "error", "A refund needs a reason.")
        raise web.HTTPSeeOther(request.path)
    if form.get("confirm") != "yes":
        await flash(request, "error", "Tick the box to confirm the refund.")
        raise web.HTTPSeeOther(request.path)
    reply = await stubs.payments.RefundPayment(
        payments_pb2.RefundPaymentRequest(
            provider=provider,
            payment_key=payment_key,
            reason=reason[:255],
            requested_by=operator,
        )
    )
    log.info("console: %s refunded %s:%s", operator, provider, payment_key)
    await flash(request, "ok", f"Refunded: the payment is now {reply.payment.status}.")
    raise web.HTTPSeeOther(request.app.router["payments"].url_for().with_query({"q": payment_key}))


# --- users --------------------------------------------------------------------------------


async def find_user(request: web.Request) -> web.StreamResponse:
    stubs, _ = await operator_stubs(request)
    query = request.query.get("q", "").strip()[:255]
    user = await _find_user(stubs, query) if query else None
    if user is None:
        return await render(request, "find_user.html", {"q": query, "missing": bool(query)})
    raise web.HTTPSeeOther(f"/users/{user.user_id}")


def _grant_row(g: entitlements_pb2.Grant) -> dict[str, Any]:
    return {
        "grant_id": g.grant_id,
        "entitlement": g.entitlement,
        "provider": g.source.provider,
        "reference": g.source.reference,
        "purchased_at": when(g.purchased_at),
        "starts_at": when(g.starts_at),
        "ends_at": when(g.ends_at),
        "lifetime": g.lifetime,
        "revoked": g.revoked,
        "reason": g.reason,
        "granted_by": g.granted_by,
    }


async def user_page(request: web.Request) -> web.Response:
    stubs, _ = await operator_stubs(request)
    now = datetime.now(UTC)
    try:
        user_id = str(uuid.UUID(request.match_info["user_id"]))
    except ValueError:
        raise web.HTTPNotFound(text="not a user id") from None
    user = (await stubs.accounts.ResolveUser(accounts_pb2.ResolveUserRequest(user_id=user_id))).user
    listed = await stubs.entitlements.ListEntitlements(
        entitlements_pb2.ListEntitlementsRequest(user_id=user_id, include_revoked=True)
    )
    grants = [_grant_row(g) for g in listed.grants]
    explains = [
        await _explain(stubs, user_id, status.entitlement) for status in listed.entitlements
    ]
    audit = await stubs.entitlements.ListAudit(
        entitlements_pb2.ListAuditRequest(user_id=user_id, limit=100)
    )
    accounts = await stubs.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(user_id=user_id))
    told = await stubs.payments.ListMessages(
        payments_pb2.ListMessagesRequest(user_id=user_id, page_size=MESSAGES_SHOWN)
    )
    charts = [await _account_chart(stubs, account, now) for account in accounts.accounts]
    return await render(
        request,
        "user.html",
        {
            "user": _user_row(user),
            "grants": grants,
            "explains": explains,
            "audit": [_audit_row(entry) for entry in audit.entries],
            **_timeline(grants, now),
            "accounts": charts,
            "cap": accounts.cap,
            "messages": [_message_row(message) for message in told.messages],
            "tiers": sorted(request.app[CATALOGUE_KEY].max_accounts_by_tier),
            # Names the manual grant's source: a form submitted twice is granted once.
            "nonce": secrets.token_hex(12),
        },
    )


# --- the user page's fetches ------------------------------------------------------------------


async def _explain(stubs: Stubs, user_id: str, entitlement: str) -> dict[str, Any]:
    """Why the user has this entitlement now, or not: the grants that count."""
    check = await stubs.entitlements.CheckEntitlement(
        entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=entitlement)
    )
    return {
        "entitlement": entitlement,
        "active": check.active,
        "lifetime": check.lifetime,
        "expires_at": when(check.expires_at),
        "grants": [_grant_row(g) for g in check.grants],
    }


async def _account_chart(
    stubs: Stubs, account: accounts_pb2.Account, now: datetime
) -> dict[str, Any]:
    """A trading account with its equity and drawdown over the last CHART_DAYS."""
    history = await stubs.accounts.ListAccountSnapshots(
        accounts_pb2.ListAccountSnapshotsRequest(
            login=account.login,
            server=account.server,
            since=stamp_of(now - timedelta(days=CHART_DAYS)),
            limit=10_000,
            max_points=CHART_POINTS,
        )
    )
    return {
        "login": account.login,
        "server": account.server,
        "type": accounts_pb2.AccountType.Name(account.account_type)
        .removeprefix("ACCOUNT_TYPE_")
        .lower(),
        "suspended": account.suspended,
        "equity": account.equity,
        "currency": account.currency,
        "drawdown": account.drawdown,
        "max_drawdown": account.max_drawdown,
        "snapshot_time": when(account.snapshot_time),
        "points": len(history.points),
        "json": chart_json(
            shape.downsample(
                [p.time.seconds for p in history.points],
                [round(p.equity, 2) for p in history.points],
                [round(p.drawdown * 100, 3) for p in history.points],
                CHART_POINTS,
            )
        ),
    }


# --- the user page's view model ---------------------------------------------------------------


def _user_row(user: accounts_pb2.User) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "telegram_user_id": user.telegram_user_id or "",
        "stripe_customer_id": user.stripe_customer_id,
        "email": user.email,
        "created_at": when(user.created_at),
    }


def _audit_row(entry: entitlements_pb2.AuditEntry) -> dict[str, Any]:
    return {
        "occurred_at": when(entry.occurred_at),
        "action": entry.action,
        "entitlement": entry.entitlement,
        "source": f"{entry.source.provider}:{entry.source.reference}",
        "reason": entry.reason,
        "actor": entry.actor,
        "on_behalf_of": entry.on_behalf_of,
    }


def _message_row(message: payments_pb2.OutboxMessage) -> dict[str, Any]:
    return {
        "kind": message.kind,
        "status": message.status,
        "error": message.error,
        "created_at": when(message.created_at),
        "sent_at": when(message.sent_at),
        "due_at": when(message.due_at),
    }


def _timeline(grants: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The grants as bars on one time axis, one row per entitlement, and where now stands."""
    bars, start, end = shape.timeline(grants, now)
    now_left = (now - start).total_seconds() / max((end - start).total_seconds(), 1) * 100
    return {
        "bars": bars,
        "rows": sorted({bar.entitlement: bar.row for bar in bars}.items(), key=lambda r: r[1]),
        "timeline_start": start,
        "timeline_end": end,
        "now_left": round(min(max(now_left, 0), 100), 3),
    }


async def _existing_user(stubs: Stubs, raw: str) -> str:
    """The canonical id of a user that exists: a grant never goes to a made-up id."""
    try:
        user_id = str(uuid.UUID(raw))
    except ValueError:
        raise web.HTTPNotFound(text="not a user id") from None
    await stubs.accounts.ResolveUser(accounts_pb2.ResolveUserRequest(user_id=user_id))
    return user_id


async def grant(request: web.Request) -> web.StreamResponse:
    stubs, operator = await operator_stubs(request)
    user_id = await _existing_user(stubs, request.match_info["user_id"])
    form = await request.post()
    entitlement = str(form.get("entitlement", ""))
    reason = str(form.get("reason", "")).strip()
    term = str(form.get("days", "")).strip()
    if entitlement not in request.app[CATALOGUE_KEY].max_accounts_by_tier:
        raise web.HTTPBadRequest(text="unknown tier")
    if not reason or len(reason) > MAX_REASON:
        await flash(request, "error", "A manual grant needs a reason.")
        raise web.HTTPSeeOther(f"/users/{user_id}")
    nonce = str(form.get("nonce", ""))
    if not (nonce.isascii() and nonce.isalnum() and len(nonce) <= 64):
        raise web.HTTPBadRequest(text="the form is missing its nonce")
    request_message = entitlements_pb2.GrantEntitlementRequest(
        user_id=user_id,
        entitlement=entitlement,
        # One source per submitted form: a double submit is one grant (idempotent by source).
        source=entitlements_pb2.Source(provider="manual", reference=f"console-{nonce}"),
        reason=reason,
        granted_by=operator,
    )
    if term == "lifetime":
        request_message.lifetime = True
    elif term.isdigit() and 0 < int(term) <= 3650:
        request_message.duration_seconds = int(term) * 86400
    else:
        raise web.HTTPBadRequest(text="days must be 1 to 3650, or lifetime")
    reply = await stubs.entitlements.GrantEntitlement(request_message)
    log.info("console: %s granted %s to %s", operator, entitlement, user_id)
    await flash(
        request,
        "ok",
        f"Granted {entitlement}." if reply.created else "That form was already submitted.",
    )
    raise web.HTTPSeeOther(f"/users/{user_id}")


async def revoke(request: web.Request) -> web.StreamResponse:
    stubs, operator = await operator_stubs(request)
    user_id = await _existing_user(stubs, request.match_info["user_id"])
    form = await request.post()
    reason = str(form.get("reason", "")).strip()
    if not reason or len(reason) > MAX_REASON:
        await flash(request, "error", "A revoke needs a reason.")
        raise web.HTTPSeeOther(f"/users/{user_id}")
    source = entitlements_pb2.Source(
        provider=str(form.get("provider", "")), reference=str(form.get("reference", ""))
    )
    # Only this user's grants: the form names a source, the list proves it is theirs.
    listed = await stubs.entitlements.ListEntitlements(
        entitlements_pb2.ListEntitlementsRequest(user_id=user_id, include_revoked=True)
    )
    if not any(g.source == source for g in listed.grants):
        raise web.HTTPNotFound(text="no such grant for this user")
    await stubs.entitlements.RevokeEntitlement(
        entitlements_pb2.RevokeEntitlementRequest(source=source, reason=reason, revoked_by=operator)
    )
    log.info("console: %s revoked %s:%s", operator, source.provider, source.reference)
    await flash(request, "ok", "Revoked.")
    raise web.HTTPSeeOther(f"/users/{user_id}")
