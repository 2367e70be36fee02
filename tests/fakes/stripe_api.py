"""A small local Stripe API: the endpoints payments calls, spoken as Stripe speaks them.

Requests come form-encoded with bracketed keys (`line_items[0][price_data][currency]`), as the
`stripe` library sends them; every parameter is checked against the shape Stripe's API
reference gives (an unknown one is a 400 `parameter_unknown`, a bad value a 400 naming it), the
`Authorization` key must match, and an `Idempotency-Key` replays the first answer for the same
parameters and is a 400 `idempotency_error` for different ones. Objects and errors have
Stripe's shapes. It runs in a thread of its own and records every request.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from paylayer.ops.processes import free_port

# A parameter's shape: a leaf kind, a nested dict of shapes, or a one-element list (an array).
Shape = Any
META = "metadata"  # free-form string keys and values, within Stripe's limits
STR, INT, BOOL = "string", "integer", "boolean"


def enum(*values: str) -> tuple[str, ...]:
    return values


EXPAND = [STR]
PRICE_DATA = {
    "currency": STR,
    "unit_amount": INT,
    "unit_amount_decimal": STR,
    "product": STR,
    "product_data": {
        "name": STR,
        "description": STR,
        "images": [STR],
        "metadata": META,
        "tax_code": STR,
        "unit_label": STR,
    },
    "recurring": {"interval": enum("day", "week", "month", "year"), "interval_count": INT},
    "tax_behavior": enum("exclusive", "inclusive", "unspecified"),
}
CHECKOUT_SESSION: dict[str, Shape] = {
    "mode": enum("payment", "setup", "subscription"),
    "line_items": [
        {
            "price": STR,
            "price_data": PRICE_DATA,
            "quantity": INT,
            "adjustable_quantity": {"enabled": BOOL, "maximum": INT, "minimum": INT},
            "tax_rates": [STR],
        }
    ],
    "client_reference_id": STR,
    "metadata": META,
    "success_url": STR,
    "cancel_url": STR,
    "customer": STR,
    "customer_creation": enum("always", "if_required"),
    "customer_email": STR,
    "allow_promotion_codes": BOOL,
    "locale": STR,
    "expires_at": INT,
    "ui_mode": enum("custom", "embedded", "hosted"),
    "payment_intent_data": {
        "metadata": META,
        "description": STR,
        "capture_method": enum("automatic", "automatic_async", "manual"),
        "receipt_email": STR,
        "setup_future_usage": enum("off_session", "on_session"),
        "statement_descriptor": STR,
        "statement_descriptor_suffix": STR,
    },
    "subscription_data": {
        "metadata": META,
        "description": STR,
        "trial_period_days": INT,
        "trial_end": INT,
        "proration_behavior": enum("create_prorations", "none"),
    },
    "expand": EXPAND,
}
PORTAL_SESSION: dict[str, Shape] = {
    "customer": STR,
    "return_url": STR,
    "configuration": STR,
    "locale": STR,
    "on_behalf_of": STR,
    "expand": EXPAND,
}
SUBSCRIPTION_UPDATE: dict[str, Shape] = {
    "cancel_at_period_end": BOOL,
    "cancel_at": INT,
    "cancellation_details": {
        "comment": STR,
        "feedback": enum(
            "customer_service",
            "low_quality",
            "missing_features",
            "other",
            "switched_service",
            "too_complex",
            "too_expensive",
            "unused",
        ),
    },
    "metadata": META,
    "proration_behavior": enum("always_invoice", "create_prorations", "none"),
    "expand": EXPAND,
}
SUBSCRIPTION_CANCEL: dict[str, Shape] = {
    "cancellation_details": SUBSCRIPTION_UPDATE["cancellation_details"],
    "invoice_now": BOOL,
    "prorate": BOOL,
    "expand": EXPAND,
}
REFUND: dict[str, Shape] = {
    "amount": INT,
    "charge": STR,
    "payment_intent": STR,
    "currency": STR,
    "customer": STR,
    "instructions_email": STR,
    "metadata": META,
    "origin": enum("customer_balance"),
    "reason": enum("duplicate", "fraudulent", "requested_by_customer"),
    "refund_application_fee": BOOL,
    "reverse_transfer": BOOL,
    "expand": EXPAND,
}
RANGE = {"gt": INT, "gte": INT, "lt": INT, "lte": INT}
EVENT_LIST: dict[str, Shape] = {
    "created": RANGE,
    "delivery_success": BOOL,
    "ending_before": STR,
    "limit": INT,
    "starting_after": STR,
    "type": STR,
    "types": [STR],
    "expand": EXPAND,
}


class StripeError(Exception):
    """Answered as Stripe answers errors: `{"error": {type, code, message, param}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        body: dict[str, Any] = {"type": error_type, "message": message}
        if code:
            body["code"] = code
            body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            body["param"] = param
        self.body = {"error": body}


def _missing(what: str, object_id: str, param: str) -> StripeError:
    return StripeError(404, f"No such {what}: '{object_id}'", code="resource_missing", param=param)


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0][c]=v` pairs into nested dicts; numeric keys stay strings until validation."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        if not parts or key.count("[") != key.count("]"):
            raise StripeError(400, f"Invalid parameter name: {key}", param=key)
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "[]":  # `types[]=a&types[]=b`: append
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeError(400, f"Invalid parameter: {key}", param=key)
                node = child
    return root


