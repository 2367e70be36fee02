"""What reaches a log line: real database errors from PostgreSQL, logged with their tracebacks,
carry no customer data and no secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from paylayer.db import async_url, create_engine
from paylayer.logs import configure_logging
from paylayer.settings import Settings
from tests.conftest import unredacted_tracebacks

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
