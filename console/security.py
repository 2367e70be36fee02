"""Sign-in, sessions, CSRF and the security headers: what stands between the console and
anyone who is not an operator.

Provider payloads shown here come from the Internet: templates autoescape everything, and the
CSP allows no inline script, so markup that slipped through still could not run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp_session import Session, get_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from paylayer.callers import OPERATOR, CallerTokens

SESSION_COOKIE = "paylayer_console"
SESSION_SECONDS = 8 * 3600  # a working day; then sign in again
CSRF_FIELD = "csrf"
MAX_OPERATOR_NAME = 64

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

# Reachable without a session: the sign-in page itself, health, and the static files.
PUBLIC_PATHS = ("/signin", "/healthz", "/readyz", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


class ConsoleCookieStorage(EncryptedCookieStorage):
    """Encrypted (Fernet) and authenticated cookie, HttpOnly, SameSite=Strict; Secure when the
    request came over TLS, directly or through a proxy that says so."""

    def __init__(self, key: bytes) -> None:
        super().__init__(
            key,
            cookie_name=SESSION_COOKIE,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            path="/",
        )

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        # Set and used with no await in between, so concurrent requests cannot mix it up.
        behind_tls = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
        self._cookie_params["secure"] = behind_tls or None
        await super().save_session(request, response, session)


def is_operator_token(tokens: CallerTokens, token: str) -> bool:
    """Whether `token` is one of the operator's: its SHA-256 compared with every operator
    digest in constant time, so neither timing nor the number of tokens tells anything."""
    presented = hashlib.sha256(token.encode()).digest()
    matched = False
    for digest, name in tokens.by_digest.items():
        matched |= hmac.compare_digest(presented, digest) and name == OPERATOR
    return matched


def csrf_token(session: Session) -> str:
    """The session's CSRF token, made on first need; every form carries it."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def csrf_matches(session: Session, given: str) -> bool:
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def signed_in(session: Session) -> bool:
    return isinstance(session.get("token"), str) and isinstance(session.get("operator"), str)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as error:
        response = error
        _add_headers(response)
        raise
    _add_headers(response)
    return response


def _add_headers(response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def require_operator(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No session: a page redirects to sign-in, a change is refused (401) before it is read.
    Every POST carries the session's CSRF token, else 403 and nothing happens."""
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        if request.method == "POST":
            await _check_csrf(request)
        return await handler(request)
    session = await get_session(request)
    if not signed_in(session):
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther("/signin")
        raise web.HTTPUnauthorized(text="sign in first")
    if request.method == "POST":
        await _check_csrf(request)
    return await handler(request)


async def _check_csrf(request: web.Request) -> None:
    session = await get_session(request)
    form = await request.post()
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not csrf_matches(session, given):
        raise web.HTTPForbidden(text="the form's CSRF token does not match this session")


def chart_json(value: Any) -> str:
    """JSON for a `<script type="application/json">` block: `<`, `>` and `&` escaped, so no
    value can close the block (Jinja's autoescape then leaves it alone via `|safe`)."""
    return (
        json.dumps(value, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