def validate(value: Any, shape: Shape, path: str) -> Any:
    """The value as Stripe reads it (ints, bools, lists), or a 400 as Stripe gives it."""
    if shape == META:
        if not isinstance(value, dict):
            raise StripeError(400, f"Invalid object: {path}", param=path)
        if len(value) > 50:
            raise StripeError(400, "Metadata can have at most 50 keys", param=path)
        for key, item in value.items():
            if not isinstance(item, str) or len(key) > 40 or len(item) > 500:
                raise StripeError(400, f"Invalid metadata value: {path}[{key}]", param=path)
        return value
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise StripeError(400, f"Invalid object: {path}", param=path)
        checked = {}
        for key, item in value.items():
            name = f"{path}[{key}]" if path else key
            if key not in shape:
                raise StripeError(
                    400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
                )
            checked[key] = validate(item, shape[key], name)
        return checked
    if isinstance(shape, list):
        if not isinstance(value, dict) or not all(k.isdigit() for k in value):
            raise StripeError(400, f"Invalid array: {path}", param=path)
        ordered = sorted(value.items(), key=lambda kv: int(kv[0]))
        if [int(k) for k, _ in ordered] != list(range(len(ordered))):
            raise StripeError(400, f"Invalid array indexes: {path}", param=path)
        return [validate(item, shape[0], f"{path}[{k}]") for k, item in ordered]
    if not isinstance(value, str):
        raise StripeError(400, f"Invalid {shape}: {path}", param=path)
    if shape == INT:
        if not re.fullmatch(r"-?\d{1,18}", value):
            raise StripeError(
                400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=path
            )
        return int(value)
    if shape == BOOL:
        if value not in ("true", "false"):
            raise StripeError(400, f"Invalid boolean: {value}", param=path)
        return value == "true"
    if isinstance(shape, tuple):
        if value not in shape:
            raise StripeError(400, f"Invalid {path}: must be one of {', '.join(shape)}", param=path)
        return value
    if len(value) > 5000:
        raise StripeError(400, f"{path} is too long", param=path)
    return value


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeStripe:
    api_key: str
    port: int = field(default_factory=free_port)
    requests: list[Recorded] = field(default_factory=list)
    # Set true to play a Stripe that cannot be reached: connections are dropped unanswered.
    down: bool = False
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: set[str] = field(default_factory=set)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # by charge id
    refunds: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # newest first, as listed
    _idempotent: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # --- what a test sets up, as if it had happened at Stripe ------------------------------

    def add_customer(self) -> str:
        customer = _id("cus")
        self.customers.add(customer)
        return customer

    def add_charge(self, amount: int, currency: str = "usd", **extra: Any) -> dict[str, Any]:
        """A captured card payment (its intent and charge), as a checkout would leave it."""
        charge = {
            "id": _id("ch"),
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "captured": True,
            "created": int(time.time()),
            "currency": currency,
            "livemode": False,
            "paid": True,
            "payment_intent": _id("pi"),
            "refunded": False,
            "status": "succeeded",
            "metadata": {},
            **extra,
        }
        self.charges[charge["id"]] = charge
        return charge

    def add_price(
        self, unit_amount: int, currency: str = "usd", *, interval: str | None = None
    ) -> str:
        """A Price made in the dashboard, for a sku that names it (`stripe_price_id`)."""
        price_id = _id("price")
        self.prices[price_id] = {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": currency,
            "unit_amount": unit_amount,
            "recurring": {"interval": interval, "interval_count": 1} if interval else None,
            "type": "recurring" if interval else "one_time",
        }
        return price_id

    def add_subscription(self, subscription: dict[str, Any]) -> None:
        self.subscriptions[subscription["id"]] = subscription

    def add_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.events.sort(key=lambda e: e["created"], reverse=True)

    # --- the API ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            # As unreachable as a server can be while listening: no answer at all.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        try:
            return await self._answer(request)
        except StripeError as error:
            return web.json_response(error.body, status=error.status)

    async def _answer(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise StripeError(401, "Invalid API Key provided")
        body = (await request.text()) if request.method == "POST" else request.query_string
        if request.method == "POST" and body:
            if request.content_type != "application/x-www-form-urlencoded":
                raise StripeError(400, "Requests must be form-encoded")
        raw = parse_form(parse_qsl(body, keep_blank_values=True))
        self.requests.append(Recorded(request.method, request.path, raw, dict(request.headers)))
        key = request.headers.get("Idempotency-Key")
        if request.method == "POST" and key:
            fingerprint = json.dumps([request.method, request.path, raw], sort_keys=True)
            if key in self._idempotent:
                first, status, answer = self._idempotent[key]
                if first != fingerprint:
                    raise StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                        error_type="idempotency_error",
                    )
                return web.json_response(
                    answer, status=status, headers={"Idempotent-Replayed": "true"}
                )
            try:
                status, answer = 200, self._route(request.method, request.path, raw)
            except StripeError as error:
                if error.status < 500:
                    self._idempotent[key] = (fingerprint, error.status, error.body)
                raise
            # Stripe replays the answer as first sent, not the object as it is by then.
            self._idempotent[key] = (fingerprint, status, copy.deepcopy(answer))
            return web.json_response(answer, status=status)
        return web.json_response(self._route(request.method, request.path, raw))

    def _route(self, method: str, path: str, raw: dict[str, Any]) -> dict[str, Any]:
        if (method, path) == ("POST", "/v1/checkout/sessions"):
            return self._checkout_session(validate(raw, CHECKOUT_SESSION, ""))
        if (method, path) == ("POST", "/v1/billing_portal/sessions"):
            return self._portal_session(validate(raw, PORTAL_SESSION, ""))
        if (method, path) == ("POST", "/v1/refunds"):
            return self._refund(validate(raw, REFUND, ""))
        if (method, path) == ("GET", "/v1/events"):
            return self._events(validate(raw, EVENT_LIST, ""))
        matched = re.fullmatch(r"/v1/subscriptions/([A-Za-z0-9_]+)", path)
        if matched and method == "POST":
            return self._update_subscription(
                matched.group(1), validate(raw, SUBSCRIPTION_UPDATE, "")
            )
        if matched and method == "DELETE":
            return self._cancel_subscription(
                matched.group(1), validate(raw, SUBSCRIPTION_CANCEL, "")
            )
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _price(self, item: dict[str, Any], index: int, mode: str) -> dict[str, Any]:
        where = f"line_items[{index}]"
        if ("price" in item) == ("price_data" in item):
            raise StripeError(400, f"You must specify either `price` or `price_data` in {where}.")
        if "quantity" not in item:
            raise StripeError(
                400, f"Missing required param: {where}[quantity].", code="parameter_missing"
            )
        if "price" in item:
            price = self.prices.get(item["price"])
            if price is None:
                raise _missing("price", item["price"], f"{where}[price]")
        else:
            data = item["price_data"]
            for required in ("currency",):
                if required not in data:
                    raise StripeError(
                        400,
                        f"Missing required param: {where}[price_data][{required}].",
                        code="parameter_missing",
                    )
            if ("product" in data) == ("product_data" in data):
                raise StripeError(400, "Specify exactly one of product or product_data.")
            if "product_data" in data and "name" not in data["product_data"]:
                raise StripeError(
                    400,
                    f"Missing required param: {where}[price_data][product_data][name].",
                    code="parameter_missing",
                )
            price = {
                "currency": data["currency"],
                "unit_amount": data.get("unit_amount", 0),
                "recurring": data.get("recurring"),
            }
        if mode == "subscription" and not price.get("recurring"):
            raise StripeError(400, "In subscription mode, you must provide a recurring price.")
        if mode == "payment" and price.get("recurring"):
            raise StripeError(
                400, "You specified `payment` mode but passed a recurring price.", param=where
            )
        return price

    def _checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode is None:
            raise StripeError(400, "Missing required param: mode.", code="parameter_missing")
        items = params.get("line_items", [])
        if mode != "setup" and not items:
            raise StripeError(400, "Missing required param: line_items.", code="parameter_missing")
        prices = [self._price(item, i, mode) for i, item in enumerate(items)]
        if mode != "payment" and "payment_intent_data" in params:
            raise StripeError(400, "payment_intent_data can only be used in payment mode.")
        if mode != "subscription" and "subscription_data" in params:
            raise StripeError(400, "subscription_data can only be used in subscription mode.")
        if "customer_creation" in params and mode != "payment":
            raise StripeError(400, "customer_creation can only be used in payment mode.")
        if "customer" in params and "customer_creation" in params:
            raise StripeError(
                400, "You may only specify one of these parameters: customer, customer_creation."
            )
        customer = params.get("customer")
        if customer is not None and customer not in self.customers:
            raise _missing("customer", customer, "customer")
        if len(params.get("client_reference_id", "")) > 200:
            raise StripeError(400, "client_reference_id must be at most 200 characters")
        amount = sum(
            int(p["unit_amount"]) * int(item["quantity"])
            for p, item in zip(prices, items, strict=True)
        )
        session_id = _id("cs_test")
        now = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": prices[0]["currency"] if prices else None,
            "customer": customer,
            "customer_creation": params.get("customer_creation"),
            "expires_at": now + 24 * 3600,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "mode": mode,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        return session

    def _portal_session(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if customer is None:
            raise StripeError(400, "Missing required param: customer.", code="parameter_missing")
        if customer not in self.customers:
            raise _missing("customer", customer, "customer")
        session_id = _id("bps")
        return {
            "id": session_id,
            "object": "billing_portal.session",
            "created": int(time.time()),
            "customer": customer,
            "livemode": False,
            "return_url": params.get("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_{session_id}",
        }

    def _subscription(self, subscription_id: str) -> dict[str, Any]:
        if subscription_id not in self.subscriptions:
            raise _missing("subscription", subscription_id, "id")
        return self.subscriptions[subscription_id]

    def _update_subscription(self, subscription_id: str, params: dict[str, Any]) -> dict[str, Any]:
        subscription = self._subscription(subscription_id)
        if subscription["status"] == "canceled" and set(params) - {
            "metadata",
            "cancellation_details",
            "expand",
        }:
            raise StripeError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        if "cancel_at_period_end" in params:
            subscription["cancel_at_period_end"] = params["cancel_at_period_end"]
            subscription["canceled_at"] = (
                int(time.time()) if params["cancel_at_period_end"] else None
            )
        subscription.setdefault("metadata", {}).update(params.get("metadata", {}))
        return subscription

    def _cancel_subscription(self, subscription_id: str, params: dict[str, Any]) -> dict[str, Any]:
        subscription = self._subscription(subscription_id)
        if subscription["status"] == "canceled":
            raise StripeError(
                400, f"No such subscription: '{subscription_id}'", code="resource_missing"
            )
        now = int(time.time())
        subscription.update(status="canceled", canceled_at=now, ended_at=now)
        return subscription

    def _refund(self, params: dict[str, Any]) -> dict[str, Any]:
        if ("charge" in params) == ("payment_intent" in params):
            raise StripeError(400, "You must provide exactly one of charge or payment_intent.")
        if "charge" in params:
            charge = self.charges.get(params["charge"])
            if charge is None:
                raise _missing("charge", params["charge"], "charge")
        else:
            found = [
                c for c in self.charges.values() if c["payment_intent"] == params["payment_intent"]
            ]
            if not found:
                raise _missing("payment_intent", params["payment_intent"], "payment_intent")
            charge = found[0]
        left = charge["amount"] - charge["amount_refunded"]
        amount = params.get("amount", left)
        if left <= 0:
            raise StripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if not 0 < amount <= left:
            raise StripeError(
                400,
                f"Refund amount ({amount}) is greater than charge amount ({left})",
                param="amount",
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        refund = {
            "id": _id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": params.get("metadata", {}),
            "payment_intent": charge["payment_intent"],
            "reason": params.get("reason"),
            "status": "succeeded",
        }
        self.refunds.append(refund)
        return refund

    def _events(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = params.get("limit", 10)
        if not 1 <= limit <= 100:
            raise StripeError(400, "limit must be between 1 and 100", param="limit")
        created = params.get("created", {})
        bounds = {
            "gt": lambda t, b: t > b,
            "gte": lambda t, b: t >= b,
            "lt": lambda t, b: t < b,
            "lte": lambda t, b: t <= b,
        }
        listed = [
            event
            for event in self.events
            if all(bounds[op](event["created"], bound) for op, bound in created.items())
            and event["type"] == params.get("type", event["type"])
        ]
        if "starting_after" in params:
            ids = [event["id"] for event in listed]
            if params["starting_after"] not in ids:
                raise _missing("event", params["starting_after"], "starting_after")
            listed = listed[ids.index(params["starting_after"]) + 1 :]
        return {
            "object": "list",
            "url": "/v1/events",
            "has_more": len(listed) > limit,
            "data": listed[:limit],
        }

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True, name="fake-stripe").start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
