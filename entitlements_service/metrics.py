"""Entitlements' own metrics: grants, revokes, and how often checks are answered from memory."""

from __future__ import annotations

from prometheus_client import Counter

GRANTS = Counter(
    "paylayer_entitlements_grants_total",
    "GrantEntitlement calls, by provider and outcome (created, duplicate).",
    ["provider", "outcome"],
)
REVOKES = Counter(
    "paylayer_entitlements_revokes_total",
    "RevokeEntitlement calls, by provider and outcome (revoked, tombstone).",
    ["provider", "outcome"],
)
_CHECKS = Counter(
    "paylayer_entitlements_checks_total",
    "CheckEntitlement answers, by where they came from (cache hit, or a database load).",
    ["source"],
)
# Bound once: the check path must stay a few microseconds.
CHECK_CACHE_HITS = _CHECKS.labels("cache")
CHECK_CACHE_MISSES = _CHECKS.labels("database")
