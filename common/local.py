"""Start the local stack (localbatch + Azurite) when the configuration points at it.

This module is the one place that starts the emulators as processes and reads their start-up
lines. Its building blocks are public, for the tests and the benchmarks:

- ``start_azurite(location, host, port)`` starts Azurite's blob service and returns a
  ``RunningAzurite`` (``blob_endpoint``, ``connection_string``, ``stop()``).
- ``start_localbatch(location, host, port, extra_args, environment)`` starts localbatch and
  returns a ``RunningLocalbatch`` (``url``, ``pid``, ``stop()``, ``kill()``).

Both return only once the emulator answers, run it in its own process group (so a Ctrl-C meant
for the sample does not kill it before the sample's cleanup has talked to it), and write its
output to a log file next to its location.

``LocalStack`` uses them: it starts each emulator only if nothing answers on its port yet, and
stops exactly the processes it started.

**https and Entra ID.** An emulator whose endpoint is ``https://`` is started with a certificate
from the stack's development CA (made once under ``DATA_DIRECTORY/tls`` by
``localbatch.identity.certificates``); Azurite then also accepts bearer tokens (``--oauth basic``).
While the stack runs, this process's environment trusts that CA and can get tokens
(``LocalStack.client_environment()``): ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE`` name a bundle of
the public roots plus the CA, and ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` point
``DefaultAzureCredential`` at localbatch's token issuer (the managed identity protocol of App
Service). Task processes inherit the trust bundle from localbatch.

The well-known account names and keys are defined in ``localbatch.accounts``; this module
hands them on as ``AZURITE_ACCOUNT_NAME``, ``AZURITE_ACCOUNT_KEY``, ``LOCALBATCH_ACCOUNT_NAME``
and ``LOCALBATCH_ACCOUNT_KEY``. It imports that module only when they are first used, because
importing the ``localbatch`` package loads aiohttp, which a sample run against Azure does not
install (``requirements.txt``).
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
from types import ModuleType
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

from common import REPOSITORY_ROOT
from common.config import AccountSettings, SampleSettings, redact_secrets

logger = logging.getLogger(__name__)

LOCALBATCH_AUTOSTORAGE_VARIABLE = "LOCALBATCH_AUTOSTORAGE_CONNECTION_STRING"
TLS_DIRECTORY = "tls"
TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
IDENTITY_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")
DEFAULT_STARTUP_TIMEOUT_SECONDS = 60.0
_PROBE_TIMEOUT_SECONDS = 2.0
_STOP_TIMEOUT_SECONDS = 10.0
_WELL_KNOWN_NAMES = {
    "AZURITE_ACCOUNT_NAME": "AZURITE_ACCOUNT_NAME",
    "AZURITE_ACCOUNT_KEY": "AZURITE_ACCOUNT_KEY",
    "LOCALBATCH_ACCOUNT_NAME": "WELL_KNOWN_ACCOUNT_NAME",
    "LOCALBATCH_ACCOUNT_KEY": "WELL_KNOWN_ACCOUNT_KEY",
}


def _well_known_accounts() -> ModuleType:
    """``localbatch.accounts``, imported on first use (importing the localbatch package loads aiohttp)."""
    import localbatch.accounts

    return localbatch.accounts


def __getattr__(name: str) -> str:
    """Hand on the well-known account names and keys from ``localbatch.accounts``."""
    if name in _WELL_KNOWN_NAMES:
        return getattr(_well_known_accounts(), _WELL_KNOWN_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LocalStackError(RuntimeError):
    """The local stack could not be started: a tool is missing, a port is taken, or it did not come up."""


def azurite_connection_string(blob_endpoint: str) -> str:
    """Return the connection string for Azurite's well-known account at ``blob_endpoint``."""
    connection_string = _well_known_accounts().azurite_connection_string(blob_endpoint)
    if blob_endpoint.startswith("https://"):
        connection_string = connection_string.replace("DefaultEndpointsProtocol=http;", "DefaultEndpointsProtocol=https;")
    return connection_string


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


