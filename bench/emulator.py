"""Run localbatch as its own process for a benchmark, and read what it reports about itself."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.rest import HttpRequest

from common import REPOSITORY_ROOT  # noqa: F401 - bench/__main__.py and scenarios.py import it from here
from common.local import RunningLocalbatch, start_localbatch
from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

STARTUP_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30  # after 10,000 tasks, writing the last state out takes a moment


class EmulatorProcess:
    """`python -m localbatch --port 0` in a fresh directory (started by common.local); stopped on exit."""

    def __init__(self, location: Optional[str] = None):
        self._temporary = None if location else tempfile.TemporaryDirectory(prefix="localbatch-bench-")
        self.location = location or os.path.join(self._temporary.name, "localbatch")
        self.url = ""
        self._running: Optional[RunningLocalbatch] = None

    def __enter__(self) -> "EmulatorProcess":
        try:
            self._running = start_localbatch(Path(self.location), timeout_seconds=STARTUP_TIMEOUT_SECONDS)
        except BaseException:
            self.__exit__()
            raise
        self.url = self._running.url
        return self

    def __exit__(self, *_exc) -> None:
        if self._running is not None:
            self._running.stop(timeout_seconds=STOP_TIMEOUT_SECONDS)
            self._running = None
        if self._temporary:
            self._temporary.cleanup()

    def client(self) -> BatchClient:
        return BatchClient(self.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY))

    def status(self) -> dict:
        """The well-known account's statistics: the status endpoint gives them to a signed request only
        (the SDK's client signs it, as it signs every request)."""
        with self.client() as client:
            response = client.send_request(HttpRequest("GET", f"{self.url}/localbatch/status"))
            response.raise_for_status()
            return response.json()

    def peak_rss_mb(self) -> float:
        """The emulator's peak resident set size (VmHWM) so far, in MiB."""
        with open(f"/proc/{self._running.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("VmHWM not found in /proc status")

    def state_size_mb(self) -> float:
        """Bytes under the emulator's state directory (SQLite), in MiB."""
        return _tree_size(os.path.join(self.location, "state")) / (1024 * 1024)

    def nodes_size_mb(self) -> float:
        return _tree_size(os.path.join(self.location, "nodes")) / (1024 * 1024)


def _tree_size(path: str) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass
    return total
