"""Channel access: who is entitled to a tier is who is in its Telegram chats, and stays so.

- A join request to a chat of the catalogue is approved when the user (by Telegram id) is
  entitled now to a tier that gives the chat, declined otherwise (an unknown user too).
- On a grant, each chat of the tier the user is not in gets an invite link of the user's own
  (`creates_join_request`, so a forwarded link lets no one else in); the receipt reads them.
- When access ends (a revoke, a refund, a dispute: heard on the entitlements stream; an
  expiry: found by the periodic reconcile), the user is removed: banChatMember, then
  unbanChatMember so they may come back after paying again. Admins and the owner never.
- Whether someone goes is asked of entitlements at the moment of acting, never read from a
  stored end time: access that is renewed or stacked never removes anyone.
- Members are known from chat_member updates and from our own approvals and removals. The
  reconcile (at start, then every `interval`) removes every known member not entitled; one
  replica runs it at a time (advisory lock).
- Every Bot API call passes a token bucket: overall and per chat, and a 429 pauses all calls
  for its retry_after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from paylayer.catalogue import Catalogue
from payments_service.bot_api import BotApi, BotApiError
from payments_service.bot_limits import RateLimiter
from payments_service.channel_store import ADMINS, PRESENT, REMOVING, ChannelStore, Member
from payments_service.downstream import Retryable
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc

log = logging.getLogger(__name__)

CALL_DEADLINE_SECONDS = 3.0
# A Bot API call refused with 429 is tried again after retry_after, this many times at most.
MAX_FLOOD_RETRIES = 5
# An inbox worker waits out at most this much flood control for a chat update; longer, the
# update is retried later, so purchases and refunds are never held up behind it.
MAX_INBOX_WAIT_SECONDS = 5.0
_IN_INBOX: ContextVar[bool] = ContextVar("channel_update_from_inbox", default=False)
# Checks per CheckEntitlements call, and removals under way at once (the limiter paces them).
CHECK_BATCH = 1000
REMOVALS_AT_ONCE = 8
RESOLVE_BATCH = 500
# The entitlements stream is followed this long, then followed again (never the short default
# deadline of unary calls: a stream cut every few seconds would miss changes in between).
WATCH_DEADLINE_SECONDS = 3600.0
# Telegram: an invite link's name is 0-32 characters.
MAX_LINK_NAME = 32


@dataclass
class ReconcileReport:
    ran: bool = True
    members_checked: int = 0
    removed: int = 0
    kept_admins: int = 0
    bot_api_calls: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def _link_name(telegram_user_id: int, user_id: str) -> str:
    """The invite link's name, seen by admins in the chat's link list: whose it is."""
    return f"user {telegram_user_id}"[:MAX_LINK_NAME] if telegram_user_id else user_id[:32]


def _int_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) < value < 2**63:
        return value
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _when(value: Any) -> datetime:
    """An update's time, never later than now: a date in the future (skew, or a forged
    update) would otherwise make every true update after it look older and be ignored."""
    now = datetime.now(UTC)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 253_402_300_799:
        return min(datetime.fromtimestamp(value, UTC), now)
    return now


class ChannelAccess:
    def __init__(
        self,
        store: ChannelStore,
        bot: BotApi,
        catalogue: Catalogue,
        accounts: grpc.aio.Channel,
        entitlements: grpc.aio.Channel,
        *,
        interval_seconds: float = 30.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.store = store
        self.bot = bot
        self.catalogue = catalogue
        self._accounts = accounts_pb2_grpc.AccountsServiceStub(accounts)
        self._entitlements = entitlements_pb2_grpc.EntitlementsServiceStub(entitlements)
        self.interval_seconds = interval_seconds
        self.limiter = limiter or RateLimiter()
        self.bot_api_calls = 0

    @property
    def enabled(self) -> bool:
        return bool(self.catalogue.chats)

    # --- the Bot API, within its limits --------------------------------------------------------

    async def _call(self, method: str, chat_id: int, **params: Any) -> Any:
        for attempt in range(MAX_FLOOD_RETRIES + 1):
            if _IN_INBOX.get() and self.limiter.paused_for() > MAX_INBOX_WAIT_SECONDS:
                raise Retryable("Telegram's flood control: the chat update is retried later")
            await self.limiter.acquire(chat_id)
            self.bot_api_calls += 1
            try:
                return await self.bot.call(method, chat_id=chat_id, **params)
            except BotApiError as error:
                if error.error_code != 429 or attempt == MAX_FLOOD_RETRIES:
                    raise
                log.warning("Telegram flood control: waiting %.0f s", error.retry_after or 1)
                self.limiter.pause(error.retry_after or 1.0)
        raise AssertionError("unreachable")

    # --- who is who, who is entitled -----------------------------------------------------------

    async def user_of(self, telegram_user_id: int) -> str | None:
        try:
            reply = await self._accounts.ResolveUser(
                accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_user_id),
                timeout=CALL_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return str(reply.user.user_id)

    async def users_of(self, telegram_user_ids: list[int]) -> dict[int, str]:
        """Telegram id -> user id, for those with an account, in batches."""
        found: dict[int, str] = {}
        for start in range(0, len(telegram_user_ids), RESOLVE_BATCH):
            batch = telegram_user_ids[start : start + RESOLVE_BATCH]
            reply = await self._accounts.ResolveUsers(
                accounts_pb2.ResolveUsersRequest(
                    requests=[accounts_pb2.ResolveUserRequest(telegram_user_id=t) for t in batch]
                ),
                timeout=CALL_DEADLINE_SECONDS * 2,
            )
            for telegram_user_id, result in zip(batch, reply.results, strict=True):
                if result.code == grpc.StatusCode.NOT_FOUND.value[0]:
                    continue
                if result.code:
                    raise RuntimeError(f"accounts.ResolveUsers: {result.message}")
                found[telegram_user_id] = str(result.user.user_id)
        return found

    async def telegram_id_of(self, user_id: str) -> int | None:
        try:
            reply = await self._accounts.ResolveUser(
                accounts_pb2.ResolveUserRequest(user_id=user_id), timeout=CALL_DEADLINE_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return int(reply.user.telegram_user_id) or None

    async def is_entitled(self, user_id: str | None, tier: str) -> bool:
        if not user_id:
            return False
        reply = await self._entitlements.CheckEntitlement(
            entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=tier),
            timeout=CALL_DEADLINE_SECONDS,
        )
        return bool(reply.active)

    async def belongs_in(self, user_id: str | None, chat_id: int) -> bool:
        """Asked now: is this user entitled to any tier that gives this chat?"""
        for tier in sorted(self.catalogue.tiers_giving_chat(chat_id)):
            if await self.is_entitled(user_id, tier):
                return True
        return False

    # --- updates from the chats ----------------------------------------------------------------

    async def handle_update(self, kind: str, update: dict[str, Any]) -> str:
        """Act on a chat_join_request or chat_member update; returns a note ("" when acted).

        Called by an inbox worker: a long flood-control wait raises Retryable instead, so the
        update goes back to the inbox with backoff and the worker moves on to payments."""
        token = _IN_INBOX.set(True)
        try:
            if kind == "chat_join_request":
                return await self._join_request(update.get("chat_join_request"))
            if kind == "chat_member":
                return await self._member_update(update.get("chat_member"))
            return f"not a channel update: {kind}"
        finally:
            _IN_INBOX.reset(token)

    async def _member_update(self, change: Any) -> str:
        if not isinstance(change, dict):
            return "chat_member without its object"
        chat_id = _int_id(_dict(change.get("chat")).get("id"))
        new = change.get("new_chat_member")
        user = new.get("user") if isinstance(new, dict) else None
        telegram_user_id = _int_id(user.get("id")) if isinstance(user, dict) else None
        status = new.get("status") if isinstance(new, dict) else None
        if chat_id is None or telegram_user_id is None or not isinstance(status, str):
            return "chat_member names no chat, user or status"
        if chat_id not in self.catalogue.chats:
            return f"chat {chat_id} is not in the catalogue"
        if status == "restricted" and isinstance(new, dict) and new.get("is_member") is False:
            status = "left"
        if status not in (*PRESENT, *ADMINS, "left", "kicked"):
            return f"unknown member status {status[:40]!r}"
        taken = await self.store.observe_member(
            chat_id, telegram_user_id, status, _when(change.get("date"))
        )
        if not taken:
            return "older than what is known"
        if status in PRESENT:
            # Someone let in another way (an admin added them, a link without request).
            user_id = await self.user_of(telegram_user_id)
            await self.remove(chat_id, telegram_user_id, user_id, "joined without access")
        return ""

    async def _join_request(self, request: Any) -> str:
        if not isinstance(request, dict):
            return "chat_join_request without its object"
        chat_id = _int_id(_dict(request.get("chat")).get("id"))
        user = request.get("from")
        telegram_user_id = _int_id(user.get("id")) if isinstance(user, dict) else None
        if chat_id is None or telegram_user_id is None or telegram_user_id <= 0:
            return "chat_join_request names no chat or user"
        if chat_id not in self.catalogue.chats:
            return f"chat {chat_id} is not in the catalogue"
        link = request.get("invite_link")
        link_url = link.get("invite_link") if isinstance(link, dict) else None
        await self.store.record_join_request(
            chat_id,
            telegram_user_id,
            _when(request.get("date")),
            link_url[:300] if isinstance(link_url, str) else None,
        )
        user_id = await self.user_of(telegram_user_id)
        entitled = await self.belongs_in(user_id, chat_id)
        method = "approveChatJoinRequest" if entitled else "declineChatJoinRequest"
        try:
            await self._call(method, chat_id, user_id=telegram_user_id)
        except BotApiError as error:
            # Already decided (by an admin, or by us before a crash): nothing left to do.
            if "HIDE_REQUESTER_MISSING" not in error.description and (
                "USER_ALREADY_PARTICIPANT" not in error.description
            ):
                raise
            log.info("join request to %s already handled: %s", chat_id, error.description)
        decision = "approved" if entitled else "declined"
        await self.store.decide_join_request(chat_id, telegram_user_id, decision)
        if entitled:
            await self.store.observe_member(chat_id, telegram_user_id, "member", datetime.now(UTC))
        reason = (
            "entitled"
            if entitled
            else ("no account for this Telegram user" if user_id is None else "not entitled")
        )
        await self.store.audit(chat_id, telegram_user_id, user_id, decision, reason)
        return ""

    # --- a grant: invite links -----------------------------------------------------------------

    async def invite_links_for(
        self, user_id: str, tier: str, telegram_user_id: int | None = None
    ) -> dict[int, str]:
        """The user's own invite link to each chat of `tier` they are not in, made once and
        kept (the receipt shows them). Chat id -> link."""
        chats = self.catalogue.chats_of(tier)
        if not chats:
            return {}
        if telegram_user_id is None:
            telegram_user_id = await self.telegram_id_of(user_id)
        if not telegram_user_id:
            return {}
        memberships = {
            m.chat_id: m.status for m in await self.store.memberships_of(telegram_user_id)
        }
        existing = await self.store.invite_links_of(telegram_user_id)
        links: dict[int, str] = {}
        for chat_id in sorted(chats):
            if memberships.get(chat_id) in (*PRESENT, *ADMINS):
                continue
            if chat_id in existing:
                links[chat_id] = existing[chat_id]
                continue
            made = await self._call(
                "createChatInviteLink",
                chat_id,
                name=_link_name(telegram_user_id, user_id),
                creates_join_request=True,
            )
            url = made.get("invite_link") if isinstance(made, dict) else None
            if not isinstance(url, str) or not url:
                raise BotApiError("createChatInviteLink", "no invite_link in the answer")
            links[chat_id] = await self.store.save_invite_link(
                chat_id, telegram_user_id, user_id, tier, url
            )
            await self.store.audit(
                chat_id, telegram_user_id, user_id, "invited", f"grant of {tier}"
            )
        return links

    # --- access ended: removal -----------------------------------------------------------------

    async def remove(
        self, chat_id: int, telegram_user_id: int, user_id: str | None, reason: str
    ) -> str:
        """Ban then unban, so the user is out and may return after paying again. Returns
        "removed", "admin" (never touched), "gone" (already out: another removal came first)
        or "entitled" (asked again now, they belong: a renewal came first)."""
        async with self.store.removal_lock(chat_id, telegram_user_id):
            known = await self.store.member(chat_id, telegram_user_id)
            if known is not None and known.status in ADMINS:
                return "admin"
            if known is not None and known.status not in (*PRESENT, REMOVING):
                return "gone"
            # Asked again under the lock, at the moment of acting: a renewal keeps them.
            if await self.belongs_in(user_id, chat_id):
                if known is not None and known.status == REMOVING:
                    # A removal cut short (a crash between ban and unban), and they paid
                    # since: lift the ban only.
                    await self._call(
                        "unbanChatMember", chat_id, user_id=telegram_user_id, only_if_banned=True
                    )
                    await self.store.observe_member(
                        chat_id, telegram_user_id, "left", datetime.now(UTC)
                    )
                return "entitled"
            await self.store.observe_member(chat_id, telegram_user_id, REMOVING, datetime.now(UTC))
            try:
                await self._call("banChatMember", chat_id, user_id=telegram_user_id)
            except BotApiError as error:
                text = error.description
                if "administrator" in text or "chat owner" in text:
                    await self.store.observe_member(
                        chat_id, telegram_user_id, "administrator", datetime.now(UTC)
                    )
                    await self.store.audit(
                        chat_id, telegram_user_id, user_id, "kept", "an admin is never removed"
                    )
                    return "admin"
                if "USER_NOT_PARTICIPANT" not in text:
                    raise
            await self._call(
                "unbanChatMember", chat_id, user_id=telegram_user_id, only_if_banned=True
            )
            await self.store.observe_member(chat_id, telegram_user_id, "left", datetime.now(UTC))
            await self.store.audit(chat_id, telegram_user_id, user_id, "removed", reason)
        log.info("removed a user from chat %s: %s", chat_id, reason)
        return "removed"

    async def settle_user(self, user_id: str, reason: str) -> int:
        """After a revoke: out of each chat this user no longer belongs in. How many."""
        telegram_user_id = await self.telegram_id_of(user_id)
        if not telegram_user_id:
            return 0
        removed = 0
        for member in await self.store.memberships_of(telegram_user_id):
            if member.chat_id not in self.catalogue.chats:
                continue
            if member.status not in (*PRESENT, REMOVING):
                continue
            outcome = await self.remove(member.chat_id, telegram_user_id, user_id, reason)
            removed += outcome == "removed"
        return removed

    # --- the periodic pass ---------------------------------------------------------------------

    async def check_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """(user, tier) -> entitled now, in batches of CheckEntitlements."""
        verdicts: dict[tuple[str, str], bool] = {}
        for start in range(0, len(pairs), CHECK_BATCH):
            batch = pairs[start : start + CHECK_BATCH]
            try:
                reply = await self._entitlements.CheckEntitlements(
                    entitlements_pb2.CheckEntitlementsRequest(
                        checks=[
                            entitlements_pb2.CheckEntitlementRequest(user_id=u, entitlement=t)
                            for u, t in batch
                        ]
                    ),
                    timeout=CALL_DEADLINE_SECONDS * 10,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                # An entitlements of before the batch form (a rolling upgrade): one by one.
                for pair in batch:
                    verdicts[pair] = await self.is_entitled(*pair)
                continue
            for pair, answer in zip(batch, reply.results, strict=True):
                verdicts[pair] = bool(answer.active)
        return verdicts

    async def reconcile(self) -> ReconcileReport:
        """Every known member of every chat checked against entitlements (in batches); each
        one not entitled asked again, alone, then removed. Skipped (ran False) while another
        replica runs it."""
        started, calls_before = time.monotonic(), self.bot_api_calls
        report = ReconcileReport()
        if not self.enabled:
            return report
        async with self.store.reconcile_lock() as got:
            if not got:
                report.ran = False
                return report
            members = await self.store.members(sorted(self.catalogue.chats), (*PRESENT, REMOVING))
            report.members_checked = len(members)
            users = await self.users_of(sorted({m.telegram_user_id for m in members}))
            pairs = sorted(
                {
                    (users[m.telegram_user_id], tier)
                    for m in members
                    if m.telegram_user_id in users
                    for tier in self.catalogue.tiers_giving_chat(m.chat_id)
                }
            )
            verdicts = await self.check_many(pairs)
            gate = asyncio.Semaphore(REMOVALS_AT_ONCE)

            async def settle(member: Member) -> None:
                user_id = users.get(member.telegram_user_id)
                tiers = self.catalogue.tiers_giving_chat(member.chat_id)
                entitled = bool(user_id) and any(verdicts[(user_id or "", t)] for t in tiers)
                if entitled and member.status != REMOVING:
                    return
                async with gate:
                    try:
                        reason = "access ended" if user_id else "no account for this Telegram user"
                        outcome = await self.remove(
                            member.chat_id, member.telegram_user_id, user_id, reason
                        )
                        report.removed += outcome == "removed"
                        report.kept_admins += outcome == "admin"
                    except Exception as error:
                        report.errors.append(f"{type(error).__name__}: {error}"[:200])

            await asyncio.gather(*(settle(member) for member in members))
        report.bot_api_calls = self.bot_api_calls - calls_before
        report.seconds = time.monotonic() - started
        if report.removed or report.errors:
            log.info(
                "channel reconcile: %d checked, %d removed, %d errors",
                report.members_checked,
                report.removed,
                len(report.errors),
            )
        return report

    async def run_reconciler(self) -> None:
        """Background job: a pass at start and every interval after."""
        if not self.enabled:
            return
        while True:
            try:
                await self.reconcile()
            except Exception as error:
                log.warning("channel reconcile failed: %r", error)
            await asyncio.sleep(self.interval_seconds)

    async def follow_entitlements(self) -> None:
        """Background job: act on every grant and revoke as it happens (entitlements' stream):
        a revoke removes at once; a grant gets its invite links made."""
        if not self.enabled:
            return
        while True:
            try:
                stream = self._entitlements.WatchEntitlements(
                    entitlements_pb2.WatchEntitlementsRequest(), timeout=WATCH_DEADLINE_SECONDS
                )
                async for change in stream:
                    await self._on_change(change)
            except Exception as error:
                # Changes may be missed until it is back: the reconcile catches up removals,
                # and the receipt asks for its invite links itself.
                log.warning("entitlements stream ended (%r); following again", error)
            await asyncio.sleep(1)

    async def _on_change(self, change: entitlements_pb2.EntitlementChange) -> None:
        try:
            if change.action == "revoke" and change.user_id:
                source = change.grant.source
                status = await self.store.payment_status(source.provider, source.reference)
                reason = status if status and status != "succeeded" else "revoked"
                await self.settle_user(change.user_id, f"access ended: {reason}")
            elif change.action == "grant" and change.user_id and change.entitlement:
                if self.catalogue.chats_of(change.entitlement):
                    await self.invite_links_for(change.user_id, change.entitlement)
        except Exception as error:
            # The reconcile catches up whatever this misses.
            log.warning("channel access after a %s: %r", change.action, error)
