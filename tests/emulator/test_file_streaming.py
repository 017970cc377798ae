"""Task file downloads are streamed: a large file arrives whole and byte-exact, ranges of it are exact,
other requests are answered while it streams, the server's memory does not grow by the file's size,
a file that shrinks or a client that leaves ends the stream cleanly, and a named pipe is refused at
once instead of blocking the server."""
from __future__ import annotations

import email.utils
import hashlib
import http.client
import logging
import os
import shlex
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import ResourceNotFoundError

from .support import (WAIT, RawClient, batch_client, create_job, read_task_file, run_task, shared_key_signature,
                      wait_for)

BIG_SIZE = 64 * 1024 * 1024
# Ranges (start, inclusive end) whose hashes the task computes itself; they cross the server's
# 256 KiB read chunks at odd offsets.
MIDDLE = (30_000_001, 31_000_000)
NEAR_END = (BIG_SIZE - 300_000, BIG_SIZE - 1)
BLOCK = 256 * 1024          # what a downloading client takes per iteration
CALL_TIMEOUT = 15.0         # bound on any single request that must be answered promptly


def _script() -> str:
    def range_hash(first: int, last: int, name: str) -> str:
        return f"tail -c +{first + 1} big.bin | head -c {last - first + 1} | sha256sum > {name}"
    return " && ".join([
        f"head -c {BIG_SIZE} /dev/urandom > big.bin",
        "sha256sum big.bin > big.sha256",
        range_hash(*MIDDLE, "middle.sha256"),
        range_hash(*NEAR_END, "end.sha256"),
        "mkfifo pipe",
        "pwd",
    ])


@pytest.fixture(scope="module")
def big(client, pool_id) -> dict[str, Any]:
    """A completed task whose working directory holds a 64 MiB random file (wd/big.bin), the SHA-256
    of it and of two ranges of it, computed by the task, and a named pipe (wd/pipe)."""
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c " + shlex.quote(_script()), task_id="big")
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info

    def digest(name: str) -> str:
        return read_task_file(client, job_id, "big", f"wd/{name}").split()[0]
    return {"job": job_id, "task": "big", "sha256": digest("big.sha256"), "middle": digest("middle.sha256"),
            "end": digest("end.sha256"), "directory": read_task_file(client, job_id, "big").strip()}


def _bounded(function: Callable[[], Any], what: str, timeout: float = CALL_TIMEOUT) -> Any:
    """Run `function` in a thread; fail (instead of hanging the suite) when it takes over `timeout`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error
    worker = threading.Thread(target=run, name=f"bounded {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        pytest.fail(f"{what} was not answered within {timeout:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _still_serving(client, big) -> None:
    task = _bounded(lambda: client.get_task(big["job"], big["task"], read_timeout=CALL_TIMEOUT), "get_task")
    assert task.id == "big"


def _rss_kib(field: str = "VmRSS") -> Optional[int]:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _raw_get(url: str, path: str) -> http.client.HTTPConnection:
    """Send a signed GET of a file and return the connection, for reading its response by hand."""
    raw = RawClient(url)
    headers = {"ocp-date": email.utils.formatdate(usegmt=True)}
    target = f"{path}?api-version=2025-06-01"
    headers["Authorization"] = "SharedKey {}:{}".format(
        raw.account, shared_key_signature(raw.key, "GET", path, "api-version=2025-06-01", headers, raw.account))
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CALL_TIMEOUT)
    connection.request("GET", target, headers=headers)
    return connection


def _open_descriptors_to(path: str) -> list[str]:
    """This process's descriptors open on `path` (the in-process server runs in this process)."""
    found, path = [], os.path.realpath(path)
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                found.append(name)
        except OSError:
            continue
    return found


# ---- a large file, whole and in ranges ----------------------------------------------------------
def test_a_large_file_downloads_whole_and_exact_without_the_server_holding_it(server, big):
    """Also prints (does not assert) this process's memory around the download: the server runs in
    it, so a server that read the file into memory would show a jump of about the file's size."""
    try:  # reset the peak (VmHWM) to the current RSS, where the kernel allows it
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        peak_resettable = True
    except OSError:
        peak_resettable = False
    before = _rss_kib()
    highest = before
    digest, size, chunks = hashlib.sha256(), 0, 0
    with batch_client(server.url, connection_data_block_size=BLOCK) as downloader:
        for chunk in downloader.download_task_file(big["job"], big["task"], "wd/big.bin", read_timeout=WAIT):
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
            if chunks % 16 == 0:
                highest = max(highest, _rss_kib())
    after = _rss_kib()
    peak = _rss_kib("VmHWM")
    assert size == BIG_SIZE
    assert digest.hexdigest() == big["sha256"]
    print(f"\nRSS of the test process (server + client) downloading {BIG_SIZE // 1024} KiB: "
          f"before {before} KiB, after {after} KiB (+{after - before} KiB), highest sampled {highest} KiB "
          f"(+{highest - before} KiB)" + (f", kernel peak since reset {peak} KiB (+{peak - before} KiB)"
                                           if peak_resettable else ", kernel peak not resettable here"))


