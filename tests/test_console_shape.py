"""The console's pure parts: how figures become charts and timelines, and who may sign in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from console import shape
from console.security import chart_json, is_operator_token
from paylayer.callers import CallerTokens, token_digest_hex

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def test_hourly_series_has_every_hour_and_drops_what_is_outside() -> None:
    this_hour = NOW.replace(minute=0)
    series = shape.hourly_series(
        [
            (this_hour, "failed", 2),
            (this_hour - timedelta(hours=3), "processed", 5),
            (this_hour - timedelta(hours=30), "processed", 9),
        ],
        NOW,
        24,
    )
    assert len(series["x"]) == 24 and series["x"][-1] == int(this_hour.timestamp())
    assert series["series"]["failed"][-1] == 2
    assert sum(series["series"]["processed"]) == 5


def test_revenue_series_is_per_channel_and_currency_in_major_units() -> None:
    today = NOW.replace(hour=0, minute=0)
    series = shape.revenue_series(
        [
            (today, "stripe", "usd", 2900, 1),
            (today, "telegram", "xtr", 1500, 1),
            (today - timedelta(days=1), "stripe", "usd", 9900, 1),
        ],
        NOW,
        30,
    )
    assert series["series"]["stripe USD"][-2:] == [99.0, 29.0]
    assert series["series"]["telegram XTR"][-1] == 1500.0
    assert shape.money(2900, "usd") == "29.00 USD" and shape.money(1500, "xtr") == "1500 Stars"


def test_timeline_puts_stacked_grants_end_to_end_in_one_lane() -> None:
    first_start = NOW - timedelta(days=10)

    def grant(start: datetime, end: datetime | None, entitlement: str = "premium") -> dict:  # type: ignore[type-arg]
        return {
            "grant_id": str(start),
            "entitlement": entitlement,
            "provider": "stripe",
            "reference": "pi",
            "starts_at": start,
            "ends_at": end,
            "revoked": False,
        }

    bars, start, end = shape.timeline(
        [
            grant(first_start, first_start + timedelta(days=30)),
            grant(first_start + timedelta(days=30), first_start + timedelta(days=60)),
            grant(NOW, None, "vip"),
        ],
        NOW,
    )
    premium = [bar for bar in bars if bar.entitlement == "premium"]
    assert [bar.row for bar in premium] == [0, 0] and bars[-1].row == 1
    assert premium[0].left == 0 and abs(premium[0].left + premium[0].width - premium[1].left) < 0.01
    assert bars[-1].open_ended and bars[-1].left + bars[-1].width <= 100
    assert start == first_start and end == first_start + timedelta(days=61)


def test_payloads_are_indented_and_chart_json_cannot_close_its_script_block() -> None:
    assert shape.pretty_payload(b'{"b":1,"a":"<x>"}') == '{\n  "a": "<x>",\n  "b": 1\n}'
    assert shape.pretty_payload(b"not json \xff") == "not json \ufffd"
    assert "</script>" not in chart_json({"label": "</script><script>alert(1)"})


def test_only_an_operator_token_signs_in_plain_or_by_digest() -> None:
    tokens = CallerTokens.parse(f"operator:op-1,operator:{token_digest_hex('op-2')},reader:read-1")
    assert is_operator_token(tokens, "op-1") and is_operator_token(tokens, "op-2")
    assert not is_operator_token(tokens, "read-1")
    assert not is_operator_token(tokens, "") and not is_operator_token(tokens, "op-3")


def test_downsampling_keeps_the_deepest_drawdown_of_each_stretch() -> None:
    times = list(range(10_000))
    drawdown = [0.0] * 10_000
    drawdown[4321] = 30.0
    chart = shape.downsample(times, [1.0] * 10_000, drawdown, 1000)
    assert len(chart["x"]) == 1000 and 4321 in chart["x"] and max(chart["drawdown"]) == 30.0
    assert shape.downsample([1, 2], [1.0, 2.0], [0.0, 0.0], 1000)["x"] == [1, 2]
