"""MT5 accounts: one owner each, capped by the best tier, suspended (never deleted) past it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import grpc
import pytest

from accounts_service.server import build as build_accounts
from paylayer.ops.processes import free_port
from paylayer.settings import Settings
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2_grpc
from tests.accounts.conftest import (
    START,
    account_request,
    grant,
    mt5_login,
    new_user,
    report,
    revoke,
)
from tests.grpc_helpers import channel_to, serving

Stub = accounts_pb2_grpc.AccountsServiceStub
Entitlements = entitlements_pb2_grpc.EntitlementsServiceStub


async def listed(accounts: Stub, user_id: str) -> accounts_pb2.ListAccountsResponse:
    return await accounts.ListAccounts(accounts_pb2.ListAccountsRequest(user_id=user_id))


async def link_many(accounts: Stub, user_id: str, count: int) -> list[int]:
    """Link one after the other, so the link order is the list order."""
    logins = []
    for _ in range(count):
        linked = await accounts.LinkAccount(account_request(user_id))
        logins.append(linked.account.login)
    return logins


def suspended_by_login(response: accounts_pb2.ListAccountsResponse) -> dict[int, bool]:
    return {account.login: account.suspended for account in response.accounts}


@pytest.mark.parametrize(("tier", "cap"), [(None, 1), ("premium", 3), ("vip", 10)])
async def test_the_cap_follows_the_users_best_tier(
    accounts: Stub, entitlements: Entitlements, tier: str | None, cap: int
) -> None:
    user_id = await new_user(accounts)
    if tier:
        await grant(entitlements, user_id, tier)

    await link_many(accounts, user_id, cap)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.LinkAccount(account_request(user_id))

    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    response = await listed(accounts, user_id)
    assert response.cap == cap
    assert len(response.accounts) == cap
    assert not any(account.suspended for account in response.accounts)


async def test_vip_with_premium_too_gets_the_vip_cap(
    accounts: Stub, entitlements: Entitlements
) -> None:
    user_id = await new_user(accounts)
    await grant(entitlements, user_id, "premium")
    await grant(entitlements, user_id, "vip")
    assert (await listed(accounts, user_id)).cap == 10


async def test_when_a_tier_ends_the_newest_links_wait_and_come_back_with_it(
    accounts: Stub, entitlements: Entitlements
) -> None:
    user_id = await new_user(accounts)
    vip = await grant(entitlements, user_id, "vip")
    logins = await link_many(accounts, user_id, 4)

    await revoke(entitlements, vip)
    without_tier = await listed(accounts, user_id)
    newest = await accounts.GetAccount(
        accounts_pb2.GetAccountRequest(login=logins[-1], server="Broker-Demo")
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await accounts.LinkAccount(account_request(user_id))

    # Nothing deleted: all four are there, only the oldest is active.
    assert [a.login for a in without_tier.accounts] == logins
    assert suspended_by_login(without_tier) == {
        logins[0]: False,
        logins[1]: True,
        logins[2]: True,
        logins[3]: True,
    }
    assert newest.account.suspended
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    await grant(entitlements, user_id, "premium")
    with_premium = await listed(accounts, user_id)
    assert [a.suspended for a in with_premium.accounts] == [False, False, False, True]

    await grant(entitlements, user_id, "vip")
    back = await listed(accounts, user_id)
    assert [a.suspended for a in back.accounts] == [False] * 4
    assert [a.login for a in back.accounts] == logins


async def test_unlinking_an_active_account_frees_its_place_for_a_suspended_one(
    accounts: Stub, entitlements: Entitlements
) -> None:
    user_id = await new_user(accounts)
    premium = await grant(entitlements, user_id, "premium")
    logins = await link_many(accounts, user_id, 2)
    await revoke(entitlements, premium)

    await accounts.UnlinkAccount(
        accounts_pb2.UnlinkAccountRequest(user_id=user_id, login=logins[0], server="Broker-Demo")
    )

    response = await listed(accounts, user_id)
    assert suspended_by_login(response) == {logins[1]: False}


async def test_concurrent_links_cannot_pass_the_cap_together(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    outcomes = await asyncio.gather(
        *(accounts.LinkAccount(account_request(user_id)) for _ in range(6)),
        return_exceptions=True,
    )
    refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]

    assert len(refusals) == 5
    assert {r.code() for r in refusals} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert len((await listed(accounts, user_id)).accounts) == 1


async def test_one_account_links_to_one_user_at_most(accounts: Stub) -> None:
    owner = await new_user(accounts)
    other = await new_user(accounts)
    login = mt5_login()
    first = await accounts.LinkAccount(account_request(owner, login))

    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await accounts.LinkAccount(account_request(other, login))
    relinked = await accounts.LinkAccount(account_request(owner, login))

    assert first.created and not relinked.created
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [a.login for a in (await listed(accounts, owner)).accounts] == [login]
    assert (await listed(accounts, other)).accounts == []


async def test_the_same_login_on_another_server_is_another_account(accounts: Stub) -> None:
    owner = await new_user(accounts)
    other = await new_user(accounts)
    login = mt5_login()
    await accounts.LinkAccount(account_request(owner, login, server="Broker-Live"))
    linked = await accounts.LinkAccount(account_request(other, login, server="Broker-Demo"))
    assert linked.account.user_id == other


async def test_a_server_spelled_otherwise_is_the_same_account_as_mt5_sees_it(
    accounts: Stub,
) -> None:
    """No squatting: `Audit-Live` and ` audit-live ` are one MT5 account, linked once."""
    owner = await new_user(accounts)
    squatter = await new_user(accounts)
    login = mt5_login()
    await accounts.LinkAccount(account_request(owner, login, server="Audit-Live"))

    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await accounts.LinkAccount(account_request(squatter, login, server=" audit-live "))
    again = await accounts.LinkAccount(account_request(owner, login, server="AUDIT-LIVE"))
    await accounts.ReportAccountSnapshot(report(login, "audit-live  ", START, 900.0))
    found = await accounts.GetAccount(
        accounts_pb2.GetAccountRequest(login=login, server=" Audit-live")
    )

    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert not again.created
    assert (await listed(accounts, squatter)).accounts == []
    # The spelling first given is the one shown; the snapshot reached the one account.
    assert found.account.server == "Audit-Live" and found.account.equity == 900.0
    assert [a.server for a in (await listed(accounts, owner)).accounts] == ["Audit-Live"]


async def test_after_unlinking_another_user_may_link_it_and_sees_none_of_the_past(
    accounts: Stub,
) -> None:
    owner = await new_user(accounts)
    successor = await new_user(accounts)
    login = mt5_login()
    await accounts.LinkAccount(account_request(owner, login))
    await accounts.ReportAccountSnapshot(report(login, "Broker-Demo", START, 1000.0))

    await accounts.UnlinkAccount(
        accounts_pb2.UnlinkAccountRequest(user_id=owner, login=login, server="Broker-Demo")
    )
    linked = await accounts.LinkAccount(account_request(successor, login))

    assert linked.created and linked.account.user_id == successor
    assert not linked.account.HasField("snapshot_time")
    assert (await listed(accounts, owner)).accounts == []


async def test_unlinking_someone_elses_account_is_not_found_and_keeps_it(accounts: Stub) -> None:
    owner = await new_user(accounts)
    other = await new_user(accounts)
    login = mt5_login()
    await accounts.LinkAccount(account_request(owner, login))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.UnlinkAccount(
            accounts_pb2.UnlinkAccountRequest(user_id=other, login=login, server="Broker-Demo")
        )

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert [a.login for a in (await listed(accounts, owner)).accounts] == [login]


async def test_a_linked_account_shows_what_was_given(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    request = account_request(user_id)
    request.account_type = accounts_pb2.ACCOUNT_TYPE_CONTEST
    request.label = "  contest May  "
    linked = await accounts.LinkAccount(request)
    shown = await accounts.GetAccount(
        accounts_pb2.GetAccountRequest(login=request.login, server=request.server)
    )
    assert shown.account == linked.account
    assert shown.account.account_type == accounts_pb2.ACCOUNT_TYPE_CONTEST
    assert (shown.account.broker, shown.account.label) == ("Broker Ltd", "contest May")
    assert shown.account.user_id == user_id and not shown.account.suspended


def _spoil(field: str, value: object) -> accounts_pb2.LinkAccountRequest:
    request = account_request(str(uuid.uuid4()))
    setattr(request, field, value)
    return request


@pytest.mark.parametrize(
    "request_message",
    [
        _spoil("account_type", accounts_pb2.ACCOUNT_TYPE_UNSPECIFIED),
        _spoil("account_type", 42),
        _spoil("login", 0),
        _spoil("login", -7),
        _spoil("server", ""),
        _spoil("user_id", "bob"),
        _spoil("label", "x" * 300),
    ],
    ids=[
        "no-type",
        "unknown-type",
        "zero-login",
        "negative-login",
        "no-server",
        "bad-user",
        "long-label",
    ],
)
async def test_bad_links_are_invalid_arguments(
    accounts: Stub, request_message: accounts_pb2.LinkAccountRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.LinkAccount(request_message)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_linking_for_an_unknown_user_is_not_found(accounts: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.LinkAccount(account_request(str(uuid.uuid4())))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_with_entitlements_down_linking_is_unavailable_never_allowed(
    settings: Settings, accounts: Stub
) -> None:
    user_id = await new_user(accounts)
    cut_off = replace(settings, entitlements_addr=f"127.0.0.1:{free_port()}")

    async with (
        serving(build_accounts(cut_off)) as addr,
        channel_to(addr, settings.internal_token) as channel,
    ):
        isolated = accounts_pb2_grpc.AccountsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as linking:
            await isolated.LinkAccount(account_request(user_id))
        with pytest.raises(grpc.aio.AioRpcError) as listing:
            await isolated.ListAccounts(accounts_pb2.ListAccountsRequest(user_id=user_id))

    assert linking.value.code() == grpc.StatusCode.UNAVAILABLE
    assert listing.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await listed(accounts, user_id)).accounts == []
