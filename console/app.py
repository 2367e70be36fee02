"""Composition root of the console: sessions, templates, routes, and the services' channels."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import setup as setup_sessions

from console import metrics, security, views
from console.keys import CALLER_TOKENS_KEY, CATALOGUE_KEY, SERVICES_KEY
from console.services import Services
from paylayer.callers import CallerTokens
from paylayer.catalogue import load_catalogue
from paylayer.settings import Settings

HERE = Path(__file__).parent


def _format_time(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else ""


def session_key(settings: Settings) -> bytes:
    """32 bytes for Fernet from CONSOLE_SESSION_KEY (any length), else made now: without it a
    restart signs operators out, and replicas cannot read each other's cookies."""
    if settings.console_session_key:
        return hashlib.sha256(settings.console_session_key.encode()).digest()
    return secrets.token_bytes(32)


def init_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=64 * 1024, middlewares=[metrics.middleware, security.security_headers]
    )
    setup_sessions(app, security.ConsoleCookieStorage(session_key(settings)))
    app.middlewares.append(security.require_operator)
    app.middlewares.append(views.grpc_errors)
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value escaped: payloads come from the Internet
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["time"] = _format_time
    app[CALLER_TOKENS_KEY] = CallerTokens.from_settings(
        settings.caller_tokens, settings.internal_token
    )
    app[CATALOGUE_KEY] = load_catalogue(settings.catalogue_path)
    app[SERVICES_KEY] = Services(settings)

    async def close_channels(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[SERVICES_KEY].close()

    app.cleanup_ctx.append(close_channels)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.healthz)
    app.router.add_get("/favicon.ico", views.no_icon)
    app.router.add_get("/signin", views.signin_page)
    app.router.add_post("/signin", views.signin)
    app.router.add_post("/signout", views.signout)
    app.router.add_get("/", views.overview, name="overview")
    app.router.add_get("/inbox", views.inbox, name="inbox")
    app.router.add_post("/inbox/replay", views.replay_matching)
    app.router.add_get("/inbox/{provider}/{event_id}", views.event_detail)
    app.router.add_post("/inbox/{provider}/{event_id}/replay", views.replay_one)
    app.router.add_get("/payments", views.payments_page, name="payments")
    app.router.add_get("/payments/{provider}/{payment_key}/refund", views.refund_page)
    app.router.add_post("/payments/{provider}/{payment_key}/refund", views.refund)
    app.router.add_get("/users", views.find_user)
    app.router.add_get("/users/{user_id}", views.user_page)
    app.router.add_post("/users/{user_id}/grant", views.grant)
    app.router.add_post("/users/{user_id}/revoke", views.revoke)
    app.router.add_static("/static/", HERE / "static")
    return app
