"""Connection hygiene, with raw sockets: a body that never arrives is answered 408 and closed, a
slow-loris header and an idle keep-alive connection are closed, connections beyond the limits are
refused at once with 503 ServerBusy (so idle connections cannot use up the descriptors), the health
check is answered while pathological requests are in flight, and a download whose client stops
reading neither holds its connection for ever nor delays the server's stop.

Each test starts its own server with small limits given to its constructor, so no test waits for
a production-sized timeout."""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import resource
import select
import socket
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME, LocalBatchServer
from localbatch.connections import ConnectionLimits

from .conftest import fast_timings
from .support import (API_VERSION, WAIT, RawClient, RunningEmulator, batch_client, create_job, create_pool_and_wait,
                      run_task, shared_key_signature, unique_id, wait_for)

LONG = 3600.0  # a limit a test does not exercise: never reached


@contextmanager
def serving(tmp_path: Path, **limits: float) -> Iterator[LocalBatchServer]:
    settings = {"idle_seconds": LONG, "body_seconds": LONG, "send_stall_seconds": LONG, **limits}
    with LocalBatchServer(str(tmp_path / unique_id("lb")), timings=fast_timings(),
                          limits=ConnectionLimits(**settings)) as server:
        yield server


def connect(server: LocalBatchServer, source: Optional[str] = None) -> socket.socket:
    connection = socket.create_connection((server.host, server.port), timeout=WAIT,
                                          source_address=(source, 0) if source else None)
    return connection


def read_until_closed(connection: socket.socket, reset_is_an_end: bool = True) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    received = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            if not reset_is_an_end:
                raise
            return received
        if not chunk:
            return received
        received += chunk


