"""A small local Telegram Bot API: the methods payments calls, answered as Telegram does.

It runs in a thread of its own, so it serves while tests block, and records every call.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from yarl import URL

from tests.stack import free_port


@dataclass
class FakeBotApi:
    token: str
    port: int = field(default_factory=free_port)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # What getStarTransactions pages through, newest last, as Telegram's StarTransaction.
    transactions: list[dict[str, Any]] = field(default_factory=list)
    refunded: set[str] = field(default_factory=set)
    # The webhook as setWebhook left it, and what getWebhookInfo reports about its deliveries.
    webhook: dict[str, Any] = field(default_factory=dict)
    pending_update_count: int = 0
    last_error_message: str = ""
    # sendMessage: what each chat was sent, and the refusals a test asks for (per chat: 429
    # with retry_after for the next N calls, or 403 for ever, as a user who blocked the bot).
    sent: list[dict[str, Any]] = field(default_factory=list)
    too_many_requests: dict[int, tuple[int, int]] = field(default_factory=dict)
    blocked: set[int] = field(default_factory=set)
    # Per chat: seconds to wait before answering a sendMessage that went out (a slow answer).
    answer_late: dict[int, float] = field(default_factory=dict)
    # Channel access: each chat's members, pending join requests and invite links.
    chats: dict[int, FakeChat] = field(default_factory=dict)
    # The next this many membership calls are refused with 429 (flood control).
    membership_floods: int = 0
    flood_retry_after: int = 1
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget every call and transaction, so a test sees only its own."""
        self.calls.clear()
        self.transactions.clear()
        self.refunded.clear()
        self.webhook.clear()
        self.pending_update_count, self.last_error_message = 0, ""
        self.sent.clear()
        self.too_many_requests.clear()
        self.blocked.clear()
        self.answer_late.clear()
        self.chats.clear()
        self.membership_floods = 0

    def sent_to(self, chat_id: int) -> list[str]:
        """The texts a user has received, in order."""
        return [m["text"] for m in self.sent if m["chat_id"] == chat_id]

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        params = await request.json()
        self.calls.append((method, params))
        if method in MEMBERSHIP_METHODS:
            if self.membership_floods > 0:
                self.membership_floods -= 1
                return web.json_response(
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {self.flood_retry_after}",
                        "parameters": {"retry_after": self.flood_retry_after},
                    },
                    status=429,
                )
            return membership_call(self.chats, method, params)
        if method == "createInvoiceLink":
            return web.json_response(
                {"ok": True, "result": f"https://t.me/$invoice{len(self.calls)}"}
            )
        if method == "sendMessage":
            return await self._send_message(params)
        if method == "refundStarPayment":
            charge = params.get("telegram_payment_charge_id")
            if charge in self.refunded:
                return web.json_response(
                    {
                        "ok": False,
                        "error_code": 400,
                        "description": "Bad Request: CHARGE_ALREADY_REFUNDED",
                    },
                    status=400,
                )
            self.refunded.add(charge)
            return web.json_response({"ok": True, "result": True})
        if method == "editUserStarSubscription":
            if not (
                isinstance(params.get("user_id"), int)
                and isinstance(params.get("telegram_payment_charge_id"), str)
                and isinstance(params.get("is_canceled"), bool)
            ):
                return web.json_response(
                    {"ok": False, "error_code": 400, "description": "Bad Request: bad parameters"},
                    status=400,
                )
            return web.json_response({"ok": True, "result": True})
        if method == "setWebhook":
            problem = set_webhook_problem(params)
            if problem:
                return _bad_request(problem)
            self.webhook = dict(params)
            return web.json_response({"ok": True, "result": True, "description": "Webhook was set"})
        if method == "getWebhookInfo":
            info: dict[str, Any] = {
                "url": self.webhook.get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": self.pending_update_count,
            }
            if self.webhook.get("allowed_updates"):
                info["allowed_updates"] = self.webhook["allowed_updates"]
            if self.last_error_message:
                info["last_error_date"] = 1_760_000_000
                info["last_error_message"] = self.last_error_message
            return web.json_response({"ok": True, "result": info})
        if method == "getStarTransactions":
            offset, limit = int(params.get("offset", 0)), int(params.get("limit", 100))
            page = self.transactions[offset : offset + limit]
            return web.json_response({"ok": True, "result": {"transactions": page}})
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        problem = send_message_problem(params)
        if problem:
            return _bad_request(problem)
        chat_id = params["chat_id"]
        if chat_id in self.blocked:
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 403,
                    "description": "Forbidden: bot was blocked by the user",
                },
                status=403,
            )
        refusals, retry_after = self.too_many_requests.get(chat_id, (0, 0))
        if refusals > 0:
            self.too_many_requests[chat_id] = (refusals - 1, retry_after)
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {retry_after}",
                    "parameters": {"retry_after": retry_after},
                },
                status=429,
            )
        message_id = len(self.sent) + 1
        self.sent.append({"chat_id": chat_id, "text": params["text"], "message_id": message_id})
        if chat_id in self.answer_late:
            await asyncio.sleep(self.answer_late[chat_id])
        return web.json_response(
            {
                "ok": True,
                "result": {
                    "message_id": message_id,
                    "date": 1_760_000_000,
                    "chat": {"id": chat_id, "type": "private"},
                    "text": params["text"],
                },
            }
        )

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/bot{token}/{method}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True, name="fake-bot-api").start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


