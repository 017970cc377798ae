"""Start the local stack (localbatch + Azurite) when the configuration points at it.

``LocalStack`` starts each emulator only if nothing answers on its port yet, waits until it
answers, and stops exactly the processes it started. The children run in their own process
group, so a Ctrl-C meant for the sample does not kill them before the sample's cleanup has
talked to them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit

from common import REPOSITORY_ROOT
from common.config import SampleSettings, redact_secrets

logger = logging.getLogger(__name__)

AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's published development key: it protects nothing and is safe to ship."""
LOCALBATCH_ACCOUNT_NAME = "localbatch"
LOCALBATCH_ACCOUNT_KEY = "MIFi2kO8kwSSKA1uy/WsjEDhbwVQBX6xm+RZ/uNAvcZk9D1JdqWAcq3KNI28KuZsRxEa2PxFSIIByWiP3Anw1Q=="
"""localbatch's published well-known key: like Azurite's, it protects nothing."""
LOCALBATCH_AUTOSTORAGE_VARIABLE = "LOCALBATCH_AUTOSTORAGE_CONNECTION_STRING"
_PROBE_TIMEOUT_SECONDS = 2.0
_STOP_TIMEOUT_SECONDS = 10.0


class LocalStackError(RuntimeError):
    """The local stack could not be started: a tool is missing, a port is taken, or it did not come up."""


