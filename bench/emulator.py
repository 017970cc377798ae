"""Run localbatch as its own process for a benchmark, and read what it reports about itself."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 30


class EmulatorProcess:
    """`python -m localbatch --port 0` in a fresh directory; stopped (SIGTERM) on exit."""

    def __init__(self, location: Optional[str] = None):
        self._temporary = None if location else tempfile.TemporaryDirectory(prefix="localbatch-bench-")
        self.location = location or self._temporary.name
        self.url = ""
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "EmulatorProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localbatch", "--port", "0", "--location", self.location],
            cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        line = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                return self
            if self.process.poll() is not None:
                break
        self.__exit__()
        raise RuntimeError(f"localbatch did not start (last output: {line.strip()!r})")

    def __exit__(self, *_exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._temporary:
            self._temporary.cleanup()

    def client(self) -> BatchClient:
        return BatchClient(self.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY))

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/localbatch/status", timeout=10) as response:
            return json.load(response)

    def peak_rss_mb(self) -> float:
        """The emulator's peak resident set size (VmHWM) so far, in MiB."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
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
