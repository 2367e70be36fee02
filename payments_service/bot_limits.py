"""The bot's Bot API limits, shared by everything that calls Telegram as this bot: the outbox's
messages and channel access's membership calls count against the same allowance, and a 429
to either pauses both."""

from __future__ import annotations

import asyncio
import time

# Telegram: about 30 requests a second overall per bot. It publishes no per-chat limit for the
# membership methods (20 a minute is for messages to a group); 10 a second per chat keeps a
# mass removal from one chat well clear of flood control, and a 429 is honoured anyway.
GLOBAL_CALLS_PER_SECOND = 30.0
CHAT_CALLS_PER_SECOND = 10.0


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take` waits for one."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()

    def wait_needed(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """The Bot API's limits as token buckets: one for the bot, one per chat; a 429's
    retry_after pauses every call."""

    def __init__(
        self,
        per_second: float = GLOBAL_CALLS_PER_SECOND,
        per_chat_per_second: float = CHAT_CALLS_PER_SECOND,
    ) -> None:
        self._overall = TokenBucket(per_second, per_second)
        self._per_chat_rate = per_chat_per_second
        self._chats: dict[int, TokenBucket] = {}
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def paused_for(self) -> float:
        """Seconds left of a flood-control pause (0 when none)."""
        return max(0.0, self._paused_until - time.monotonic())

    async def acquire(self, chat_id: int | None) -> None:
        # One at a time through the buckets, so waiters are served in order.
        async with self._lock:
            while True:
                waits = [self._paused_until - time.monotonic(), self._overall.wait_needed()]
                chat = None
                if chat_id is not None:
                    chat = self._chats.setdefault(
                        chat_id, TokenBucket(self._per_chat_rate, self._per_chat_rate)
                    )
                    waits.append(chat.wait_needed())
                wait = max(waits)
                if wait <= 0:
                    self._overall.tokens -= 1
                    if chat is not None:
                        chat.tokens -= 1
                    return
                self.waited_seconds += wait
                await asyncio.sleep(wait)
