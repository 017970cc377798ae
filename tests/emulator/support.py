"""Helpers for the localbatch contract tests: bounded waits, SDK builders, a raw HTTP client, and
`python -m localbatch` as a child process (start, crash with its launchers, read its state store).

The raw client signs requests with its own Shared Key implementation, written from
BATCH_FACTS.md and azure-batch's BatchSharedKeyAuthPolicy, so the emulator's verifier is
checked against an independent signer rather than against itself.
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import http.client
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from tests.waiting import wait_for as _wait_for

API_VERSION = "2025-06-01"
POLL = 0.02            # seconds between polls of the emulator
WAIT = 30.0            # upper bound of any wait; reached only when something is broken
LRO_POLLING = 0.05     # polling_interval for begin_* calls
# Runs a command as nobody (for tests of what localbatch refuses without root).
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")

T = TypeVar("T")


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(check: Callable[[], Optional[T]], what: str, timeout: float = WAIT, *, poll: float = POLL,
             **options: Any) -> T:
    """Poll `check` until it returns something truthy: tests/waiting.py's wait_for at this suite's pace
    (a 404 counts as "not yet"; TimeoutError naming `what` after `timeout` seconds)."""
    return _wait_for(check, what, timeout, poll=poll, **options)


# ---- SDK side ----------------------------------------------------------------------------------
def batch_client(url: str, account: str = WELL_KNOWN_ACCOUNT_NAME, key: str = WELL_KNOWN_ACCOUNT_KEY,
                 **options: Any) -> BatchClient:
    return BatchClient(url, AzureNamedKeyCredential(account, key), **options)


def ubuntu_configuration() -> models.VirtualMachineConfiguration:
    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(
            publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
        node_agent_sku_id="batch.node.ubuntu 22.04")


def pool_options(pool_id: str, nodes: int = 1, **extra: Any) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=nodes,
                                         virtual_machine_configuration=ubuntu_configuration(), **extra)


def wait_for_nodes(client: BatchClient, pool_id: str, count: int, states: Iterable[str] = ("idle",),
                   timeout: float = WAIT) -> list[models.BatchNode]:
    """Wait until the pool has exactly `count` nodes, all in one of `states`."""
    wanted = set(states)

    def ready() -> Optional[list[models.BatchNode]]:
        nodes = list(client.list_nodes(pool_id))
        if len(nodes) == count and all(node.state in wanted for node in nodes):
            return nodes
        return None
    return wait_for(ready, f"{count} node(s) of pool {pool_id} in state {sorted(wanted)}", timeout)


def create_pool_and_wait(client: BatchClient, pool_id: str, nodes: int = 1, **extra: Any) -> list[models.BatchNode]:
    client.create_pool(pool_options(pool_id, nodes, **extra))
    return wait_for_nodes(client, pool_id, nodes)


def delete_pool_and_wait(client: BatchClient, pool_id: str, timeout: float = WAIT) -> None:
    """Delete the pool and wait until the service no longer knows it."""
    client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()

    def gone() -> bool:
        try:
            client.get_pool(pool_id)
            return False
        except ResourceNotFoundError:
            return True
    wait_for(gone, f"pool {pool_id} to be deleted", timeout)


def pool_refused_when_not_root(pool: models.BatchPoolCreateOptions) -> HttpResponseError:
    """The error create_pool answers when localbatch runs as a user other than root (nobody, when
    the tests run as root), for pools that need root: container engines, FUSE mounts."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run localbatch as another user than root")
    location = Path(tempfile.mkdtemp(prefix="localbatch-unprivileged-"))
    location.chmod(0o777)  # the unprivileged emulator keeps its state here
    emulator = RunningEmulator(location / "state", run_as=NOBODY if os.geteuid() == 0 else ())
    try:
        with batch_client(emulator.url()) as client:
            with pytest.raises(HttpResponseError) as caught:
                client.create_pool(pool)
    finally:
        emulator.kill()
        shutil.rmtree(location, ignore_errors=True)
    return caught.value


def create_job(client: BatchClient, pool_id: str, job_id: Optional[str] = None, **extra: Any) -> str:
    job_id = job_id or unique_id("job")
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), **extra))
    return job_id


