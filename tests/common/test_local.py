"""common.local: start only what is not running, stop only what was started, say clearly what is missing."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

import common.local
from common import REPOSITORY_ROOT
from common.config import load_settings, sample_configuration_path
from common.local import (
    LocalStack,
    LocalStackError,
    azurite_answers,
    local_stack_if_configured,
    localbatch_answers,
    start_azurite,
    start_localbatch,
)
from localbatch.accounts import AZURITE_ACCOUNT_NAME


@pytest.fixture
def some_other_web_server() -> Iterator[str]:
    """An HTTP server that is neither localbatch nor Azurite, on a free port."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        server_version, sys_version = "something-else", ""

        def do_GET(self) -> None:  # noqa: N802 - the name http.server asks for
            self.send_response(404)
            self.end_headers()

        def log_message(self, *_arguments: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_running_emulators_are_reused_and_left_running(local_stack: LocalStack, tmp_path: Path) -> None:
    again = LocalStack(tmp_path, local_stack.batch_endpoint, local_stack.blob_endpoint)

    with again:
        assert again.started_process_names == []
        assert (again.batch_endpoint, again.blob_endpoint) == (local_stack.batch_endpoint, local_stack.blob_endpoint)

    assert localbatch_answers(local_stack.batch_endpoint)
    assert azurite_answers(local_stack.blob_endpoint)


def test_a_stack_stops_exactly_what_it_started(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, "http://127.0.0.1:0", f"http://127.0.0.1:0/{AZURITE_ACCOUNT_NAME}", startup_timeout_seconds=120)

    with stack:
        assert stack.started_process_names == ["Azurite", "localbatch"]
        assert localbatch_answers(stack.batch_endpoint) and azurite_answers(stack.blob_endpoint)
        assert stack.storage_connection_string.endswith(f"BlobEndpoint={stack.blob_endpoint};")

    assert stack.started_process_names == []
    assert not localbatch_answers(stack.batch_endpoint)
    assert not azurite_answers(stack.blob_endpoint)
    assert (tmp_path / "localbatch.log").is_file() and (tmp_path / "azurite").is_dir()


def test_something_else_on_the_batch_port_is_reported(some_other_web_server: str) -> None:
    with pytest.raises(LocalStackError, match=r"something that is not localbatch answers at http://127\.0\.0\.1:\d+"):
        localbatch_answers(some_other_web_server)


def test_something_else_on_the_blob_port_is_reported(some_other_web_server: str) -> None:
    message = r"something that is not Azurite answers at 127\.0\.0\.1:\d+ \(Server: something-else"
    with pytest.raises(LocalStackError, match=message):
        azurite_answers(f"{some_other_web_server}/{AZURITE_ACCOUNT_NAME}")


def test_a_missing_node_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(LocalStackError, match=r"Node\.js is not installed.*install Node\.js 18 or newer"):
        LocalStack(tmp_path, "http://127.0.0.1:0", f"http://127.0.0.1:0/{AZURITE_ACCOUNT_NAME}").start()


def test_a_missing_azurite_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common.local, "REPOSITORY_ROOT", tmp_path)

    with pytest.raises(LocalStackError, match=r"Azurite is not installed in .*: run 'npm ci' in "):
        LocalStack(tmp_path, "http://127.0.0.1:0", f"http://127.0.0.1:0/{AZURITE_ACCOUNT_NAME}").start()


def test_an_emulator_that_exits_while_starting_is_reported_with_its_output(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    with socket.socket() as taken:  # holds the port without ever answering HTTP
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = LocalStack(tmp_path, f"http://127.0.0.1:{port}", local_stack.blob_endpoint)

        with pytest.raises(LocalStackError, match=rf"localbatch exited with code \d+ while starting: .*{port}"):
            stack.start()

    assert stack.started_process_names == []


def test_the_local_stack_is_only_started_when_the_configuration_says_so(free_port: int) -> None:
    azure = load_settings(None, sample_configuration_path("sample1_helloworld.py"), environ={
        "BATCHSAMPLES_LOCAL_START_LOCAL_STACK": "false",
        "BATCHSAMPLES_BATCH_ENDPOINT": f"http://127.0.0.1:{free_port}",
    })

    with local_stack_if_configured(azure) as stack:
        assert stack is None
        assert not localbatch_answers(azure.batch.endpoint)


def test_start_azurite_returns_once_it_answers_and_stop_ends_it(tmp_path: Path) -> None:
    with start_azurite(tmp_path / "azurite") as azurite:
        assert azurite_answers(azurite.blob_endpoint)
        assert azurite.blob_endpoint == f"http://127.0.0.1:{azurite.port}/{AZURITE_ACCOUNT_NAME}"
        assert azurite.connection_string.endswith(f"BlobEndpoint={azurite.blob_endpoint};")

    assert azurite.process.returncode is not None
    assert not azurite_answers(azurite.blob_endpoint)
    assert (tmp_path / "azurite.log").is_file()


def test_start_localbatch_passes_its_arguments_and_kill_ends_it(tmp_path: Path) -> None:
    localbatch = start_localbatch(tmp_path / "localbatch", extra_args=["--debug"])
    try:
        assert localbatch_answers(localbatch.url)
        assert "GET /localbatch/status" in localbatch.log_text()  # what --debug logs
    finally:
        localbatch.kill()

    assert localbatch.process.returncode == -signal.SIGKILL
    assert not localbatch_answers(localbatch.url)


def test_start_localbatch_runs_it_with_the_environment_given(tmp_path: Path) -> None:
    environment = {**os.environ, "LOCALBATCH_ACCOUNTS": "no-key-here"}

    with pytest.raises(LocalStackError, match=r"localbatch exited with code 2 while starting: .*'no-key-here'"):
        start_localbatch(tmp_path / "localbatch", environment=environment)


def test_importing_common_local_does_not_need_aiohttp() -> None:
    """The samples import common.local; run against Azure, they have only requirements.txt (no aiohttp)."""
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "import common.local, common.cli\n"
        "assert 'localbatch' not in sys.modules, sorted(sys.modules)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                               timeout=60)

    assert completed.returncode == 0, completed.stderr
