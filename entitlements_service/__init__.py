"""Grants of tiers by source, stacked in purchase order, checked fast by every service."""