# --- channel access: a membership model per chat --------------------------------------------

MEMBERSHIP_METHODS = frozenset(
    {
        "createChatInviteLink",
        "approveChatJoinRequest",
        "declineChatJoinRequest",
        "banChatMember",
        "unbanChatMember",
        "getChatMember",
        "getChatAdministrators",
    }
)
PRESENT = ("creator", "administrator", "member", "restricted")


@dataclass
class FakeChat:
    """One channel or supergroup the bot administers, as Telegram keeps it."""

    chat_id: int
    # user id -> creator, administrator, member, restricted, left or kicked
    status: dict[int, str] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    # invite link -> its ChatInviteLink object
    links: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def members(self) -> set[int]:
        """Everyone in the chat, admins included."""
        return {user for user, status in self.status.items() if status in PRESENT}

    @property
    def admins(self) -> set[int]:
        return {user for user, status in self.status.items() if status in PRESENT[:2]}

    def request_join(self, user_id: int, invite_link: str) -> None:
        """The user opens an invite link that needs approval: a pending join request."""
        link = self.links.get(invite_link)
        if link is None or not link["creates_join_request"]:
            raise ValueError("not a join-request link of this chat")
        if self.status.get(user_id) == "kicked":
            raise ValueError("a banned user cannot ask to join")
        self.pending.add(user_id)


def add_chat(
    chats: dict[int, FakeChat], chat_id: int, owner: int, admins: tuple[int, ...] = ()
) -> FakeChat:
    chat = FakeChat(chat_id, {owner: "creator", **dict.fromkeys(admins, "administrator")})
    chats[chat_id] = chat
    return chat


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def membership_call(
    chats: dict[int, FakeChat], method: str, params: dict[str, Any]
) -> web.Response:
    """The membership methods, as strict as Telegram documents them."""
    chat = chats.get(params.get("chat_id")) if _whole(params.get("chat_id")) else None
    if chat is None:
        return _bad_request("chat not found")
    if method == "createChatInviteLink":
        known = {"chat_id", "name", "expire_date", "member_limit", "creates_join_request"}
        if set(params) - known:
            return _bad_request(f"unknown parameters {sorted(set(params) - known)}")
        name = params.get("name", "")
        if not isinstance(name, str) or len(name) > 32:
            return _bad_request("invite link name is too long")
        creates = params.get("creates_join_request", False)
        if not isinstance(creates, bool):
            return _bad_request("creates_join_request must be a Boolean")
        if creates and params.get("member_limit") is not None:
            return _bad_request("member_limit can't be specified with creates_join_request")
        url = f"https://t.me/+{secrets.token_urlsafe(12)}"
        link = {
            "invite_link": url,
            "creator": {"id": 1, "is_bot": True, "first_name": "Paylayer"},
            "creates_join_request": creates,
            "is_primary": False,
            "is_revoked": False,
            "name": name,
        }
        chat.links[url] = link
        return _ok(link)
    if method == "getChatAdministrators":
        return _ok(
            [
                {"status": chat.status[user], "user": {"id": user, "is_bot": False}}
                for user in sorted(chat.admins)
            ]
        )
    user_id = params.get("user_id")
    if not _whole(user_id):
        return _bad_request("invalid user_id specified")
    status = chat.status.get(user_id, "left")
    if method in ("approveChatJoinRequest", "declineChatJoinRequest"):
        if user_id not in chat.pending:
            if method == "approveChatJoinRequest" and status in PRESENT:
                return _bad_request("USER_ALREADY_PARTICIPANT")
            return _bad_request("HIDE_REQUESTER_MISSING")
        chat.pending.discard(user_id)
        if method == "approveChatJoinRequest":
            chat.status[user_id] = "member"
        return _ok(True)
    if method == "banChatMember":
        if status == "creator":
            return _bad_request("can't remove chat owner")
        if status == "administrator":
            return _bad_request("user is an administrator of the chat")
        if status not in PRESENT:
            return _bad_request("USER_NOT_PARTICIPANT")
        chat.status[user_id] = "kicked"
        return _ok(True)
    if method == "unbanChatMember":
        if status in PRESENT[:2]:
            return _bad_request("user is an administrator of the chat")
        only_if_banned = params.get("only_if_banned", False)
        if status == "kicked":
            chat.status[user_id] = "left"
        elif status in PRESENT and not only_if_banned:
            # Documented: without only_if_banned, a member is removed from the chat.
            chat.status[user_id] = "left"
        return _ok(True)
    if method == "getChatMember":
        return _ok({"status": status, "user": {"id": user_id, "is_bot": False}})
    return _bad_request("method not modelled")


