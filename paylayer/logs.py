"""JSON logs, one object a line, carrying the request id of the call being served."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# Set by the gRPC interceptor (from `x-request-id` metadata) and by the gateway (the provider's
# event id), read by every log line and every outgoing call.
request_id_var: ContextVar[str] = ContextVar("request_id", default="")

REQUEST_ID_HEADER = "x-request-id"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


REDACTED = "[redacted]"

# What a database error carries besides its message: SQLAlchemy's `[parameters: ...]` (the
# engine hides them too; this catches any other engine), PostgreSQL's DETAIL (`Key (x)=(value)`)
# and the password in a connection URL. Matched on the written line, JSON escapes included.
_DATABASE_DETAILS = (
    (re.compile(r"\[parameters: .*?\](?=\\n|\n|\\\"|\"|$)"), f"[parameters: {REDACTED}]"),
    (re.compile(r"(DETAIL|HINT): .*?(?=\\n|\n|\"|$)"), rf"\1: {REDACTED}"),
    (re.compile(r"(Key \().*?(\)=\().*?(\))"), rf"\1{REDACTED}\2{REDACTED}\3"),
    # A value PostgreSQL or asyncpg could not take is quoted in the message itself.
    (re.compile(r"(invalid input [^:\n]*: ).*?(?=\\n|\n|$)"), rf"\1{REDACTED}"),
    (re.compile(r"(\w+://[^:/@\s\"]+:)[^@\s\"]+@"), rf"\1{REDACTED}@"),
)


def redact(line: str, secrets: list[str]) -> str:
    """The line with every secret (of any length) and every database detail masked."""
    for secret in secrets:
        line = line.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            line = line.replace(escaped, REDACTED)
    for pattern, replacement in _DATABASE_DETAILS:
        line = pattern.sub(replacement, line)
    return line


class _RedactingJsonFormatter(JsonFormatter):
    """Last line of defence: redacts the whole written line, tracebacks and extras included,
    not only the message."""

    def __init__(self, *args: Any, secrets: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure_logging(service: str, level: str = "INFO", secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
            secrets=secrets or [],
        )
    )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per webhook: useful, but not at DEBUG volume.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