@pytest.mark.parametrize("ocp_range, key, length", [
    (f"bytes={MIDDLE[0]}-{MIDDLE[1]}", "middle", MIDDLE[1] - MIDDLE[0] + 1),
    (f"bytes={NEAR_END[0]}-", "end", NEAR_END[1] - NEAR_END[0] + 1),
    (f"bytes=-{NEAR_END[1] - NEAR_END[0] + 1}", "end", NEAR_END[1] - NEAR_END[0] + 1),
    (f"bytes={NEAR_END[0]}-{BIG_SIZE + 10_000}", "end", NEAR_END[1] - NEAR_END[0] + 1),
])
def test_ranges_of_a_large_file_are_exact(client, big, ocp_range, key, length):
    body = b"".join(client.download_task_file(big["job"], big["task"], "wd/big.bin", ocp_range=ocp_range,
                                              read_timeout=WAIT))
    assert len(body) == length
    assert hashlib.sha256(body).hexdigest() == big[key]


def test_a_ranged_download_announces_its_length_and_answers_200(server, big):
    raw = RawClient(server.url)
    response = raw.request("GET", f"/jobs/{big['job']}/tasks/big/files/wd%2Fbig.bin",
                           headers={"ocp-range": f"bytes={MIDDLE[0]}-{MIDDLE[1]}"})
    assert response.status == 200
    assert response.headers["content-length"] == str(MIDDLE[1] - MIDDLE[0] + 1)
    assert "transfer-encoding" not in response.headers
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["ocp-batch-file-isdirectory"] == "False"
    assert hashlib.sha256(response.body).hexdigest() == big["middle"]


# ---- the server stays responsive ------------------------------------------------------------------
def test_other_requests_are_answered_while_a_large_download_is_in_progress(server, client, big):
    started, proceed = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def slow_download() -> None:
        try:
            digest, size = hashlib.sha256(), 0
            with batch_client(server.url, connection_data_block_size=BLOCK) as downloader:
                for chunk in downloader.download_task_file(big["job"], big["task"], "wd/big.bin",
                                                           read_timeout=WAIT):
                    digest.update(chunk)
                    size += len(chunk)
                    if not started.is_set():
                        started.set()
                        proceed.wait(4 * WAIT)  # hold the stream open, half read, while the others ask
                    elif size < 8 * BLOCK:
                        time.sleep(0.01)  # and then go on slowly for a while
            outcome["size"], outcome["sha256"] = size, digest.hexdigest()
        except BaseException as error:
            outcome["error"] = error
        finally:
            started.set()

    downloader = threading.Thread(target=slow_download, name="slow download", daemon=True)
    downloader.start()
    try:
        assert started.wait(WAIT), "the download did not start"
        assert "error" not in outcome, outcome.get("error")
        _still_serving(client, big)
        listed = _bounded(lambda: [f.name for f in client.list_task_files(big["job"], big["task"], recursive=True,
                                                                          read_timeout=CALL_TIMEOUT)],
                          "list_task_files")
        assert "wd/big.bin" in listed
        properties = _bounded(lambda: client.get_task_file_properties(big["job"], big["task"], "wd/big.bin",
                                                                      read_timeout=CALL_TIMEOUT),
                              "get_task_file_properties")
        assert properties.content_length == BIG_SIZE
        small = _bounded(lambda: b"".join(client.download_task_file(big["job"], big["task"], "wd/big.bin",
                                                                    ocp_range="bytes=0-9",
                                                                    read_timeout=CALL_TIMEOUT)),
                         "a second download")
        assert len(small) == 10
        assert downloader.is_alive(), "the large download was meant to be still in progress"
    finally:
        proceed.set()
        downloader.join(WAIT * 2)
    assert not downloader.is_alive(), "the large download did not finish"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["size"] == BIG_SIZE and outcome["sha256"] == big["sha256"]


def test_a_client_that_leaves_mid_download_ends_the_stream(server, client, big, caplog):
    caplog.set_level(logging.WARNING, logger="localbatch")
    path = os.path.join(big["directory"], "big.bin")
    connection = _raw_get(server.url, f"/jobs/{big['job']}/tasks/big/files/wd%2Fbig.bin")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-length") == str(BIG_SIZE)
    assert len(response.read(1024 * 1024)) == 1024 * 1024
    connection.close()  # gone, with most of the file unsent
    # The server notices, stops and closes the file; it does not keep a descriptor on it.
    wait_for(lambda: not _open_descriptors_to(path), "the server to close the file of an abandoned download")
    _still_serving(client, big)
    assert not [r for r in caplog.records if r.name.startswith("localbatch") and r.levelno >= logging.ERROR], \
        "a client leaving is not an error of the server"


