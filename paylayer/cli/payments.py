"""`paylayer ...` commands of the payments service."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Commands are added here by the payments issue."""
