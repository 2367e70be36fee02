"""Internal callers: who presents which token, and which methods each caller's role may call.

The role table is data: giving a role a new method is one line here, and a method that does not
exist yet (a later RPC) may already be listed; it is allowed the day it is served.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from paylayer.validation import PAYMENT_PROVIDERS

log = logging.getLogger(__name__)

PAYMENTS = "paylayer.payments.v1.PaymentsService"
ENTITLEMENTS = "paylayer.entitlements.v1.EntitlementsService"
ACCOUNTS = "paylayer.accounts.v1.AccountsService"


def _methods(service: str, *names: str) -> frozenset[str]:
    return frozenset(f"/{service}/{name}" for name in names)


# What the reader may: look, never change. ResolveUser is here without `create` (see below).
_READ = (
    _methods(
        ENTITLEMENTS,
        "CheckEntitlement",
        "CheckEntitlements",
        "ListEntitlements",
        "WatchEntitlements",
    )
    | _methods(ACCOUNTS, "ResolveUser", "GetAccount", "ListAccounts", "ListAccountSnapshots")
    | _methods(PAYMENTS, "ListEvents", "ListPayments")
)

EVERYTHING = None  # the operator's role: every method of every service

ROLES: Mapping[str, frozenset[str] | None] = {
    # Internet-facing: it may only hand over what it verified; payments decides the rest.
    "gateway": _methods(PAYMENTS, "HandleStripeEvent", "HandleTelegramUpdate"),
    # ResolveUsers, GrantEntitlements and CheckEntitlements are the batch forms of
    # ResolveUser, GrantEntitlement and CheckEntitlement, under the same rules item by item.
    "payments": _methods(ACCOUNTS, "ResolveUser", "ResolveUsers", "LinkIdentity")
    | _methods(
        ENTITLEMENTS,
        "GrantEntitlement",
        "GrantEntitlements",
        "RevokeEntitlement",
        "CheckEntitlement",
        "CheckEntitlements",
        "ListEntitlements",
        "WatchEntitlements",
    ),
    "accounts": _methods(ENTITLEMENTS, "CheckEntitlement", "ListEntitlements", "WatchEntitlements"),
    "bot": _READ
    | _methods(ACCOUNTS, "LinkIdentity", "LinkAccount", "UnlinkAccount")
    | _methods(
        PAYMENTS,
        "CreateInvoiceLink",
        "CreateCheckoutSession",
        "CreatePortalSession",
        "CancelSubscription",
        "ResumeSubscription",
        "CreateInviteLinks",
        # Read-only: how the bot finds the subscription_id that cancelling and resuming take.
        "GetSubscription",
        "ListSubscriptions",
    ),
    "mt5": _methods(ACCOUNTS, "ReportAccountSnapshot"),
    "reader": _READ,
    "operator": EVERYTHING,
}
CALLER_NAMES = tuple(ROLES)

# Methods a role may call only in part; the servicer checks these before doing anything.
MAY_CREATE_USERS = frozenset({"bot", "payments", "operator"})
# Grants and revokes of these callers are limited to the sources a payment makes.
GRANTS_LIMITED_TO: Mapping[str, frozenset[str]] = {"payments": frozenset(PAYMENT_PROVIDERS)}

OPERATOR = "operator"
SHA256_PREFIX = "sha256="

# Set for each authenticated call by the server interceptor; read by servicers that record who.
caller_var: ContextVar[str] = ContextVar("caller", default="")


def may_call(caller: str, method: str) -> bool:
    allowed = ROLES.get(caller, frozenset())
    return allowed is EVERYTHING or method in allowed


class CallerTokensError(ValueError):
    """CALLER_TOKENS cannot be read; the process must not start."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class CallerTokens:
    """Token digests to caller names. Looked up by the SHA-256 of what a call presents, so the
    server may hold digests only, and the lookup reveals nothing about a wrong token."""

    by_digest: Mapping[bytes, str]
    single_token_mode: bool = False

    @classmethod
    def parse(cls, caller_tokens: str) -> CallerTokens:
        """`name:token,name:sha256=<hex>,...`; a name may appear several times (rotation)."""
        by_digest: dict[bytes, str] = {}
        for entry in caller_tokens.split(","):
            entry = entry.strip()
            if not entry:
                continue
            name, sep, token = entry.partition(":")
            name, token = name.strip(), token.strip()
            if not sep or not token:
                raise CallerTokensError(f"CALLER_TOKENS entry for {name!r} is not name:token")
            if name not in ROLES:
                raise CallerTokensError(
                    f"CALLER_TOKENS names unknown caller {name!r} (known: {', '.join(ROLES)})"
                )
            if token.startswith(SHA256_PREFIX):
                try:
                    digest = bytes.fromhex(token[len(SHA256_PREFIX) :])
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise CallerTokensError(f"CALLER_TOKENS: {name}'s sha256= is not 64 hex digits")
            else:
                digest = _digest(token)
            if by_digest.get(digest, name) != name:
                raise CallerTokensError(f"CALLER_TOKENS gives one token to two callers ({name})")
            by_digest[digest] = name
        return cls(by_digest)

    @classmethod
    def from_settings(cls, caller_tokens: str, internal_token: str) -> CallerTokens:
        if caller_tokens.strip():
            return cls.parse(caller_tokens)
        if not internal_token:
            raise CallerTokensError("set CALLER_TOKENS (or INTERNAL_TOKEN for single-token mode)")
        log.warning(
            "single-token mode: CALLER_TOKENS is unset, so INTERNAL_TOKEN is accepted as the "
            "operator's and any holder may call anything; set CALLER_TOKENS for real use"
        )
        return cls({_digest(internal_token): OPERATOR}, single_token_mode=True)

    def caller_of(self, authorization: str) -> str | None:
        """The caller name a `Bearer <token>` header belongs to, or None."""
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            return None
        return self.by_digest.get(_digest(token))

    def belongs_to(self, token: str, name: str) -> bool:
        return self.by_digest.get(_digest(token)) == name


def token_digest_hex(token: str) -> str:
    """The `sha256=` form of a token, for a CALLER_TOKENS that holds no secret."""
    return SHA256_PREFIX + hashlib.sha256(token.encode()).hexdigest()
