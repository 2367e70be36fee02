"""Outbound calls to Stripe's API through the `stripe` library, asynchronously (its aiohttp
client), at a configurable base (`STRIPE_API_BASE`), with Stripe's errors turned into ours."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import stripe

from paylayer.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

T = TypeVar("T")
TIMEOUT_SECONDS = 10.0
# The library retries connection errors and 5xx itself, with the same idempotency key.
NETWORK_RETRIES = 1


class StripeApi:
    def __init__(self, api_key: str, base_url: str) -> None:
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        self._client = stripe.StripeClient(
            api_key or "sk_test_unset",
            base_addresses={"api": base_url},
            http_client=self._http,
            max_network_retries=NETWORK_RETRIES,
        )
        self._configured = bool(api_key)

    @property
    def v1(self) -> Any:
        return self._client.v1

    async def close(self) -> None:
        await self._http.close_async()

    async def call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """One API call; a Stripe that cannot be reached is UNAVAILABLE, a request it refuses
        is the caller's mistake (or ours) and says so."""
        if not self._configured:
            raise FailedPrecondition("STRIPE_API_KEY is not set: Stripe cannot be called")
        try:
            return await request()
        except (stripe.APIConnectionError, stripe.RateLimitError) as error:
            raise Unavailable(f"Stripe {what} unreachable: {type(error).__name__}") from None
        except stripe.AuthenticationError:
            raise FailedPrecondition(f"Stripe {what}: the API key was refused") from None
        except stripe.IdempotencyError as error:
            raise FailedPrecondition(f"Stripe {what}: {error.user_message or error}") from None
        except stripe.InvalidRequestError as error:
            if error.http_status == 404:
                raise NotFound(f"Stripe {what}: {error.user_message or error.code}") from None
            raise InvalidArgument(f"Stripe {what}: {error.user_message or error.code}") from None
        except stripe.StripeError as error:
            status = error.http_status or 0
            if status >= 500 or status == 0:
                raise Unavailable(f"Stripe {what} failed: HTTP {status}") from None
            raise FailedPrecondition(f"Stripe {what}: {error.user_message or status}") from None
