"""What reaches a log line: real database errors from PostgreSQL, logged with their tracebacks,
carry no customer data and no secret; a malformed HTTP request is one warning, no traceback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import time
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from paylayer.db import async_url, create_engine
from paylayer.logs import configure_logging
from paylayer.settings import Settings
from tests.conftest import unredacted_tracebacks
from tests.stack import Stack

CUSTOMER = "cus_PrivateCustomer42"
log = logging.getLogger("tests.logs")


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """The process's log configuration, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    settings = Settings(
        internal_token="tok-" + "x" * 20,
        caller_tokens="bot:b0t,gateway:sha256=" + "0" * 64,
        stripe_webhook_secrets=("whsec_short",),
        database_url="postgresql://payments_app:pa55word-of-db@db.internal:5432/paylayer",
    )
    configure_logging("tests", "INFO", settings.secrets())
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:], root.level = saved


def _lines(buffer: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_a_failed_statement_logs_its_traceback_without_its_parameters(
    database_url: str, written: io.StringIO
) -> None:
    # An engine without our settings: the log itself must still hide what was bound.
    raw = create_async_engine(async_url(database_url))
    ours = create_engine(database_url, application_name="tests-logs", pool_size=1)
    statements = {
        # refused by asyncpg while encoding the argument
        "SELECT CAST(:v AS integer)": "invalid input for query argument",
        # refused by PostgreSQL, which quotes the value in its message
        "SELECT CAST(CAST(:v AS text) AS integer)": "invalid input syntax",
    }
    try:
        for engine in (raw, ours):
            for statement in statements:
                try:
                    async with engine.connect() as connection:
                        await connection.execute(text(statement), {"v": CUSTOMER})
                except Exception:
                    log.exception("lookup failed")
    finally:
        await raw.dispose()
        await ours.dispose()
    lines = _lines(written)
    assert len(lines) == 4
    for line, expected in zip(lines, [*statements.values()] * 2, strict=True):
        assert expected in line["exc_info"]  # the error itself stays readable
        assert CUSTOMER not in json.dumps(line)


async def test_a_unique_violation_logs_no_key_value(
    database_url: str, written: io.StringIO
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("CREATE TEMP TABLE customers (id text UNIQUE)")
        await connection.execute("INSERT INTO customers VALUES ($1)", CUSTOMER)
        try:
            await connection.execute("INSERT INTO customers VALUES ($1)", CUSTOMER)
        except asyncpg.UniqueViolationError as error:
            assert CUSTOMER in (error.detail or "")  # PostgreSQL did put it there
            log.exception("insert failed: %s (%s)", error, error.detail)
    finally:
        await connection.close()
    [line] = _lines(written)
    assert "duplicate key" in line["message"]
    assert CUSTOMER not in json.dumps(line)


def test_secrets_of_any_length_and_the_database_password_are_masked(
    written: io.StringIO,
) -> None:
    try:
        raise RuntimeError("token b0t refused; whsec_short; tok-" + "x" * 20)
    except RuntimeError:
        log.exception(
            "connecting to %s",
            "postgresql://payments_app:pa55word-of-db@db.internal:5432/paylayer",
        )
    [line] = _lines(written)
    whole = json.dumps(line)
    for secret in ("b0t", "whsec_short", "tok-" + "x" * 20, "pa55word-of-db"):
        assert secret not in whole, secret
    assert "payments_app:[redacted]@db.internal" in line["message"]


def test_the_end_of_run_scan_catches_a_traceback_with_database_details(
    written: io.StringIO,
) -> None:
    """conftest's scan of every stack log would fail the run on the first line, not the second."""
    leaked = json.dumps({"exc_info": "IntegrityError\n[parameters: ('cus_1',)]", "message": "x"})
    assert unredacted_tracebacks(leaked) == 1
    try:
        raise RuntimeError("DETAIL:  Key (customer)=(cus_1) already exists.")
    except RuntimeError:
        log.exception("insert failed")
    assert unredacted_tracebacks(written.getvalue()) == 0
    assert "cus_1" not in written.getvalue()


async def test_a_malformed_http_request_is_a_400_and_one_warning_line_not_a_traceback(
    stack: Stack,
) -> None:
    """aiohttp logs such a request as an ERROR with a traceback; any client could fill the log."""
    logs = sorted(stack.log_dir.glob("gateway*.log"))
    assert logs, "the gateway writes a log"
    starts = {path: path.stat().st_size for path in logs}
    host, port = stack.addrs["gateway"].rsplit(":", 1)
    marker = secrets.token_hex(6)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/v1/stripe/webhook HTTP/1.1\r\nHost: gateway\r\n"
        + f"X-Probe-{marker}: a\x01b\r\n".encode()
        + b"Content-Length: 0\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status_line.split()[1] == b"400", status_line

    def written_since() -> str:
        return "".join(
            path.read_bytes()[starts.get(path, 0) :].decode(errors="replace")
            for path in sorted(stack.log_dir.glob("gateway*.log"))
        )

    deadline = time.monotonic() + 30
    while "malformed HTTP" not in written_since():
        assert time.monotonic() < deadline, "the malformed request was never logged"
        await asyncio.sleep(0.1)
    lines = [line for line in written_since().splitlines() if "malformed HTTP" in line]
    assert "WARNING" in lines[0] and "ERROR" not in lines[0], lines[0]
    assert "Traceback" not in written_since()
