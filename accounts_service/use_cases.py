"""The application layer of the accounts service: one method per operation, each owning its
unit of work. It decides (who may create users, the cap, which snapshot applies) with the
rules, reads and writes through the store, and knows nothing of gRPC messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from accounts_service import rules
from accounts_service.entitlements_client import TierCaps
from accounts_service.store import IDENTITY_LABELS, IdentityKind, LinkableKind, UnitOfWork
from paylayer.callers import MAY_CREATE_USERS
from paylayer.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lookup:
    """A user asked for by one identity, to be made if nobody holds it (with `create`)."""

    kind: IdentityKind
    value: str | int
    create: bool = False


@dataclass(frozen=True)
class Resolved:
    user: rules.User
    created: bool


@dataclass(frozen=True)
class AccountView:
    """A linked account as its owner sees it now: suspended or not under today's cap."""

    account: rules.LinkedAccount
    suspended: bool


@dataclass(frozen=True)
class Link:
    user_id: str
    login: int
    server: str
    account_type: str
    broker: str
    label: str


class Accounts:
    def __init__(self, begin: Callable[..., UnitOfWork], tiers: TierCaps) -> None:
        self._begin = begin
        self._tiers = tiers

    # --- users ---------------------------------------------------------------------------------

    async def resolve_user(self, lookup: Lookup, caller: str) -> Resolved:
        _may_create(lookup, caller)
        async with self._begin(single_statement=True) as uow:
            user = await uow.accounts.find_user(lookup.kind, lookup.value)
            if user is not None:
                return Resolved(user, created=False)
            # Internal ids are minted here only, so an unknown one is never created on request.
            if not lookup.create or lookup.kind == "user_id":
                raise NotFound(f"no user with this {IDENTITY_LABELS[lookup.kind]}")
            kind = cast(LinkableKind, lookup.kind)
            made = await uow.accounts.insert_user(kind, lookup.value)
            if made is not None:
                log.info("created user %s for a new %s", made.user_id, kind)
                return Resolved(made, created=True)
            # Made meanwhile by a concurrent call: the unique constraint let theirs through.
            user = await uow.accounts.find_user(kind, lookup.value)
            assert user is not None
            return Resolved(user, created=False)

    async def resolve_users(
        self, lookups: Sequence[Lookup | DomainError], caller: str
    ) -> list[Resolved | DomainError]:
        """Each lookup answered on its own, three statements per kind of identity."""
        results: list[Resolved | DomainError | None] = [None] * len(lookups)
        wanted: dict[tuple[IdentityKind, bool], list[tuple[int, str | int]]] = {}
        for index, lookup in enumerate(lookups):
            try:
                if isinstance(lookup, DomainError):
                    raise lookup
                _may_create(lookup, caller)
            except DomainError as error:
                results[index] = error
                continue
            create = lookup.create and lookup.kind != "user_id"
            wanted.setdefault((lookup.kind, create), []).append((index, lookup.value))
        async with self._begin(single_statement=True) as uow:
            for (kind, create), items in wanted.items():
                values = [value for _, value in items]
                found = {
                    value: Resolved(user, False)
                    for value, user in (await uow.accounts.users_by(kind, values)).items()
                }
                missing = [value for value in dict.fromkeys(values) if value not in found]
                if create and missing and kind != "user_id":
                    made = await uow.accounts.insert_users(cast(LinkableKind, kind), missing)
                    for value, user in made.items():
                        found[value] = Resolved(user, True)
                        log.info("created user %s for a new %s", user.user_id, kind)
                    raced = [value for value in missing if value not in found]
                    if raced:
                        for value, user in (await uow.accounts.users_by(kind, raced)).items():
                            found[value] = Resolved(user, False)
                for index, value in items:
                    results[index] = found.get(value) or NotFound(
                        f"no user with this {IDENTITY_LABELS[kind]}"
                    )
        return [result for result in results if result is not None]

    async def link_identity(self, user_id: str, kind: LinkableKind, value: str | int) -> rules.User:
        """Attach an identity; never moves one from its owner, never replaces one a user has."""
        label = IDENTITY_LABELS[kind]
        async with self._begin() as uow:
            user = await uow.accounts.find_user("user_id", user_id, for_update=True)
            if user is None:
                raise NotFound(f"no user {user_id}")
            current = getattr(user, kind)
            if current == value:
                return user
            if current is not None:
                raise AlreadyExists(f"user {user_id} already has another {label}")
            if await uow.accounts.find_user(kind, value) is not None:
                raise AlreadyExists(f"this {label} belongs to another user")
            linked = await uow.accounts.set_identity(user_id, kind, value)
            if linked is None:
                # Attached to someone else between our check and our update: the constraint
                # decided, and the answer is the same.
                raise AlreadyExists(f"this {label} belongs to another user")
            await uow.commit()
            return linked

    # --- linked accounts -----------------------------------------------------------------------

    async def link_account(self, link: Link) -> tuple[AccountView, bool]:
        """Link (login, server) to the user within their cap; the account, and whether new.

        The user's row is locked first, so two links racing for the last free place are
        counted one after the other and cannot both get it.
        """
        await self._require_user(link.user_id)
        # Asked before the transaction: no row stays locked while another service answers.
        cap = await self._tiers.cap_for(link.user_id)
        async with self._begin() as uow:
            store = uow.accounts
            await store.find_user("user_id", link.user_id, for_update=True)
            existing = await store.account(link.login, link.server)
            if existing is None:
                linked_count = await store.count_links(link.user_id)
                if not rules.may_link_another(linked_count, cap):
                    raise FailedPrecondition(
                        f"user {link.user_id} has {linked_count} linked accounts, the cap of"
                        f" their tier is {cap}"
                    )
                inserted = await store.insert_account(
                    user_id=link.user_id,
                    login=link.login,
                    server=link.server,
                    account_type=link.account_type,
                    broker=link.broker,
                    label=link.label,
                )
                if inserted is not None:
                    view = await self._view(uow, inserted, cap)
                    await uow.commit()
                    return view, True
                # Someone linked it in the meantime: answer as if they had been first.
                existing = await store.account(link.login, link.server)
                assert existing is not None
            if existing.user_id != link.user_id:
                raise AlreadyExists(
                    f"MT5 account {link.login}@{link.server} is linked to another user"
                )
            # The same user again: idempotent, keeping the latest description they gave. A
            # relink of an account over the cap finds it where it was: possibly suspended.
            described = await store.describe_account(
                login=link.login,
                server=link.server,
                account_type=link.account_type,
                broker=link.broker,
                label=link.label,
            )
            view = await self._view(uow, described, cap)
            await uow.commit()
            return view, False

    async def unlink_account(self, *, user_id: str, login: int, server: str) -> None:
        async with self._begin() as uow:
            if not await uow.accounts.delete_account(user_id=user_id, login=login, server=server):
                raise NotFound(f"MT5 account {login}@{server} is not linked to user {user_id}")
            await uow.commit()

    async def list_accounts(self, user_id: str) -> tuple[list[AccountView], int]:
        await self._require_user(user_id)
        cap = await self._tiers.cap_for(user_id)
        async with self._begin() as uow:
            linked = await uow.accounts.accounts_of(user_id)
        flags = rules.suspended_flags(len(linked), cap)
        return [AccountView(a, s) for a, s in zip(linked, flags, strict=True)], cap

    async def get_account(self, login: int, server: str) -> AccountView:
        async with self._begin() as uow:
            account = await uow.accounts.account(login, server)
            if account is None:
                raise NotFound(f"MT5 account {login}@{server} is not linked")
            older = await uow.accounts.older_links(account)
        cap = await self._tiers.cap_for(account.user_id)
        return AccountView(account, rules.is_suspended(older, cap))

    async def report_snapshot(
        self, login: int, server: str, snapshot: rules.Snapshot
    ) -> tuple[AccountView, bool]:
        """Take in a snapshot if it is newer than the stored one; say whether it was applied.

        The row is locked while the newer-than test and the drawdown are worked out, so
        concurrent reports apply one after the other and the stored one never goes backwards.
        """
        async with self._begin(single_statement=True) as uow:
            owner = await uow.accounts.account(login, server)
        if owner is None:
            raise NotFound(f"MT5 account {login}@{server} is not linked; link it first")
        # Asked first, so that when entitlements is down nothing is stored and a retry applies.
        cap = await self._tiers.cap_for(owner.user_id)
        async with self._begin() as uow:
            stored = await uow.accounts.account(login, server, for_update=True)
            if stored is None:
                raise NotFound(f"MT5 account {login}@{server} is not linked; link it first")
            stored_time = stored.snapshot.time if stored.snapshot else None
            if not rules.is_newer(snapshot.time, stored_time):
                return await self._view(uow, stored, cap), False
            drawdown = rules.after_snapshot(stored.drawdown, snapshot.equity)
            updated = await uow.accounts.store_snapshot(stored, snapshot, drawdown)
            view = await self._view(uow, updated, cap)
            await uow.commit()
            return view, True

    async def snapshot_history(
        self,
        login: int,
        server: str,
        *,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        bucket_seconds: int,
    ) -> Sequence[rules.HistoryPoint]:
        async with self._begin(single_statement=True) as uow:
            if await uow.accounts.account(login, server) is None:
                raise NotFound(f"MT5 account {login}@{server} is not linked")
            return await uow.accounts.snapshot_history(
                login, server, since=since, until=until, limit=limit, bucket_seconds=bucket_seconds
            )

    async def forget_old_history(self, older_than: timedelta) -> int:
        async with self._begin() as uow:
            forgotten = await uow.accounts.forget_old_history(older_than)
            await uow.commit()
        return forgotten

    async def _view(self, uow: UnitOfWork, account: rules.LinkedAccount, cap: int) -> AccountView:
        return AccountView(
            account, rules.is_suspended(await uow.accounts.older_links(account), cap)
        )

    async def _require_user(self, user_id: str) -> None:
        async with self._begin(single_statement=True) as uow:
            if await uow.accounts.find_user("user_id", user_id) is None:
                raise NotFound(f"no user {user_id}")


def _may_create(lookup: Lookup, caller: str) -> None:
    if lookup.create and caller not in MAY_CREATE_USERS:
        raise PermissionDenied("this caller may resolve users but not create them")