class StartedEmulator:
    """An emulator this module started: a child in its own process group, writing to a log file."""

    def __init__(self, name: str, command: list[str], log_path: Path, environment: Mapping[str, str]) -> None:
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
                env=dict(environment),
                start_new_session=True,
            )
        logger.info("Started %s (process %d), log in %s", name, self.process.pid, log_path)

    @property
    def pid(self) -> int:
        """The emulator's process id (also the id of its process group)."""
        return self.process.pid

    def __enter__(self) -> "StartedEmulator":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything the emulator has written so far (stdout and stderr)."""
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

    def wait_until_it_answers(self, answers: Callable[[], bool], deadline: float) -> None:
        """Wait until ``answers()`` is true; raise if the process exits or time runs out."""
        while not answers():
            if self.process.poll() is not None:
                raise LocalStackError(
                    f"{self.name} exited with code {self.process.returncode} before it answered (log: {self.log_path})"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for {self.name} to answer (log: {self.log_path})")
            time.sleep(0.05)

    def stop(self, timeout_seconds: float = _STOP_TIMEOUT_SECONDS) -> None:
        """Stop the process group: SIGTERM, then SIGKILL if it has not exited within ``timeout_seconds``."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout_seconds)
            self.kill()
            return
        logger.info("Stopped %s", self.name)

    def kill(self) -> None:
        """Kill the process group at once (SIGKILL), as a crash would, and reap the emulator."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        logger.info("Killed %s", self.name)


class RunningAzurite(StartedEmulator):
    """Azurite's blob service, started by ``start_azurite`` and answering."""

    host: str = ""
    port: int = 0
    scheme: str = "http"

    @property
    def blob_endpoint(self) -> str:
        """The blob endpoint of the well-known account, e.g. ``http://127.0.0.1:10000/devstoreaccount1``."""
        return f"{self.scheme}://{self.host}:{self.port}/{_well_known_accounts().AZURITE_ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """The connection string of the well-known account."""
        return azurite_connection_string(self.blob_endpoint)


class RunningLocalbatch(StartedEmulator):
    """localbatch, started by ``start_localbatch`` and answering."""

    url: str = ""
    """Its Batch endpoint, e.g. ``http://127.0.0.1:10100``."""
    services_url: str = ""
    """Where its Key Vault and management plane answer (https), when started with ``--services-port``."""


def _log_path_beside(location: Path) -> Path:
    """``DIR/azurite`` logs to ``DIR/azurite.log``: beside the location, not inside the emulator's own files."""
    return location.parent / f"{location.name}.log"


def start_azurite(
    location: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_path: Optional[Path] = None,
    timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
    certificate: Optional[tuple[Path, Path]] = None,
) -> RunningAzurite:
    """Start Azurite's blob service with its data in ``location``; return it once it answers.

    A ``port`` of 0 picks a free one. With ``certificate`` (a PEM certificate and its key) it
    serves https and accepts Entra ID bearer tokens (``--oauth basic``) as well as shared key. Its output goes to ``log_path`` (default: ``location``
    with ``.log`` added, beside it). Raises ``LocalStackError`` when Node.js or Azurite is
    missing or Azurite exits while starting, and ``TimeoutError`` when it does not answer in time.
    """
    deadline = time.monotonic() + timeout_seconds
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
    location = Path(location)
    running = RunningAzurite(
        "Azurite",
        [
            node, str(azurite),
            "--blobHost", host,
            "--blobPort", str(port),
            "--location", str(location),
            "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
            *(["--cert", str(certificate[0]), "--key", str(certificate[1]), "--oauth", "basic"] if certificate else []),
        ],
        log_path or _log_path_beside(location),
        os.environ,
    )
    try:
        match = running.wait_for_log_line(r"listens on (https?)://\S+?:(\d+)", deadline)
        running.scheme, running.host, running.port = match.group(1), host, int(match.group(2))
        running.wait_until_it_answers(lambda: azurite_answers(running.blob_endpoint), deadline)
    except BaseException:
        running.stop()
        raise
    return running


