"""Benchmarks: each prints its figures as JSON. Timings live here, never in pass/fail tests."""
