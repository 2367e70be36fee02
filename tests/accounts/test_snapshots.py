"""Snapshots from an MT5 bridge: the latest kept, stale ones ignored, drawdown from the peak."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from tests.accounts.conftest import START, account_request, mt5_login, new_user, report

Stub = accounts_pb2_grpc.AccountsServiceStub


async def linked_account(accounts: Stub) -> tuple[int, str]:
    user_id = await new_user(accounts)
    linked = await accounts.LinkAccount(account_request(user_id))
    return linked.account.login, linked.account.server


async def get(accounts: Stub, login: int, server: str) -> accounts_pb2.Account:
    response = await accounts.GetAccount(accounts_pb2.GetAccountRequest(login=login, server=server))
    return response.account


async def test_drawdown_over_a_series_of_snapshots(accounts: Stub) -> None:
    login, server = await linked_account(accounts)
    expected = [
        # equity, peak, drawdown, max drawdown
        (1000.0, 1000.0, 0.0, 0.0),
        (1200.0, 1200.0, 0.0, 0.0),
        (900.0, 1200.0, 0.25, 0.25),
        (1100.0, 1200.0, 100 / 1200, 0.25),
        (600.0, 1200.0, 0.5, 0.5),
        (1500.0, 1500.0, 0.0, 0.5),
    ]
    for minute, (equity, peak, drawdown, max_drawdown) in enumerate(expected):
        response = await accounts.ReportAccountSnapshot(
            report(login, server, START + timedelta(minutes=minute), equity)
        )
        assert response.applied
        account = await get(accounts, login, server)
        assert account.equity == equity
        assert account.peak_equity == peak
        assert account.drawdown == pytest.approx(drawdown)
        assert account.max_drawdown == pytest.approx(max_drawdown)

    account = await get(accounts, login, server)
    assert account.snapshot_time.ToDatetime(tzinfo=UTC) == START + timedelta(minutes=5)
    assert (account.balance, account.margin, account.leverage) == (1000.0, 100.0, 500)
    assert account.currency == "USD"


async def test_a_snapshot_older_than_the_stored_one_is_ignored(accounts: Stub) -> None:
    login, server = await linked_account(accounts)
    await accounts.ReportAccountSnapshot(report(login, server, START + timedelta(minutes=10), 1000))

    stale = await accounts.ReportAccountSnapshot(report(login, server, START, 10.0))
    repeated = await accounts.ReportAccountSnapshot(
        report(login, server, START + timedelta(minutes=10), 500.0)
    )

    assert not stale.applied and not repeated.applied
    account = await get(accounts, login, server)
    assert account.equity == 1000.0
    assert account.max_drawdown == 0.0
    assert stale.account.equity == 1000.0


async def test_concurrent_reports_in_any_order_leave_the_newest(accounts: Stub) -> None:
    login, server = await linked_account(accounts)
    minutes = list(range(30))
    random.shuffle(minutes)

    await asyncio.gather(
        *(
            accounts.ReportAccountSnapshot(
                report(login, server, START + timedelta(minutes=m), 1000.0 + m)
            )
            for m in minutes
        )
    )

    account = await get(accounts, login, server)
    assert account.snapshot_time.ToDatetime(tzinfo=UTC) == START + timedelta(minutes=29)
    assert account.equity == 1029.0


async def test_a_snapshot_for_an_account_nobody_linked_is_not_found(accounts: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.ReportAccountSnapshot(report(mt5_login(), "Nowhere-Live", START, 1000.0))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_account_before_any_snapshot_shows_no_values(accounts: Stub) -> None:
    login, server = await linked_account(accounts)
    account = await get(accounts, login, server)
    assert not account.HasField("snapshot_time")
    assert (account.equity, account.drawdown, account.max_drawdown) == (0.0, 0.0, 0.0)


def without_time(request: accounts_pb2.ReportAccountSnapshotRequest) -> None:
    request.ClearField("time")


@pytest.mark.parametrize(
    "spoil",
    [
        lambda r: setattr(r, "balance", math.nan),
        lambda r: setattr(r, "equity", math.inf),
        lambda r: setattr(r, "margin", -math.inf),
        lambda r: setattr(r, "balance", -1.0),
        lambda r: setattr(r, "login", 0),
        lambda r: setattr(r, "server", " "),
        lambda r: r.time.FromDatetime(datetime.now(UTC) + timedelta(days=1)),
        without_time,
    ],
    ids=[
        "nan-balance",
        "inf-equity",
        "-inf-margin",
        "negative-balance",
        "no-login",
        "blank-server",
        "future",
        "no-time",
    ],
)
async def test_impossible_snapshots_are_invalid_arguments_and_change_nothing(
    accounts: Stub, spoil: object
) -> None:
    login, server = await linked_account(accounts)
    await accounts.ReportAccountSnapshot(report(login, server, START, 1000.0))
    request = report(login, server, START + timedelta(minutes=1), 700.0)
    spoil(request)  # type: ignore[operator]

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.ReportAccountSnapshot(request)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    account = await get(accounts, login, server)
    assert account.equity == 1000.0


async def history(accounts: Stub, login: int, server: str, **kwargs: object) -> list[tuple]:
    response = await accounts.ListAccountSnapshots(
        accounts_pb2.ListAccountSnapshotsRequest(login=login, server=server, **kwargs)  # type: ignore[arg-type]
    )
    return [
        (p.time.ToDatetime(tzinfo=UTC), p.equity, round(p.drawdown, 6)) for p in response.points
    ]


async def test_history_keeps_one_point_a_minute_the_first_of_it(accounts: Stub) -> None:
    login, server = await linked_account(accounts)
    minute = START.replace(second=0, microsecond=0)
    for offset_seconds, equity in [(1, 1000.0), (20, 900.0), (59, 800.0), (61, 500.0)]:
        await accounts.ReportAccountSnapshot(
            report(login, server, minute + timedelta(seconds=offset_seconds), equity)
        )

    points = await history(accounts, login, server.upper())

    # The latest snapshot is the newest; the chart has the first of each minute.
    assert points == [
        (minute + timedelta(seconds=1), 1000.0, 0.0),
        (minute + timedelta(seconds=61), 500.0, 0.5),
    ]
    assert (await get(accounts, login, server)).equity == 500.0


async def test_history_between_times_gives_the_newest_points_oldest_first(accounts: Stub) -> None:
    login, server = await linked_account(accounts)
    for minute in range(10):
        await accounts.ReportAccountSnapshot(
            report(login, server, START + timedelta(minutes=minute), 1000.0 + minute)
        )
    since, until = Timestamp(), Timestamp()
    since.FromDatetime(START + timedelta(minutes=2))
    until.FromDatetime(START + timedelta(minutes=8))

    points = await history(accounts, login, server, since=since, until=until, limit=3)

    assert [equity for _, equity, _ in points] == [1005.0, 1006.0, 1007.0]


async def test_stale_snapshots_add_no_history_and_unlinking_forgets_it(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    linked = await accounts.LinkAccount(account_request(user_id))
    login, server = linked.account.login, linked.account.server
    await accounts.ReportAccountSnapshot(report(login, server, START + timedelta(minutes=5), 1000))
    await accounts.ReportAccountSnapshot(report(login, server, START, 10.0))
    assert [equity for _, equity, _ in await history(accounts, login, server)] == [1000.0]

    await accounts.UnlinkAccount(
        accounts_pb2.UnlinkAccountRequest(user_id=user_id, login=login, server=server)
    )
    await accounts.LinkAccount(account_request(user_id, login=login, server=server))
    assert await history(accounts, login, server) == []


async def test_history_of_an_unlinked_account_or_bad_range_is_refused(accounts: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await history(accounts, mt5_login(), "Nowhere")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    login, server = await linked_account(accounts)
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await history(accounts, login, server, limit=10_001)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A time past what a datetime can hold is a bad argument, never an internal error.
    with pytest.raises(grpc.aio.AioRpcError) as far:
        await history(accounts, login, server, since=Timestamp(seconds=10**12))
    assert far.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_history_thinned_to_max_points_keeps_each_stretchs_deepest_drawdown(
    accounts: Stub,
) -> None:
    login, server = await linked_account(accounts)
    start = START.replace(second=0, microsecond=0) - timedelta(hours=1)
    for minute in range(60):
        # A steady climb with one sharp dip at minute 37.
        equity = 500.0 if minute == 37 else 1000.0 + minute
        await accounts.ReportAccountSnapshot(
            report(login, server, start + timedelta(minutes=minute), equity)
        )
    since = Timestamp()
    since.FromDatetime(start)
    until = Timestamp()
    until.FromDatetime(start + timedelta(minutes=60))

    points = await history(accounts, login, server, since=since, until=until, max_points=6)

    assert 6 <= len(points) <= 7
    assert [time for time, _, _ in points] == sorted(time for time, _, _ in points)
    assert (start + timedelta(minutes=37), 500.0, round(1 - 500 / 1036, 6)) in points
    with pytest.raises(grpc.aio.AioRpcError) as no_span:
        await history(accounts, login, server, max_points=6)
    assert no_span.value.code() == grpc.StatusCode.INVALID_ARGUMENT