def wait_for_task(client: BatchClient, job_id: str, task_id: str, states: Iterable[str] = ("completed",),
                  timeout: float = WAIT) -> models.BatchTask:
    wanted = set(states)

    def reached() -> Optional[models.BatchTask]:
        task = client.get_task(job_id, task_id)
        return task if task.state in wanted else None
    return wait_for(reached, f"task {job_id}/{task_id} in state {sorted(wanted)}", timeout)


def wait_for_all_tasks(client: BatchClient, job_id: str, timeout: float = WAIT) -> None:
    wait_for(lambda: not list(client.list_tasks(job_id, filter="state ne 'completed'", select=["id"])),
             f"every task of job {job_id} to complete", timeout)


def run_task(client: BatchClient, job_id: str, command_line: str, task_id: Optional[str] = None,
             **extra: Any) -> models.BatchTask:
    """Add one task and wait until it completes."""
    task_id = task_id or unique_id("task")
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command_line, **extra))
    return wait_for_task(client, job_id, task_id)


def read_task_file(client: BatchClient, job_id: str, task_id: str, path: str = "stdout.txt") -> str:
    return b"".join(client.download_task_file(job_id, task_id, path)).decode("utf-8")


# azure-batch 15.1 raises ValueError before sending when an optional options body is left out
# (begin_terminate_job, begin_reboot_node): always pass one. The models are not exported.
def terminate_options(reason: str = "test") -> Any:
    return models._models.BatchJobTerminateOptions(termination_reason=reason)  # pylint: disable=protected-access


def reboot_options(kind: str = "requeue") -> Any:
    return models._models.BatchNodeRebootOptions(node_reboot_kind=kind)  # pylint: disable=protected-access


# ---- raw HTTP ----------------------------------------------------------------------------------
_SIGNED_HEADERS = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
                   "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


def shared_key_signature(key: str, method: str, path: str, query: str, headers: dict[str, str],
                         account: str) -> str:
    """The signature azure-batch's BatchSharedKeyAuthPolicy would put in the Authorization header."""
    present = {name.lower(): value for name, value in headers.items() if value}
    if method not in ("GET", "HEAD"):
        present.setdefault("content-length", "0")
    text = method + "\n" + "".join(present.get(name, "") + "\n" for name in _SIGNED_HEADERS)
    for name, value in sorted((n.lower(), v) for n, v in headers.items() if "ocp-" in n.lower() and v):
        text += f"{name}:{value}\n"
    text += f"/{account}{path}"
    first_values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        first_values.setdefault(name, value)
    for name in sorted(first_values):
        if first_values[name]:
            text += f"\n{name}:{first_values[name]}"
    digest = hmac.new(base64.b64decode(key), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> Optional[str]:
        try:
            return self.json().get("code")
        except ValueError:
            return None

    def detail(self, key: str) -> Optional[str]:
        for entry in self.json().get("values", []):
            if entry["key"] == key:
                return entry["value"]
        return None


class RawClient:
    """Sends exactly the bytes it is given (path not normalised), signed unless told otherwise."""

    def __init__(self, url: str, account: str = WELL_KNOWN_ACCOUNT_NAME, key: str = WELL_KNOWN_ACCOUNT_KEY,
                 ssl_context: Optional[ssl.SSLContext] = None):
        """An https ``url`` is reached through ``ssl_context`` (e.g. one trusting the development CA)."""
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.account, self.key = account, key
        self.ssl_context = ssl_context if parts.scheme == "https" else None

    def request(self, method: str, target: str, body: Optional[bytes | dict | list] = None,
                headers: Optional[dict[str, str]] = None, sign: bool = True,
                authorization: Optional[str] = None, api_version: Optional[str] = API_VERSION) -> RawResponse:
        if api_version is not None:
            target += ("&" if "?" in target else "?") + f"api-version={api_version}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        sent = {"ocp-date": email.utils.formatdate(usegmt=True), "client-request-id": str(uuid.uuid4())}
        if body is not None:
            sent["Content-Type"] = "application/json; odata=minimalmetadata"
            sent["Content-Length"] = str(len(body))
        sent.update(headers or {})
        if authorization is not None:
            sent["Authorization"] = authorization
        elif sign:
            path, _, query = target.partition("?")
            sent["Authorization"] = "SharedKey {}:{}".format(
                self.account, shared_key_signature(self.key, method, path, query, sent, self.account))
        if self.ssl_context is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=WAIT, context=self.ssl_context)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=WAIT)
        try:
            connection.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
            for name, value in sent.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()
            return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            connection.close()


