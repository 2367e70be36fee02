"""A small local Telegram Bot API: the methods payments calls, answered as Telegram does.

It runs in a thread of its own, so it serves while tests block, and records every call.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.stack import free_port


@dataclass
class FakeBotApi:
    token: str
    port: int = field(default_factory=free_port)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # What getStarTransactions pages through, newest last, as Telegram's StarTransaction.
    transactions: list[dict[str, Any]] = field(default_factory=list)
    refunded: set[str] = field(default_factory=set)
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
        if method == "createInvoiceLink":
            return web.json_response(
                {"ok": True, "result": f"https://t.me/$invoice{len(self.calls)}"}
            )
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
        if method == "getStarTransactions":
            offset, limit = int(params.get("offset", 0)), int(params.get("limit", 100))
            page = self.transactions[offset : offset + limit]
            return web.json_response({"ok": True, "result": {"transactions": page}})
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
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
