"""The argument checks every service shares: a bad value is InvalidArgument, before any query.

One rule per kind of value, so the three services refuse the same inputs with the same code:
- ids and short texts: at most 255 characters, no control characters (PostgreSQL text cannot
  hold a NUL at all, and the others have no business in an id, a label or a server name);
- free texts (a reason): at most 1000 characters, line breaks and tabs allowed;
- amounts: finite, and not negative unless the caller says so;
- timestamps: between the years 2000 and 2200, so datetime arithmetic can never overflow;
- providers: the payment providers below.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from paylayer.errors import InvalidArgument

MAX_TEXT = 255
MAX_FREE_TEXT = 1000
# The providers a payment comes through; a grant from any other is a person's decision.
PAYMENT_PROVIDERS = ("stripe", "telegram")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

# C0 and C1 controls and DEL; free text may keep tab, line feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_FREE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text(name: str, value: str, *, required: bool = False, most: int = MAX_TEXT) -> str:
    """An id or a short text, as given (callers that store a canonical form strip it)."""
    if required and not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > most:
        raise InvalidArgument(f"{name} is longer than {most} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{name} contains a control character")
    return value


def free_text(name: str, value: str, *, required: bool = False) -> str:
    """A sentence a person wrote (a reason): longer, and may hold line breaks."""
    if required and not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > MAX_FREE_TEXT:
        raise InvalidArgument(f"{name} is longer than {MAX_FREE_TEXT} characters")
    if _CONTROL_IN_FREE_TEXT.search(value):
        raise InvalidArgument(f"{name} contains a control character")
    return value


def uuid_text(name: str, value: str) -> str:
    """An internal id: a UUID, in its canonical spelling so one thing never has two."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{name} must be a UUID") from None


def provider(value: str, *, required: bool = False) -> str:
    """A payment provider, or "" (any) when not required."""
    if (value or required) and value not in PAYMENT_PROVIDERS:
        raise InvalidArgument(f"provider must be one of {', '.join(PAYMENT_PROVIDERS)}")
    return value


def positive(name: str, value: int) -> int:
    if value <= 0:
        raise InvalidArgument(f"{name} must be positive")
    return value


def amount(name: str, value: float, *, may_be_negative: bool = False) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number")
    if value < 0 and not may_be_negative:
        raise InvalidArgument(f"{name} must not be negative")
    return value


def moment(name: str, message: Timestamp) -> datetime:
    """A timestamp the caller gave (whether it is optional is the caller's to decide)."""
    try:
        value = message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        value = None
    if value is None or not EARLIEST <= value < LATEST:
        raise InvalidArgument(f"{name} must lie between the years 2000 and 2200")
    return value
