"""A small product bot behind the gateway: records what it is sent, answers as a test asks.

It runs in a thread of its own (as the fake Bot API does), so it serves while tests block. A
test makes it slow (`delay`), has it answer with a method (`reply`), or takes it down
(`stop()`, then `start()` brings it back on the same port).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from paylayer.ops.processes import free_port


@dataclass
class Received:
    update: dict[str, Any]
    secret: str


@dataclass
class FakeBotBackend:
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    # The webhook reply the bot gives (a Bot API method, say); None answers an empty 200.
    reply: dict[str, Any] | None = None
    status: int = 200
    delay: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/updates"

    def reset(self) -> None:
        self.received.clear()
        self.reply = None
        self.status = 200
        self.delay = 0.0

    def updates_with(self, update_id: int) -> list[Received]:
        return [r for r in self.received if r.update.get("update_id") == update_id]

    async def _handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(
            Received(
                update=json.loads(await request.read()),
                secret=request.headers.get("X-Telegram-Bot-Api-Secret-Token", ""),
            )
        )
        if self.reply is None:
            return web.Response(status=self.status)
        return web.json_response(self.reply, status=self.status)

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/updates", self._handle)
            # A slow answer in progress must not hold a test that takes the bot down.
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.close()

        threading.Thread(target=serve, daemon=True, name="fake-bot-backend").start()
        ready.wait(10)

    def stop(self) -> None:
        """Down: nothing listens on its port any more."""
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop, self._runner = None, None