# Update types allowed_updates may name (the Update object's optional fields). Stricter than
# Telegram, which drops a name it does not know: a typo there would lose updates unseen.
UPDATE_TYPES = frozenset(
    "message edited_message channel_post edited_channel_post business_connection "
    "business_message edited_business_message deleted_business_messages message_reaction "
    "message_reaction_count inline_query chosen_inline_result callback_query shipping_query "
    "pre_checkout_query purchased_paid_media poll poll_answer my_chat_member chat_member "
    "chat_join_request chat_boost removed_chat_boost".split()
)
# secret_token: 1-256 characters, only A-Z, a-z, 0-9, _ and -.
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
WEBHOOK_PORTS = {443, 80, 88, 8443}


def _bad_request(description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": 400, "description": f"Bad Request: {description}"}, status=400
    )


SEND_MESSAGE_PARAMETERS = frozenset(
    "business_connection_id chat_id message_thread_id direct_messages_topic_id text parse_mode "
    "entities link_preview_options disable_notification protect_content allow_paid_broadcast "
    "message_effect_id suggested_post_parameters reply_parameters reply_markup".split()
)
MAX_TEXT = 4096


def send_message_problem(params: dict[str, Any]) -> str | None:
    """What Telegram would refuse in a sendMessage call: a chat id, text of 1-4096 characters
    (after entity parsing; none here), only known parameters."""
    if set(params) - SEND_MESSAGE_PARAMETERS:
        return f"unknown parameters {sorted(set(params) - SEND_MESSAGE_PARAMETERS)}"
    chat_id = params.get("chat_id")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int | str) or chat_id in ("", 0):
        return "chat not found"
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        return "message text is empty"
    if len(text) > MAX_TEXT:
        return "message is too long"
    mode = params.get("parse_mode")
    if mode is not None and mode not in ("HTML", "Markdown", "MarkdownV2"):
        return "unsupported parse_mode"
    return None


def set_webhook_problem(params: dict[str, Any]) -> str | None:
    """What Telegram would refuse in a setWebhook call, as it documents its parameters."""
    known = {
        "url",
        "certificate",
        "ip_address",
        "max_connections",
        "allowed_updates",
        "drop_pending_updates",
        "secret_token",
    }
    if set(params) - known:
        return f"unknown parameters {sorted(set(params) - known)}"
    url = params.get("url")
    if not isinstance(url, str):
        return "url is required"
    if url:  # an empty url removes the webhook
        parsed = URL(url)
        if parsed.scheme != "https" or not parsed.host:
            return "bad webhook: An HTTPS URL must be provided for webhook"
        if parsed.port not in WEBHOOK_PORTS:
            return "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
    secret = params.get("secret_token")
    if secret is not None and not (isinstance(secret, str) and SECRET_TOKEN.fullmatch(secret)):
        return "secret token contains unallowed characters"
    allowed = params.get("allowed_updates")
    if allowed is not None and not (
        isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)
    ):
        return "can't parse allowed updates"
    unknown = set(allowed or []) - UPDATE_TYPES
    if unknown:
        return f"unknown update types {sorted(unknown)}"
    connections = params.get("max_connections")
    if connections is not None and not (isinstance(connections, int) and 1 <= connections <= 100):
        return "max_connections must be 1-100"
    drop = params.get("drop_pending_updates")
    if drop is not None and not isinstance(drop, bool):
        return "drop_pending_updates must be a Boolean"
    return None
