"""The shipped Prometheus alert rules are well formed and read metrics that payments serves."""

from __future__ import annotations

import re

import yaml

from paylayer.settings import REPO_ROOT
from tests.stack import Stack
from tests.test_metrics import scrape

RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"


async def test_every_alert_reads_a_metric_that_payments_serves(stack: Stack) -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    alerts = {rule["alert"] for rule in rules}
    # The two the docs promise: failed events, and the age of the oldest pending one.
    assert {"PaylayerFailedEvents", "PaylayerPendingEventsOld"} <= alerts
    served = {name for name, _ in await scrape(f"http://{stack.metrics_addrs['payments']}/metrics")}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        names = set(re.findall(r"paylayer_[a-z_]+", rule["expr"]))
        assert names, rule["alert"]
        assert names <= served, (rule["alert"], names - served)
