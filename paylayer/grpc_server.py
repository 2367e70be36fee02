"""The gRPC server kit: auth, request ids, error mapping, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.callers import CallerTokens, CallerTokensError, caller_var, may_call
from paylayer.db import database_answers
from paylayer.errors import DomainError, InvalidArgument
from paylayer.logs import REQUEST_ID_HEADER, request_id_var
from paylayer.metrics import RPC_DURATION, RPCS_HANDLED, serve_metrics
from paylayer.parent import die_with_parent
from paylayer.settings import ConfigError, Settings
from paylayer.tls import GrpcTls
from paylayer.tracing import setup_tracing

log = logging.getLogger(__name__)

# Probes and tooling must work without the token: a load balancer has none.
_OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


async def _refuse_unauthenticated(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


async def _refuse_outside_role(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this caller may not call this method")


# Built once: a refused call allocates nothing of its own that outlives it.
_REFUSE_UNAUTHENTICATED = grpc.unary_unary_rpc_method_handler(_refuse_unauthenticated)
_REFUSE_OUTSIDE_ROLE = grpc.unary_unary_rpc_method_handler(_refuse_outside_role)


# A request id for calls that bring none: unique enough, and ~20x cheaper than a uuid4.
_PROCESS_TAG = f"{os.getpid():x}{uuid.uuid4().hex[:6]}"
_call_numbers = itertools.count(1)


class _Call:
    """What every RPC shares once authenticated: its request id, its metrics, its errors."""

    def __init__(
        self, service: str, method: str, caller: str, deserialize: Callable[[bytes], Any]
    ) -> None:
        self.method = method
        self._caller = caller
        self._service = service
        self._deserialize = deserialize
        self._duration = RPC_DURATION.labels(service, method)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def start(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER and isinstance(value, str):
                request_id = value
        request_id_var.set(request_id or f"{_PROCESS_TAG}-{next(_call_numbers)}")
        caller_var.set(self._caller)
        # Deserialized here, not by grpc, so that a malformed request is INVALID_ARGUMENT.
        try:
            return self._deserialize(raw)
        except Exception:
            raise InvalidArgument("request is not a valid message of this method") from None

    def done(self, code: grpc.StatusCode, started: float) -> None:
        self._duration.observe(time.perf_counter() - started)
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = RPCS_HANDLED.labels(
                self._service, self.method, code.name
            )
        counter.inc()

    async def fail(
        self, error: BaseException, context: grpc.aio.ServicerContext
    ) -> grpc.StatusCode:
        if isinstance(error, DomainError):
            await context.abort(error.code, error.message)
        log.exception("unhandled error in %s", self.method, exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return grpc.StatusCode.INTERNAL  # not reached: abort raises


def _code_of(error: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(error, DomainError):
        return error.code
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _wrap(handler: grpc.RpcMethodHandler, call: _Call) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        behavior = handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(call.start(raw, context), context)
            except BaseException as error:
                code = _code_of(error, context)
                if isinstance(error, (grpc.aio.AbortError, asyncio.CancelledError)):
                    raise
                await call.fail(error, context)
            finally:
                call.done(code, started)

        return grpc.unary_unary_rpc_method_handler(
            unary, response_serializer=handler.response_serializer
        )
    if handler.unary_stream:
        stream_behavior = handler.unary_stream

        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for item in stream_behavior(call.start(raw, context), context):
                    yield item
            except BaseException as error:
                code = _code_of(error, context)
                if isinstance(error, (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)):
                    raise
                await call.fail(error, context)
            finally:
                call.done(code, started)

        return grpc.unary_stream_rpc_method_handler(
            stream, response_serializer=handler.response_serializer
        )
    return handler


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Caller check, role check, request id, metrics and domain-error mapping, in one layer.

    The token is checked first and the role second, before anything is looked up or built: a
    stranger's call (made-up method names included) leaves nothing behind. The wrapped handler
    of each (caller, method) pair is built once, on its first allowed call, and reused; its
    number is bounded by the callers times the methods this server serves.
    """

    def __init__(self, callers: CallerTokens, service: str) -> None:
        self._callers = callers
        self._service = service
        self._wrapped: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(_OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        authorization = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
                break
        caller = self._callers.caller_of(authorization)
        if caller is None:
            return _REFUSE_UNAUTHENTICATED
        if not may_call(caller, method):
            return _REFUSE_OUTSIDE_ROLE
        wrapped = self._wrapped.get((caller, method))
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None  # type: ignore[return-value]  # UNIMPLEMENTED; nothing kept
            name = method.rsplit("/", 1)[-1]
            wrapped = _wrap(
                handler, _Call(self._service, name, caller, handler.request_deserializer)
            )
            self._wrapped[(caller, method)] = wrapped
        return wrapped


class GrpcService:
    """One gRPC process: its servicer plus everything every service shares.

    Health turns SERVING only while the database answers. On stop: NOT_SERVING first (so load
    balancers drain), then `stop(grace)` lets in-flight calls finish, then the engine goes.
    """

    def __init__(
        self,
        *,
        name: str,
        full_service_name: str,
        settings: Settings,
        engine: AsyncEngine,
        add_servicer: Callable[[grpc.aio.Server], None],
        background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        on_draining: Sequence[Callable[[], Awaitable[None]]] = (),
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
        shutdown_grace_seconds: float = 10.0,
        health_interval_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self.full_service_name = full_service_name
        self.engine = engine
        self.health = health_aio.HealthServicer()
        self._background = background
        self._on_draining = on_draining
        self._on_stop = on_stop
        self._grace = shutdown_grace_seconds
        self._health_interval = health_interval_seconds
        self._tasks: list[asyncio.Task[None]] = []
        try:
            callers = CallerTokens.from_settings(settings.caller_tokens, settings.internal_token)
        except CallerTokensError as error:
            raise ConfigError(str(error)) from None
        self._tls = GrpcTls.from_settings(settings)
        self.server = grpc.aio.server(
            interceptors=[ServiceInterceptor(callers, name)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
        )
        add_servicer(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (full_service_name, "grpc.health.v1.Health", reflection.SERVICE_NAME), self.server
        )

    async def start(self, listen_addr: str) -> int:
        if self._tls is None:
            port = self.server.add_insecure_port(listen_addr)
        else:
            port = self.server.add_secure_port(listen_addr, self._tls.server_credentials())
        if port == 0:
            raise RuntimeError(f"cannot listen on {listen_addr}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._tasks.append(asyncio.create_task(self._watch_database(), name="health"))
        for job in self._background:
            self._tasks.append(asyncio.create_task(job(), name=getattr(job, "__name__", "job")))
        log.info("%s listening on %s", self.name, listen_addr.rsplit(":", 1)[0] + f":{port}")
        return port

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        # Endless calls (watch streams) are ended here, or they would hold stop() for the grace.
        for callback in self._on_draining:
            await callback()
        await self.server.stop(self._grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for callback in self._on_stop:
            await callback()
        await self.engine.dispose()
        log.info("%s stopped", self.name)

    async def run_until_signalled(self, listen_addr: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start(listen_addr)
        await stop.wait()
        log.info("%s stopping: health NOT_SERVING, finishing in-flight calls", self.name)
        await self.stop()

    async def _set_health(self, status: Any) -> None:
        for service in ("", self.full_service_name):
            await self.health.set(service, status)

    async def _watch_database(self) -> None:
        last = None
        while True:
            healthy = await database_answers(self.engine)
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if healthy
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if status != last:
                log.info(
                    "%s health: %s",
                    self.name,
                    health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                )
                last = status
            await self._set_health(status)
            await asyncio.sleep(self._health_interval)


def run_main(
    service: str,
    build: Callable[[Any], GrpcService],
    required: Sequence[str] = ("DATABASE_URL", "INTERNAL_TOKEN"),
) -> None:
    """`python -m <service>`: read settings, refuse to start without secrets, serve to SIGTERM."""
    import sys

    from paylayer.logs import configure_logging

    die_with_parent()
    try:
        settings = Settings.from_env()
        settings.require(*required)
        if not settings.caller_tokens and not settings.internal_token:
            raise ConfigError(
                "missing required settings: CALLER_TOKENS (or INTERNAL_TOKEN, single-token mode)"
            )
    except ConfigError as error:
        print(f"{service}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(service, settings.log_level, settings.secrets())
    serve_metrics(settings.metrics_address(service))
    setup_tracing(service, settings.otel_exporter_otlp_endpoint)

    async def serve() -> None:
        await build(settings).run_until_signalled(settings.listen_address(service))

    try:
        # uvloop: the same asyncio, a faster loop (socket writes dominate our profiles).
        uvloop.run(serve())
    except ConfigError as error:
        print(f"{service}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