def test_a_file_that_shrinks_while_streaming_ends_the_response_short(server, client, pool_id, caplog):
    caplog.set_level(logging.WARNING, logger="localbatch")
    job_id = create_job(client, pool_id)
    size = 32 * 1024 * 1024
    task = run_task(client, job_id, f"/bin/bash -c 'head -c {size} /dev/zero > shrinking.bin && pwd'",
                    task_id="shrinking")
    assert task.execution_info.exit_code == 0
    path = os.path.join(read_task_file(client, job_id, "shrinking").strip(), "shrinking.bin")
    connection = _raw_get(server.url, f"/jobs/{job_id}/tasks/shrinking/files/wd%2Fshrinking.bin")
    try:
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-length") == str(size)
        received = len(response.read(1024 * 1024))
        os.truncate(path, 2 * 1024 * 1024)
        # The announced length can no longer be sent: the body ends short and the connection
        # closes, promptly (CALL_TIMEOUT on the socket), rather than hanging or turning into a 500.
        with pytest.raises(http.client.IncompleteRead) as caught:
            _bounded(response.read, "the rest of a shrinking file")
        received += len(caught.value.partial)
        assert received < size
    finally:
        connection.close()
    wait_for(lambda: not _open_descriptors_to(path), "the server to close the file that shrank")
    assert any("shrank while being sent" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.name.startswith("localbatch") and r.levelno >= logging.ERROR]
    assert _bounded(lambda: client.get_task(job_id, "shrinking", read_timeout=CALL_TIMEOUT), "get_task").id == "shrinking"


# ---- files that are neither regular files nor directories ----------------------------------------
def test_a_named_pipe_is_refused_at_once_and_the_server_keeps_answering(server, client, big):
    """Opening a FIFO for reading blocks until a writer appears; the server must never do that.
    It answers FileNotFound (404) for GET and HEAD, as for a file that is not there."""
    with pytest.raises(ResourceNotFoundError) as caught:
        _bounded(lambda: b"".join(client.download_task_file(big["job"], big["task"], "wd/pipe",
                                                            read_timeout=CALL_TIMEOUT)),
                 "a download of a named pipe")
    assert caught.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        _bounded(lambda: client.get_task_file_properties(big["job"], big["task"], "wd/pipe",
                                                         read_timeout=CALL_TIMEOUT),
                 "the properties of a named pipe")
    response = _bounded(lambda: RawClient(server.url).request("GET", f"/jobs/{big['job']}/tasks/big/files/wd%2Fpipe",
                                                              headers={"ocp-range": "bytes=0-9"}),
                        "a raw GET of a named pipe")
    assert response.status == 404 and response.error_code == "FileNotFound"
    _still_serving(client, big)
    # Listing walks past it (stat only) and it can be deleted like any file.
    names = _bounded(lambda: [f.name for f in client.list_task_files(big["job"], big["task"], recursive=True,
                                                                     read_timeout=CALL_TIMEOUT)],
                     "a listing of a directory holding a named pipe")
    assert "wd/big.bin" in names


def test_a_named_pipe_can_be_deleted(client, pool_id):
    job_id = create_job(client, pool_id)
    run_task(client, job_id, "/usr/bin/mkfifo pipe", task_id="fifo")
    _bounded(lambda: client.delete_task_file(job_id, "fifo", "wd/pipe", read_timeout=CALL_TIMEOUT),
             "deleting a named pipe")
    with pytest.raises(ResourceNotFoundError):
        client.get_task_file_properties(job_id, "fifo", "wd/pipe")


# ---- listings and deletions of many files ---------------------------------------------------------
def test_a_deep_tree_lists_and_deletes_recursively(client, pool_id):
    job_id = create_job(client, pool_id)
    script = "for d in $(seq 1 20); do mkdir -p tree/d$d/e && for f in $(seq 1 25); do : > tree/d$d/e/f$f; done; done"
    task = run_task(client, job_id, "/bin/bash -c " + shlex.quote(script), task_id="tree")
    assert task.execution_info.exit_code == 0
    names = [f.name for f in client.list_task_files(job_id, "tree", recursive=True,
                                                    filter="startswith(name, 'wd/tree/')")]
    assert len(names) == 20 * (2 + 25)
    assert names == sorted(names)
    client.delete_task_file(job_id, "tree", "wd/tree", recursive=True)
    assert not [f for f in client.list_task_files(job_id, "tree", recursive=True) if f.name.startswith("wd/tree")]
