"""localbatch: a local emulator of the Azure Batch data-plane REST API.

Importing the package is cheap: the server (and aiohttp) load only when first asked for, so
`localbatch.accounts` can be used by code that never runs the emulator.
"""
from __future__ import annotations

from typing import Any

from .accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

__all__ = ["LocalBatchServer", "Timings", "WELL_KNOWN_ACCOUNT_NAME", "WELL_KNOWN_ACCOUNT_KEY"]


def __getattr__(name: str) -> Any:
    if name == "LocalBatchServer":
        from .server import LocalBatchServer
        return LocalBatchServer
    if name == "Timings":
        from .domain.runtime import Timings
        return Timings
    raise AttributeError(f"module 'localbatch' has no attribute {name!r}")
