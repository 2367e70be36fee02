"""Channels to our own services: the token, the request id and a deadline on every call."""

from __future__ import annotations

import json
from typing import Any

import grpc

from paylayer.logs import REQUEST_ID_HEADER, request_id_var
from paylayer.tls import GrpcTls

DEFAULT_DEADLINE_SECONDS = 5.0

# round_robin spreads calls over every address DNS gives (replicas).
_BALANCING: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
# Retries are for UNAVAILABLE only: the call never reached a server, so repeating it cannot
# double an effect.
_RETRIES: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


class _Outgoing:
    def __init__(self, internal_token: str, default_deadline: float) -> None:
        self._authorization = ("authorization", f"Bearer {internal_token}")
        self._default_deadline = default_deadline

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        metadata.append(self._authorization)
        request_id = request_id_var.get()
        # gRPC metadata takes printable ASCII only; an id made of a provider's bytes may not be.
        if request_id and request_id.isascii() and request_id.isprintable():
            metadata.append((REQUEST_ID_HEADER, request_id[:200]))
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self._default_deadline,
            metadata=grpc.aio.Metadata(*metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files each interceptor object under one call kind only, so each kind gets its own.
class _OutgoingUnary(_Outgoing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _OutgoingStream(_Outgoing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def _target(addr: str) -> str:
    """`host:port` resolves through DNS (every address it returns is used); a comma-separated
    list of `ip:port` (local replicas) is used as it is."""
    if "://" in addr or addr.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
        return addr
    if "," in addr:
        return "ipv4:" + addr
    return f"dns:///{addr}"


def open_channel(
    addr: str,
    internal_token: str,
    *,
    tls: GrpcTls | None = None,
    default_deadline: float = DEFAULT_DEADLINE_SECONDS,
    retries: bool = True,
) -> grpc.aio.Channel:
    """A channel that authenticates every call: TLS when configured, else plaintext.

    `retries=False` for a caller that retries by itself: two layers would multiply attempts.
    """
    target = _target(addr)
    interceptors = [
        _OutgoingUnary(internal_token, default_deadline),
        _OutgoingStream(internal_token, default_deadline),
    ]
    options = [
        ("grpc.service_config", json.dumps({**_BALANCING, **(_RETRIES if retries else {})})),
        ("grpc.enable_retries", int(retries)),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, interceptors=interceptors, options=options)
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), interceptors=interceptors, options=options
    )