def start_localbatch(
    location: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    extra_args: Sequence[str] = (),
    environment: Optional[Mapping[str, str]] = None,
    *,
    log_path: Optional[Path] = None,
    timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
) -> RunningLocalbatch:
    """Start ``python -m localbatch`` with its state in ``location``; return it once it answers.

    A ``port`` of 0 picks a free one. ``extra_args`` go on its command line (e.g.
    ``["--node-startup-seconds", "600"]``); ``environment`` is its whole environment (default:
    this process's). Its output goes to ``log_path`` (default: ``location`` with ``.log``
    added, beside it). Raises ``LocalStackError`` when it exits while starting (with its
    output), and ``TimeoutError`` when it does not answer in time.
    """
    deadline = time.monotonic() + timeout_seconds
    if not (REPOSITORY_ROOT / "localbatch" / "__main__.py").is_file():
        raise LocalStackError(f"the localbatch emulator was not found in {REPOSITORY_ROOT / 'localbatch'}")
    location = Path(location)
    running = RunningLocalbatch(
        "localbatch",
        [
            sys.executable, "-m", "localbatch",
            "--host", host,
            "--port", str(port),
            "--location", str(location),
            *extra_args,
        ],
        log_path or _log_path_beside(location),
        os.environ if environment is None else environment,
    )
    try:
        match = running.wait_for_log_line(r"localbatch listening on (https?://\S+)", deadline)
        running.url = match.group(1).rstrip("/")
        services = re.search(r"localbatch services \(Key Vault, management\) listening on (https://\S+)",
                             running.log_text())
        running.services_url = services.group(1).rstrip("/") if services else ""
        running.wait_until_it_answers(lambda: localbatch_answers(running.url), deadline)
    except BaseException:
        running.stop()
        raise
    return running


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
        blob_endpoint: Optional[str] = None,
        startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
        services_endpoint: Optional[str] = None,
    ) -> None:
        """``blob_endpoint`` defaults to Azurite's usual one, ``http://127.0.0.1:10000/devstoreaccount1``.
        ``services_endpoint`` is where localbatch serves Key Vault and the management plane (https);
        by default the port after the Batch endpoint's (10101 for 10100; a free one for 0)."""
        self.data_directory = Path(data_directory)
        if services_endpoint is None:
            batch = urlsplit(batch_endpoint)
            port = batch.port + 1 if batch.port else 0
            services_endpoint = f"https://{batch.hostname or '127.0.0.1'}:{port}"
        self._services_endpoint = services_endpoint.rstrip("/")
        self._batch_endpoint = batch_endpoint.rstrip("/")
        self._blob_endpoint = (blob_endpoint or _well_known_accounts().AZURITE_DEFAULT_BLOB_ENDPOINT).rstrip("/")
        self.startup_timeout_seconds = startup_timeout_seconds
        self._started: list[StartedEmulator] = []
        self._certificates = None  # localbatch.identity.certificates.DevelopmentCertificates, for https
        self._environment_before: dict[str, Optional[str]] = {}

    @property
    def batch_endpoint(self) -> str:
        """The Batch endpoint of localbatch, e.g. ``http://127.0.0.1:10100``."""
        return self._batch_endpoint

    @property
    def blob_endpoint(self) -> str:
        """Azurite's blob endpoint for the well-known account, e.g. ``http://127.0.0.1:10000/devstoreaccount1``."""
        return self._blob_endpoint

    @property
    def services_endpoint(self) -> str:
        """localbatch's Key Vault and management endpoint, e.g. ``https://127.0.0.1:10101``."""
        return self._services_endpoint

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

    @property
    def uses_https(self) -> bool:
        """True when either endpoint is https (the development CA is made and trusted in any case,
        for the Key Vault and management endpoint)."""
        return self._batch_endpoint.startswith("https://") or self._blob_endpoint.startswith("https://")

    @property
    def trust_bundle(self) -> Optional[Path]:
        """The public roots plus the development CA (None before ``start()``)."""
        return self._certificates.trust_bundle if self._certificates is not None else None

    def client_environment(self) -> dict[str, str]:
        """What a process needs to trust the stack's https and get Entra ID tokens from it.

        ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE`` (the trust bundle), and, once localbatch runs with
        its data under this stack's data directory, ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` for
        ``DefaultAzureCredential``. Empty before ``start()``.
        """
        if self._certificates is None:
            return {}
        environment = {name: str(self._certificates.trust_bundle) for name in TRUST_VARIABLES}
        header_file = self.data_directory / "localbatch" / "identity" / "identity-header"
        if header_file.is_file():
            environment["IDENTITY_ENDPOINT"] = f"{self._batch_endpoint}/msi/token"
            environment["IDENTITY_HEADER"] = header_file.read_text(encoding="ascii").strip()
        return environment

    def start(self) -> None:
        """Start Azurite, then localbatch (whose auto-storage is that Azurite), unless they already answer.

        With https endpoints, first make (or reuse) the development certificates and make this
        process trust them; once localbatch answers, point Entra ID credentials at its issuer.
        """
        deadline = time.monotonic() + self.startup_timeout_seconds
        try:
            # Always: Key Vault and the management plane are https whatever the endpoints use.
            self._prepare_https()
            self._start_azurite(deadline)
            self._start_localbatch(deadline)
            self._export(self.client_environment())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what ``start()`` started, newest first, and restore the environment it changed.

        Emulators found running are left alone."""
        while self._started:
            self._started.pop().stop()
        while self._environment_before:
            name, value = self._environment_before.popitem()
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _prepare_https(self) -> None:
        from localbatch.identity.certificates import ensure_development_certificates

        hosts = {urlsplit(url).hostname or "127.0.0.1" for url in (self._batch_endpoint, self._blob_endpoint)}
        self._certificates = ensure_development_certificates(self.data_directory / TLS_DIRECTORY, hosts)
        self._export({name: str(self._certificates.trust_bundle) for name in TRUST_VARIABLES})

    def _export(self, environment: Mapping[str, str]) -> None:
        for name, value in environment.items():
            self._environment_before.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _certificate_pair(self, endpoint: str) -> Optional[tuple[Path, Path]]:
        if not endpoint.startswith("https://") or self._certificates is None:
            return None
        return self._certificates.server_certificate, self._certificates.server_key

    @staticmethod
    def _port(url: str) -> int:
        port = urlsplit(url).port
        return 0 if port is None else port

    def _start_azurite(self, deadline: float) -> None:
        if self._port(self._blob_endpoint) and azurite_answers(self._blob_endpoint):
            logger.info("Azurite already answers at %s", self._blob_endpoint)
            return
        parts = urlsplit(self._blob_endpoint)
        azurite = start_azurite(
            self.data_directory / "azurite",
            parts.hostname or "127.0.0.1",
            self._port(self._blob_endpoint),
            timeout_seconds=deadline - time.monotonic(),
            certificate=self._certificate_pair(self._blob_endpoint),
        )
        self._started.append(azurite)
        account = parts.path.strip("/") or _well_known_accounts().AZURITE_ACCOUNT_NAME
        self._blob_endpoint = f"{parts.scheme}://{azurite.host}:{azurite.port}/{account}"

    def _start_localbatch(self, deadline: float) -> None:
        if self._port(self._batch_endpoint) and localbatch_answers(self._batch_endpoint):
            logger.info("localbatch already answers at %s", self._batch_endpoint)
            return
        environment = {**os.environ, LOCALBATCH_AUTOSTORAGE_VARIABLE: self.storage_connection_string}
        certificate = self._certificate_pair(self._batch_endpoint)
        localbatch = start_localbatch(
            self.data_directory / "localbatch",
            urlsplit(self._batch_endpoint).hostname or "127.0.0.1",
            self._port(self._batch_endpoint),
            [
                *(["--cert", str(certificate[0]), "--key", str(certificate[1])] if certificate else []),
                # Key Vault and the management plane: https, whatever the Batch endpoint uses.
                "--services-port", str(self._port(self._services_endpoint)),
                "--services-cert", str(self._certificates.server_certificate),
                "--services-key", str(self._certificates.server_key),
            ],
            environment=environment,
            timeout_seconds=deadline - time.monotonic(),
        )
        self._started.append(localbatch)
        self._batch_endpoint = localbatch.url
        self._services_endpoint = localbatch.services_url


@contextlib.contextmanager
def local_stack_if_configured(settings: Union[SampleSettings, AccountSettings]) -> Iterator[Optional[LocalStack]]:
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