def azurite_connection_string(blob_endpoint: str) -> str:
    """Return the connection string for Azurite's well-known account at ``blob_endpoint``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
        f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={blob_endpoint};"
    )


def _probe(url: str) -> Optional[tuple[int, dict[str, str], bytes]]:
    """GET ``url``; return (status, headers, body), or None when nothing listens there."""
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_SECONDS) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def localbatch_answers(endpoint: str) -> bool:
    """Return True if localbatch answers its health check at ``endpoint``.

    Raises ``LocalStackError`` if something else answers on that port.
    """
    answer = _probe(f"{endpoint}/localbatch/status")
    if answer is None:
        return False
    status, _headers, body = answer
    try:
        healthy = status == 200 and json.loads(body or b"{}").get("status") == "ok"
    except ValueError:
        healthy = False
    if not healthy:
        raise LocalStackError(
            f"something that is not localbatch answers at {endpoint} (HTTP {status} from /localbatch/status); "
            f"stop it or choose another port in [Batch] endpoint"
        )
    return True


def azurite_answers(blob_endpoint: str) -> bool:
    """Return True if Azurite's blob service answers at ``blob_endpoint``.

    Raises ``LocalStackError`` if something else answers on that port.
    """
    parts = urlsplit(blob_endpoint)
    answer = _probe(f"{parts.scheme}://{parts.netloc}/")
    if answer is None:
        return False
    _status, headers, _body = answer
    server = next((value for name, value in headers.items() if name.lower() == "server"), "")
    if not server.startswith("Azurite"):
        raise LocalStackError(
            f"something that is not Azurite answers at {parts.netloc} (Server: {server or 'not given'}); "
            f"stop it or choose another port in [Storage] blob_endpoint"
        )
    return True


class _StartedProcess:
    """A child process this module started, with the log file it writes to."""

    def __init__(self, name: str, command: list[str], log_path: Path, environment: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPOSITORY_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        logger.info("Started %s (process %d), log in %s", name, self.process.pid, log_path)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_for_log_line(self, pattern: str, deadline: float) -> re.Match:
        """Wait until the log has a line matching ``pattern``; raise if the process exits or time runs out."""
        while True:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            if self.process.poll() is not None:
                raise LocalStackError(
                    f"{self.name} exited with code {self.process.returncode} while starting: "
                    f"{redact_secrets(self.log_text().strip()[-800:]) or 'no output'} (log: {self.log_path})"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for {self.name} to start listening (log: {self.log_path})")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process group: SIGTERM, then SIGKILL if it has not exited within a few seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, _STOP_TIMEOUT_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        logger.info("Stopped %s", self.name)


class LocalStack:
    """localbatch and Azurite on this machine, started on demand and stopped when done.

    ``batch_endpoint`` and ``blob_endpoint`` are the URLs from the configuration; a port of 0
    picks free ports, and the properties then give the real URLs once ``start()`` returns.
    Use it as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        data_directory: Path,
        batch_endpoint: str = "http://127.0.0.1:10100",
        blob_endpoint: str = f"http://127.0.0.1:10000/{AZURITE_ACCOUNT_NAME}",
        startup_timeout_seconds: float = 60.0,
    ) -> None:
        self.data_directory = Path(data_directory)
        self._batch_endpoint = batch_endpoint.rstrip("/")
        self._blob_endpoint = blob_endpoint.rstrip("/")
        self.startup_timeout_seconds = startup_timeout_seconds
        self._started: list[_StartedProcess] = []

    @property
    def batch_endpoint(self) -> str:
        """The Batch endpoint of localbatch, e.g. ``http://127.0.0.1:10100``."""
        return self._batch_endpoint

    @property
    def blob_endpoint(self) -> str:
        """Azurite's blob endpoint for the well-known account, e.g. ``http://127.0.0.1:10000/devstoreaccount1``."""
        return self._blob_endpoint

    @property
    def storage_connection_string(self) -> str:
        """The connection string for Azurite's well-known account."""
        return azurite_connection_string(self._blob_endpoint)

    @property
    def started_process_names(self) -> list[str]:
        """The names of the emulators this object started (not those it found already running)."""
        return [started.name for started in self._started]

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *_exception: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start Azurite, then localbatch (whose auto-storage is that Azurite), unless they already answer."""
        deadline = time.monotonic() + self.startup_timeout_seconds
        try:
            self._start_azurite(deadline)
            self._start_localbatch(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what ``start()`` started, newest first. Emulators found running are left alone."""
        while self._started:
            self._started.pop().stop()

    def _port(self, url: str) -> int:
        port = urlsplit(url).port
        return 0 if port is None else port

    def _start_azurite(self, deadline: float) -> None:
        if self._port(self._blob_endpoint) and azurite_answers(self._blob_endpoint):
            logger.info("Azurite already answers at %s", self._blob_endpoint)
            return
        node = shutil.which("node")
        if node is None:
            raise LocalStackError(
                "Node.js is not installed, and the local stack needs it to run Azurite (the Storage emulator): "
                "install Node.js 18 or newer (e.g. 'sudo apt-get install nodejs npm'), then run 'npm ci' in "
                f"{REPOSITORY_ROOT}"
            )
        azurite = REPOSITORY_ROOT / "node_modules" / ".bin" / "azurite-blob"
        if not azurite.exists():
            raise LocalStackError(
                f"Azurite is not installed in {REPOSITORY_ROOT / 'node_modules'}: run 'npm ci' in "
                f"{REPOSITORY_ROOT} (make run and make test do it for you)"
            )
        parts = urlsplit(self._blob_endpoint)
        account = parts.path.strip("/") or AZURITE_ACCOUNT_NAME
        started = _StartedProcess(
            "Azurite",
            [
                node, str(azurite),
                "--blobHost", parts.hostname or "127.0.0.1",
                "--blobPort", str(self._port(self._blob_endpoint)),
                "--location", str(self.data_directory / "azurite"),
                "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
            ],
            self.data_directory / "azurite.log",
            dict(os.environ),
        )
        self._started.append(started)
        match = started.wait_for_log_line(r"listens on (http://\S+?):(\d+)", deadline)
        self._blob_endpoint = f"{parts.scheme}://{parts.hostname}:{match.group(2)}/{account}"
        self._wait_until(lambda: azurite_answers(self._blob_endpoint), "Azurite", deadline)

    def _start_localbatch(self, deadline: float) -> None:
        if self._port(self._batch_endpoint) and localbatch_answers(self._batch_endpoint):
            logger.info("localbatch already answers at %s", self._batch_endpoint)
            return
        if not (REPOSITORY_ROOT / "localbatch" / "__main__.py").is_file():
            raise LocalStackError(f"the localbatch emulator was not found in {REPOSITORY_ROOT / 'localbatch'}")
        parts = urlsplit(self._batch_endpoint)
        environment = dict(os.environ)
        environment[LOCALBATCH_AUTOSTORAGE_VARIABLE] = self.storage_connection_string
        started = _StartedProcess(
            "localbatch",
            [
                sys.executable, "-m", "localbatch",
                "--host", parts.hostname or "127.0.0.1",
                "--port", str(self._port(self._batch_endpoint)),
                "--location", str(self.data_directory / "localbatch"),
            ],
            self.data_directory / "localbatch.log",
            environment,
        )
        self._started.append(started)
        match = started.wait_for_log_line(r"localbatch listening on (http://\S+)", deadline)
        self._batch_endpoint = match.group(1).rstrip("/")
        self._wait_until(lambda: localbatch_answers(self._batch_endpoint), "localbatch", deadline)

    @staticmethod
    def _wait_until(answers: Callable[[], bool], name: str, deadline: float) -> None:
        while not answers():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for {name} to answer")
            time.sleep(0.05)


@contextlib.contextmanager
def local_stack_if_configured(settings: SampleSettings) -> Iterator[Optional[LocalStack]]:
    """Run the block with the local stack up when ``[Local] start_local_stack`` is true.

    Yields the ``LocalStack`` (or None when the configuration points at Azure). Emulators that
    were already running are used as they are and left running.
    """
    if not settings.local.start_local_stack:
        yield None
        return
    with LocalStack(
        data_directory=settings.local.data_directory,
        batch_endpoint=settings.batch.endpoint,
        blob_endpoint=settings.storage.blob_endpoint,
        startup_timeout_seconds=settings.local.startup_timeout_seconds,
    ) as stack:
        yield stack
