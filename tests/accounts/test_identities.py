"""Users found by any identity, made once however many callers race, never silently moved."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import grpc
import pytest

from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from tests.accounts.conftest import new_user, telegram_id
from tests.grpc_helpers import channel_to

Stub = accounts_pb2_grpc.AccountsServiceStub


def customer() -> str:
    return "cus_" + secrets.token_hex(8)


async def test_a_new_telegram_user_is_created_once_and_found_again(accounts: Stub) -> None:
    telegram = telegram_id()
    first = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(telegram_user_id=telegram, create=True)
    )
    again = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(telegram_user_id=telegram, create=True)
    )
    by_id = await accounts.ResolveUser(accounts_pb2.ResolveUserRequest(user_id=first.user.user_id))

    assert first.created and not again.created
    assert again.user.user_id == first.user.user_id == by_id.user.user_id
    assert by_id.user.telegram_user_id == telegram
    assert uuid.UUID(first.user.user_id)


async def test_an_unknown_identity_without_create_is_not_found(accounts: Stub) -> None:
    for request in (
        accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_id()),
        accounts_pb2.ResolveUserRequest(stripe_customer_id=customer()),
        accounts_pb2.ResolveUserRequest(email=f"{secrets.token_hex(4)}@example.com"),
        # Internal ids are only ever minted by the service, so create cannot make one up.
        accounts_pb2.ResolveUserRequest(user_id=str(uuid.uuid4()), create=True),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await accounts.ResolveUser(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_twenty_concurrent_creates_for_one_telegram_user_make_one_user(
    accounts: Stub,
) -> None:
    telegram = telegram_id()
    answers = await asyncio.gather(
        *(
            accounts.ResolveUser(
                accounts_pb2.ResolveUserRequest(telegram_user_id=telegram, create=True)
            )
            for _ in range(20)
        )
    )
    assert len({answer.user.user_id for answer in answers}) == 1
    assert sum(answer.created for answer in answers) == 1


async def test_a_linked_stripe_customer_finds_the_telegram_user(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    stripe_customer = customer()

    linked = await accounts.LinkIdentity(
        accounts_pb2.LinkIdentityRequest(user_id=user_id, stripe_customer_id=stripe_customer)
    )
    # Payments may see the same payment twice: linking again is no error.
    await accounts.LinkIdentity(
        accounts_pb2.LinkIdentityRequest(user_id=user_id, stripe_customer_id=stripe_customer)
    )
    found = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(stripe_customer_id=stripe_customer)
    )

    assert linked.user.stripe_customer_id == stripe_customer
    assert found.user.user_id == user_id


async def test_an_identity_owned_by_another_user_is_never_moved(accounts: Stub) -> None:
    owner = await new_user(accounts)
    other = await new_user(accounts)
    stripe_customer = customer()
    await accounts.LinkIdentity(
        accounts_pb2.LinkIdentityRequest(user_id=owner, stripe_customer_id=stripe_customer)
    )

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.LinkIdentity(
            accounts_pb2.LinkIdentityRequest(user_id=other, stripe_customer_id=stripe_customer)
        )

    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    found = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(stripe_customer_id=stripe_customer)
    )
    assert found.user.user_id == owner


async def test_a_user_keeps_at_most_one_identity_of_each_kind(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    first = customer()
    await accounts.LinkIdentity(
        accounts_pb2.LinkIdentityRequest(user_id=user_id, stripe_customer_id=first)
    )

    for request in (
        accounts_pb2.LinkIdentityRequest(user_id=user_id, stripe_customer_id=customer()),
        accounts_pb2.LinkIdentityRequest(user_id=user_id, telegram_user_id=telegram_id()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await accounts.LinkIdentity(request)
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS

    found = await accounts.ResolveUser(accounts_pb2.ResolveUserRequest(user_id=user_id))
    assert found.user.stripe_customer_id == first


async def test_concurrent_links_of_one_customer_to_two_users_leave_one_owner(
    accounts: Stub,
) -> None:
    users = [await new_user(accounts) for _ in range(5)]
    stripe_customer = customer()
    outcomes = await asyncio.gather(
        *(
            accounts.LinkIdentity(
                accounts_pb2.LinkIdentityRequest(user_id=user, stripe_customer_id=stripe_customer)
            )
            for user in users
        ),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, accounts_pb2.LinkIdentityResponse)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]

    assert len(winners) == 1
    assert {loser.code() for loser in losers} == {grpc.StatusCode.ALREADY_EXISTS}
    found = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(stripe_customer_id=stripe_customer)
    )
    assert found.user.user_id == winners[0].user.user_id


async def test_email_is_found_whatever_its_case(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    local = secrets.token_hex(4)
    await accounts.LinkIdentity(
        accounts_pb2.LinkIdentityRequest(user_id=user_id, email=f"{local}@Example.COM")
    )
    found = await accounts.ResolveUser(
        accounts_pb2.ResolveUserRequest(email=f" {local.upper()}@example.com ")
    )
    assert found.user.user_id == user_id
    assert found.user.email == f"{local}@example.com"


@pytest.mark.parametrize(
    "request_message",
    [
        accounts_pb2.ResolveUserRequest(create=True),
        accounts_pb2.ResolveUserRequest(user_id="not-a-uuid"),
        accounts_pb2.ResolveUserRequest(telegram_user_id=-5, create=True),
        accounts_pb2.ResolveUserRequest(stripe_customer_id="  ", create=True),
        accounts_pb2.ResolveUserRequest(stripe_customer_id="acct_123", create=True),
        accounts_pb2.ResolveUserRequest(email="nobody", create=True),
        accounts_pb2.ResolveUserRequest(stripe_customer_id="cus_" + "x" * 300, create=True),
    ],
    ids=[
        "no-identity",
        "bad-uuid",
        "negative-telegram",
        "blank-customer",
        "not-a-customer",
        "bad-email",
        "long-customer",
    ],
)
async def test_bad_identities_are_invalid_arguments(
    accounts: Stub, request_message: accounts_pb2.ResolveUserRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await accounts.ResolveUser(request_message)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_linking_an_identity_needs_a_known_user_and_an_identity(accounts: Stub) -> None:
    user_id = await new_user(accounts)
    with pytest.raises(grpc.aio.AioRpcError) as missing_identity:
        await accounts.LinkIdentity(accounts_pb2.LinkIdentityRequest(user_id=user_id))
    with pytest.raises(grpc.aio.AioRpcError) as unknown_user:
        await accounts.LinkIdentity(
            accounts_pb2.LinkIdentityRequest(user_id=str(uuid.uuid4()), email="a@example.com")
        )
    assert missing_identity.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown_user.value.code() == grpc.StatusCode.NOT_FOUND


async def test_calls_without_the_internal_token_are_refused(accounts_addr: str) -> None:
    async with channel_to(accounts_addr, "wrong-token") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await accounts_pb2_grpc.AccountsServiceStub(channel).ResolveUser(
                accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_id())
            )
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