def signed_head_of_post(path: str, declared_length: int) -> bytes:
    """The request line and headers of a signed POST that declares `declared_length` bytes of body."""
    query = f"api-version={API_VERSION}"
    headers = {"ocp-date": email.utils.formatdate(usegmt=True), "Content-Type": "application/json",
               "Content-Length": str(declared_length)}
    headers["Authorization"] = "SharedKey {}:{}".format(WELL_KNOWN_ACCOUNT_NAME, shared_key_signature(
        WELL_KNOWN_ACCOUNT_KEY, "POST", path, query, headers, WELL_KNOWN_ACCOUNT_NAME))
    lines = [f"POST {path}?{query} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_answers(server: LocalBatchServer) -> bool:
    return RawClient(server.url).request("GET", "/localbatch/status", sign=False, api_version=None).status == 200


# ---- timeouts -------------------------------------------------------------------------------------
def test_a_body_declared_but_never_sent_gets_408_and_the_connection_is_closed(tmp_path):
    with serving(tmp_path, body_seconds=0.3, lingering_seconds=0.1) as server, connect(server) as connection:
        connection.sendall(signed_head_of_post("/jobs", 100) + b'{"id": "j')  # 9 of the 100 bytes
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b'"code":"RequestTimeout"' in reply
    assert b"Connection: close" in reply


def test_a_client_that_leaves_before_its_body_has_arrived_is_no_internal_error(tmp_path, caplog):
    with serving(tmp_path) as server:
        with connect(server) as connection:
            connection.sendall(signed_head_of_post("/jobs", 100) + b'{"id": "j')
            wait_for(lambda: server.http_server.requests_count == 1, "the request to be read")
        wait_for(lambda: server.http_server.open_connections == 0, "the server to see the client leave")
        assert status_answers(server)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_a_body_sent_in_time_is_read_as_usual(tmp_path):
    with serving(tmp_path, body_seconds=WAIT) as server:
        assert RawClient(server.url).request("POST", "/jobs", body={
            "id": unique_id("job"), "poolInfo": {"poolId": "p"}}).status == 201


def test_a_header_that_never_ends_is_closed_without_an_answer(tmp_path):
    with serving(tmp_path, idle_seconds=0.3) as server, connect(server) as connection:
        connection.sendall(b"GET /localbatch/status HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
        assert read_until_closed(connection) == b""


def test_an_idle_keep_alive_connection_is_closed(tmp_path):
    # The same timer runs from the connection's opening: 1 s leaves room to send the request first.
    with serving(tmp_path, idle_seconds=1.0) as server, connect(server) as connection:
        connection.sendall(b"GET /localbatch/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = read_until_closed(connection)  # answered, kept alive, then closed once idle
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert b'"status":"ok"' in reply


# ---- how many connections ---------------------------------------------------------------------------
def test_connections_beyond_the_per_client_and_total_limits_are_refused_with_server_busy(tmp_path):
    with serving(tmp_path, max_connections=6, max_connections_per_client=4) as server, ExitStack() as held:
        first_client = [held.enter_context(connect(server, "127.0.0.1")) for _ in range(4)]
        wait_for(lambda: server.http_server.open_connections == 4, "4 connections admitted")
        refused = _refusal(connect(server, "127.0.0.1"))
        assert "one client" in refused
        [held.enter_context(connect(server, "127.0.0.2")) for _ in range(2)]  # another client still has room
        wait_for(lambda: server.http_server.open_connections == 6, "6 connections admitted")
        assert "its limit" in _refusal(connect(server, "127.0.0.3"))
        first_client[0].close()  # one leaves: one more may come
        wait_for(lambda: server.http_server.open_connections == 5, "a connection to be let go")
        assert status_answers(server)


def _refusal(connection: socket.socket) -> str:
    """What a refused connection receives before the server closes it, unprompted (nothing is sent)."""
    with connection:
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b'"code":"ServerBusy"' in body
    return body.decode()


def test_a_thousand_idle_connections_do_not_use_up_the_descriptors(tmp_path):
    _allow_descriptors_for(1000)
    emulator = RunningEmulator(tmp_path / "state", "--max-connections", "50", "--max-connections-per-client", "50")
    try:
        url = emulator.url()
        port = int(url.rsplit(":", 1)[1])
        before = _descriptors(emulator.process.pid)
        with ExitStack() as held:
            sockets = [held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
                       for _ in range(1000)]
            # A refused connection is answered and closed at once; an admitted one stays open, silent.
            answered = wait_for(lambda: _with_something_to_read(sockets), "950 connections to be refused",
                                until=lambda ready: len(ready) == 950)
            assert all(read_until_closed(connection).startswith(b"HTTP/1.1 503 ") for connection in answered)
            assert _descriptors(emulator.process.pid) <= before + 50
        wait_for(lambda: _status_code(url) == 200, "the health check once the connections are gone")
    finally:
        emulator.kill()


def _allow_descriptors_for(connections: int) -> None:
    """This test process holds the client ends: raise its own soft limit of open files if it must."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"this machine allows a process {hard} open files; the test needs {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _with_something_to_read(sockets: list[socket.socket]) -> list[socket.socket]:
    poller = select.poll()
    by_descriptor = {connection.fileno(): connection for connection in sockets}
    for descriptor in by_descriptor:
        poller.register(descriptor, select.POLLIN)
    return [by_descriptor[descriptor] for descriptor, _ in poller.poll(0)]


def _status_code(url: str) -> int:
    try:
        return RawClient(url).request("GET", "/localbatch/status", sign=False, api_version=None).status
    except OSError:
        return 0


# ---- answering while requests misbehave --------------------------------------------------------------
def test_the_health_check_is_answered_while_pathological_requests_are_in_flight(tmp_path):
    with serving(tmp_path) as server, connect(server) as body_never_sent, connect(server) as header_never_ends:
        body_never_sent.sendall(signed_head_of_post("/jobs", 1000))
        header_never_ends.sendall(b"GET /pools HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
        wait_for(lambda: server.http_server.open_connections == 2, "both requests to be in flight")
        assert status_answers(server)
        assert RawClient(server.url).request("GET", "/pools").status == 200


@pytest.fixture(scope="module")
def big_file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBatchServer, str, str]]:
    """A server whose send-stall limit is short, with a completed task that wrote a 64 MiB file."""
    location = tmp_path_factory.mktemp("stall")
    limits = ConnectionLimits(send_stall_seconds=0.3, idle_seconds=LONG, body_seconds=LONG)
    with LocalBatchServer(str(location), timings=fast_timings(), limits=limits) as server:
        with batch_client(server.url) as client:
            pool = unique_id("pool")
            create_pool_and_wait(client, pool, nodes=1)
            job = create_job(client, pool)
            task = run_task(client, job, "/bin/sh -c 'head -c 67108864 /dev/zero > big.bin'")
            assert task.execution_info.exit_code == 0
        yield server, job, task.id


def _start_download_and_stop_reading(server: LocalBatchServer, job: str, task: str) -> socket.socket:
    raw = RawClient(server.url)
    path, query = f"/jobs/{job}/tasks/{task}/files/wd%2Fbig.bin", f"api-version={API_VERSION}"
    headers = {"ocp-date": email.utils.formatdate(usegmt=True)}
    headers["Authorization"] = "SharedKey {}:{}".format(
        raw.account, shared_key_signature(raw.key, "GET", path, query, headers, raw.account))
    connection = connect(server)
    request = [f"GET {path}?{query} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers.items())]
    connection.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
    assert connection.recv(12) == b"HTTP/1.1 200"  # the download has begun; nothing more is read
    return connection


def test_a_download_whose_client_stops_reading_is_dropped(big_file_server):
    server, job, task = big_file_server
    with _start_download_and_stop_reading(server, job, task) as connection:
        wait_for(lambda: server.http_server.open_connections == 0, "the stalled download to be dropped")
        with pytest.raises(ConnectionResetError):  # dropped, not finished: what was still unsent is gone
            read_until_closed(connection, reset_is_an_end=False)
    assert status_answers(server)


def test_stopping_the_server_while_a_download_is_held_open_does_not_wait_for_it(tmp_path):
    location = tmp_path / "held"
    limits = ConnectionLimits(send_stall_seconds=LONG, idle_seconds=LONG, body_seconds=LONG, shutdown_seconds=0.2)
    server = LocalBatchServer(str(location), timings=fast_timings(), limits=limits).start()
    try:
        with batch_client(server.url) as client:
            pool = unique_id("pool")
            create_pool_and_wait(client, pool, nodes=1)
            job = create_job(client, pool)
            task = run_task(client, job, "/bin/sh -c 'head -c 67108864 /dev/zero > big.bin'")
        connection = _start_download_and_stop_reading(server, job, task.id)
    except BaseException:
        server.stop()
        raise
    with connection:
        stopping = threading.Thread(target=server.stop, name="stop", daemon=True)
        stopping.start()
        # aiohttp's own shutdown would wait 60 s for the download; the server's grace is 0.2 s.
        stopping.join(WAIT)
        assert not stopping.is_alive(), f"stop() still waits for the download after {WAIT:.0f} s"


# ---- the SDK and idle closes ----------------------------------------------------------------------
def test_the_sdk_carries_on_after_its_idle_connection_is_closed(tmp_path):
    with serving(tmp_path, idle_seconds=1.0) as server, batch_client(server.url) as client:
        assert list(client.list_pools()) == []
        wait_for(lambda: server.http_server.open_connections == 0, "the idle connection to be closed")
        assert list(client.list_pools()) == []


def test_the_aio_sdk_carries_on_after_its_idle_connection_is_closed(tmp_path):
    from azure.batch.aio import BatchClient as AsyncBatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    async def scenario(server: LocalBatchServer) -> None:
        credential = AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)
        async with AsyncBatchClient(server.url, credential) as client:
            assert [pool async for pool in client.list_pools()] == []
            await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(
                lambda: server.http_server.open_connections == 0, "the idle connection to be closed"))
            assert [pool async for pool in client.list_pools()] == []

    with serving(tmp_path, idle_seconds=1.0) as server:
        asyncio.run(scenario(server))
