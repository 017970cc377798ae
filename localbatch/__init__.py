"""localbatch: a local emulator of the Azure Batch data-plane REST API."""
from .accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from .server import LocalBatchServer
from .domain.runtime import Timings

__all__ = ["LocalBatchServer", "Timings", "WELL_KNOWN_ACCOUNT_NAME", "WELL_KNOWN_ACCOUNT_KEY"]