def decoded_path(url: str) -> str:
    return unquote(urlsplit(url).path)


# ---- `python -m localbatch` as a child process ---------------------------------------------------
# Shared by the tests that start the emulator the way a user does, crash it, and start it again.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_SCRIPT_NAME = b"launcher.py"  # the emulator runs task programs through children running it


class RunningEmulator:
    """`python -m localbatch --port 0 --location LOCATION ...` as a child process.

    Its stdout is read on one thread (the first line is its URL) and its stderr on another, so a
    chatty emulator never blocks on a full pipe; `stderr` holds what it wrote once it has ended.
    """

    def __init__(self, location: Path, *arguments: str, env: Optional[dict[str, str]] = None,
                 run_as: Sequence[str] = ()):
        """`run_as`: a command that runs the rest as another user (e.g. setpriv with its options)."""
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT), **(env or {})}
        self.process = subprocess.Popen(
            [*run_as, sys.executable, "-m", "localbatch", "--port", "0", "--location", str(location), *arguments],
            cwd=REPOSITORY_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self._stderr_lines: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr_lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr_lines)

    def url(self) -> str:
        """The URL it prints once it listens (fails if it exits first or stays silent for WAIT seconds)."""
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            raise TimeoutError(f"localbatch printed no URL within {WAIT:.0f} s; its stderr:\n{self.stderr}") from None
        match = re.fullmatch(r"localbatch listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, f"unexpected first line {line!r}; stderr:\n{self.stderr}"
        assert int(match.group(2)) > 0
        return match.group(1)

    def finish(self, signum: int) -> int:
        """Send `signum`, wait for the exit, and return the exit code (stderr is complete then)."""
        self.process.send_signal(signum)
        code = self.process.wait(WAIT)
        self._join_readers()
        return code

    def kill(self) -> None:
        """SIGKILL it if it still runs (clean-up; its launchers end on their own when it is gone)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(WAIT)


def command_lines() -> dict[int, str]:
    """Every running process's command line (arguments joined by spaces), by pid."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            found[int(name)] = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
    return found


def process_state(pid: int) -> Optional[str]:
    """The one-letter state in /proc/PID/stat (R, S, D, T, Z, ...), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_alive(pid: int) -> bool:
    """Whether the process runs (a zombie only waits to be reaped: it no longer runs)."""
    return process_state(pid) not in (None, "Z", "X")


def launcher_pids(emulator_pid: int) -> list[int]:
    """The emulator's launcher processes: its children running launcher.py."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if parent == emulator_pid and LAUNCHER_SCRIPT_NAME in command:
            pids.append(int(entry.name))
    return pids


def _stop(pids: Iterable[int], what: str) -> None:
    """SIGSTOP each process and wait until the kernel reports it stopped (or already dead)."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    wait_for(lambda: all(process_state(pid) in (None, "T", "t", "Z", "X") for pid in pids), f"{what} to stop")


def crash_with_launchers(emulator: RunningEmulator) -> list[int]:
    """SIGKILL the emulator and its launchers as one event, as an OOM kill or a power cut would:
    nothing gets to clean up, so task processes outlive them. Returns the launchers' pids.

    Killing them one after the other is not enough: whichever dies first is noticed by the
    others (a launcher kills its programs when the emulator's pipe closes; the emulator kills a
    dead launcher's programs), and they may run before the next SIGKILL lands. So the emulator
    is frozen first (it can then start no new launcher), then its launchers, and only then is
    every one of them killed.
    """
    pid = emulator.process.pid
    _stop([pid], f"the emulator ({pid})")
    launchers = launcher_pids(pid)
    _stop(launchers, f"its launchers {launchers}")
    for launcher in launchers:
        try:
            os.kill(launcher, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(pid, signal.SIGKILL)
    emulator.process.wait(WAIT)
    emulator.kill()  # joins the output readers
    return launchers


def persisted(location: Path, kind: str, key_pattern: str) -> Optional[dict]:
    """An entity as the emulator last wrote it to its state store (read-only), by SQL LIKE on its key."""
    path = location / "state" / "localbatch.sqlite3"
    if not path.exists():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT body FROM entities WHERE kind=? AND key LIKE ?", (kind, key_pattern)).fetchone()
    return json.loads(row[0]) if row else None
