"""Resource files against a real Azurite: http_url (blob SAS), storage_container_url with
blob_prefix, auto_storage_container_name, file_mode, failures, and paths that try to escape."""
from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import os
import socket
import threading
from typing import Callable, Iterator

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (BlobSasPermissions, ContainerSasPermissions, generate_blob_sas,
                                generate_container_sas)

from .support import (RawClient, create_job, create_pool_and_wait, read_task_file, run_task, ubuntu_configuration,
                      unique_id, wait_for)


def _expiry() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)


def blob_sas_url(container, blob_name: str) -> str:
    sas = generate_blob_sas(container.account_name, container.container_name, blob_name,
                            account_key=container.credential.account_key,
                            permission=BlobSasPermissions(read=True), expiry=_expiry())
    return f"{container.get_blob_client(blob_name).url}?{sas}"


def container_sas_url(container, permission: ContainerSasPermissions | None = None) -> str:
    sas = generate_container_sas(container.account_name, container.container_name,
                                 account_key=container.credential.account_key,
                                 permission=permission or ContainerSasPermissions(read=True, list=True),
                                 expiry=_expiry())
    return f"{container.url}?{sas}"


@pytest.fixture(scope="module")
def storage_pool(storage_client) -> str:
    pool = unique_id("rfpool")
    create_pool_and_wait(storage_client, pool, nodes=1, task_slots_per_node=4)
    return pool


@pytest.fixture
def job_id(storage_client, storage_pool) -> str:
    return create_job(storage_client, storage_pool)


def test_http_url_resource_file_from_a_blob_sas(storage_client, job_id, container):
    container.upload_blob("data.txt", b"hello from azurite\n")
    task = run_task(storage_client, job_id, "cat inputs/data.txt", resource_files=[
        models.ResourceFile(http_url=blob_sas_url(container, "data.txt"), file_path="inputs/data.txt")])
    assert task.execution_info.exit_code == 0
    assert read_task_file(storage_client, job_id, task.id) == "hello from azurite\n"
    properties = storage_client.get_task_file_properties(job_id, task.id, "wd/inputs/data.txt")
    assert properties.content_length == len(b"hello from azurite\n")
    assert properties.file_mode.endswith("770")  # the service's default mode


def test_storage_container_url_with_blob_prefix_keeps_blob_names_below_file_path(storage_client, job_id, container):
    for name in ("in/a.txt", "in/sub/b.txt", "other/c.txt"):
        container.upload_blob(name, name.encode())
    task = run_task(storage_client, job_id, "/bin/true", resource_files=[
        models.ResourceFile(storage_container_url=container_sas_url(container), blob_prefix="in/", file_path="data")])
    assert task.execution_info.exit_code == 0
    names = {f.name for f in storage_client.list_task_files(job_id, task.id, recursive=True) if not f.is_directory}
    assert {"wd/data/in/a.txt", "wd/data/in/sub/b.txt"} <= names
    assert not any("other" in name for name in names)
    assert b"".join(storage_client.download_task_file(job_id, task.id, "wd/data/in/sub/b.txt")) == b"in/sub/b.txt"


def test_storage_container_url_without_file_path_downloads_into_the_working_directory(storage_client, job_id,
                                                                                        container):
    container.upload_blob("one.txt", b"1")
    container.upload_blob("two.txt", b"2")
    task = run_task(storage_client, job_id, "/bin/bash -c 'cat one.txt two.txt'", resource_files=[
        models.ResourceFile(storage_container_url=container_sas_url(container))])
    assert read_task_file(storage_client, job_id, task.id) == "12"


def test_auto_storage_container_name(storage_client, job_id, container):
    container.upload_blob("auto/input.txt", b"auto storage works\n")
    task = run_task(storage_client, job_id, "cat in/auto/input.txt", resource_files=[
        models.ResourceFile(auto_storage_container_name=container.container_name, file_path="in")])
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info
    assert read_task_file(storage_client, job_id, task.id) == "auto storage works\n"


def test_file_mode_makes_a_script_executable(storage_client, job_id, container):
    container.upload_blob("run.sh", b"#!/bin/sh\necho ran as a script\n")
    task = run_task(storage_client, job_id, "./run.sh", resource_files=[
        models.ResourceFile(http_url=blob_sas_url(container, "run.sh"), file_path="run.sh", file_mode="0755")])
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info
    assert read_task_file(storage_client, job_id, task.id) == "ran as a script\n"
    assert storage_client.get_task_file_properties(job_id, task.id, "wd/run.sh").file_mode.endswith("755")


def test_start_task_resource_files(storage_client, container):
    container.upload_blob("setup.txt", b"node setup data\n")
    pool = unique_id("rfstart")
    [node] = create_pool_and_wait(storage_client, pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/bash -c 'cp setup.txt $AZ_BATCH_NODE_SHARED_DIR/'",
        resource_files=[models.ResourceFile(http_url=blob_sas_url(container, "setup.txt"), file_path="setup.txt")]))
    shared = b"".join(storage_client.download_node_file(pool, node.id, "shared/setup.txt"))
    assert shared == b"node setup data\n"


def test_a_missing_blob_fails_the_task_as_a_user_error_without_leaking_the_sas(storage_client, job_id, container):
    url = blob_sas_url(container, "absent.txt")
    task = run_task(storage_client, job_id, "/bin/true", resource_files=[
        models.ResourceFile(http_url=url, file_path="absent.txt")])
    failure = task.execution_info.failure_info
    assert task.execution_info.result == "failure"
    assert failure.category == "usererror"
    assert failure.code == "BlobNotFound"
    assert "sig=" not in failure.message and url.split("?")[1] not in failure.message
    assert "sig=" not in read_task_file(storage_client, job_id, task.id, "stderr.txt")


def test_a_container_sas_without_list_permission_is_access_denied(storage_client, job_id, container):
    container.upload_blob("x.txt", b"x")
    task = run_task(storage_client, job_id, "/bin/true", resource_files=[
        models.ResourceFile(storage_container_url=container_sas_url(container, ContainerSasPermissions(read=True)))])
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code == "BlobAccessDenied"


# ---- paths that try to escape -------------------------------------------------------------------
@pytest.mark.parametrize("file_path", ["../escape.txt", "a/../../escape.txt", "/tmp/escape.txt", "..\\escape.txt"])
def test_resource_file_paths_may_not_escape_the_working_directory(storage_client, job_id, file_path):
    resource_file = models.ResourceFile(http_url="http://127.0.0.1:9/never", file_path=file_path)
    with pytest.raises(HttpResponseError) as caught:
        storage_client.create_task(job_id, models.BatchTaskCreateOptions(
            id=unique_id("t"), command_line="/bin/true", resource_files=[resource_file]))
    assert caught.value.status_code == 400
    details = {d.code: d.message for d in caught.value.error.details}
    assert details["PropertyName"] == "resourceFiles[0].filePath"


def test_start_task_resource_file_paths_may_not_escape(storage_client):
    with pytest.raises(HttpResponseError) as caught:
        storage_client.create_pool(models.BatchPoolCreateOptions(
            id=unique_id("pool"), vm_size="standard_d2s_v3",
            virtual_machine_configuration=ubuntu_configuration(),
            start_task=models.BatchStartTask(command_line="/bin/true", resource_files=[
                models.ResourceFile(http_url="http://127.0.0.1:9/never", file_path="../../outside")])))
    assert caught.value.status_code == 400
    details = {d.code: d.message for d in caught.value.error.details}
    assert details["PropertyName"] == "startTask.resourceFiles[0].filePath"


def test_escaping_paths_in_a_raw_collection_are_refused_per_item(storage_server, storage_client, job_id):
    raw = RawClient(storage_server.url)
    response = raw.request("POST", f"/jobs/{job_id}/addtaskcollection", body={"value": [
        {"id": "bad", "commandLine": "/bin/true",
         "resourceFiles": [{"httpUrl": "http://127.0.0.1:9/x", "filePath": "../../../../etc/cron.d/x"}]},
        {"id": "good", "commandLine": "/bin/true"}]})
    assert response.status == 200
    results = {r["taskId"]: r for r in response.json()["value"]}
    assert results["bad"]["status"] == "clienterror"
    assert results["bad"]["error"]["code"] == "InvalidPropertyValue"
    assert results["good"]["status"] == "success"


@contextlib.contextmanager
def _serving(body_for_path: Callable[[str], bytes]) -> Iterator[str]:
    """A throwaway HTTP server on a free port that answers every GET with 200 and
    `body_for_path(path)`; yields its base URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = body_for_path(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        thread.join()


@pytest.fixture
def hostile_container():
    """A storage endpoint whose container listing names blobs that climb out of any directory.

    Azure accepts such names; Azurite refuses to store them, so a tiny HTTP server plays the
    part of a storage account that returns them."""
    names = ["fine.txt", "deep/../../../../../../escaped-by-blob.txt", "../escaped-too.txt"]
    listing = ("<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults><Blobs>"
               + "".join(f"<Blob><Name>{name}</Name></Blob>" for name in names)
               + "</Blobs><NextMarker/></EnumerationResults>").encode()

    with _serving(lambda path: listing if "comp=list" in path else b"escaped") as base_url:
        yield f"{base_url}/account/container?sv=2024-08-04&sig=secret"


def test_blob_names_that_climb_out_never_write_outside(storage_server, storage_client, job_id, hostile_container):
    task = run_task(storage_client, job_id, "/bin/true", resource_files=[
        models.ResourceFile(storage_container_url=hostile_container, file_path="in")])
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert "sig=secret" not in task.execution_info.failure_info.message
    root = os.path.dirname(storage_server.location)
    for directory, _, files in os.walk(root):
        assert "escaped-by-blob.txt" not in files and "escaped-too.txt" not in files, directory


# ---- downloads that cannot succeed end the task; they never leave it stuck --------------------
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def not_a_container():
    """An HTTP endpoint that answers 200 with something that is not a blob listing."""
    with _serving(lambda path: b"<html>not a container</html") as base_url:
        yield f"{base_url}/account/container?sig=secret"


@pytest.mark.parametrize("make_resource_file", [
    lambda port, page: models.ResourceFile(storage_container_url=f"http://127.0.0.1:{port}/c?sv=1&sig=secret"),
    lambda port, page: models.ResourceFile(http_url=f"http://127.0.0.1:{port}/c/blob?sig=secret", file_path="x"),
    lambda port, page: models.ResourceFile(storage_container_url=page),
], ids=["container-unreachable", "blob-unreachable", "not-a-container"])
def test_a_failed_download_fails_the_task_and_frees_its_slot(storage_client, job_id, not_a_container,
                                                             make_resource_file):
    task = run_task(storage_client, job_id, "/bin/true",
                    resource_files=[make_resource_file(_closed_port(), not_a_container)])
    assert task.state == "completed"
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert "sig=secret" not in task.execution_info.failure_info.message
    assert run_task(storage_client, job_id, "/bin/true").execution_info.exit_code == 0


def test_a_resource_file_that_cannot_be_written_fails_the_task(storage_client, job_id, container):
    container.upload_blob("data/inner.txt", b"x")
    container.upload_blob("plain.txt", b"y")
    # The container source makes wd/data a directory; the second file wants wd/data to be a file.
    task = run_task(storage_client, job_id, "/bin/true", resource_files=[
        models.ResourceFile(storage_container_url=container_sas_url(container), blob_prefix="data/"),
        models.ResourceFile(http_url=blob_sas_url(container, "plain.txt"), file_path="data")])
    assert task.state == "completed"
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"


def test_a_start_task_whose_download_fails_leaves_the_node_starttaskfailed(storage_client):
    pool = unique_id("rfbroken")
    storage_client.create_pool(models.BatchPoolCreateOptions(
        id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=ubuntu_configuration(),
        start_task=models.BatchStartTask(command_line="/bin/true", resource_files=[
            models.ResourceFile(storage_container_url=f"http://127.0.0.1:{_closed_port()}/c?sig=secret")])))
    node = wait_for(lambda: next((n for n in storage_client.list_nodes(pool) if n.state == "starttaskfailed"), None),
                    "the start task to fail")
    assert node.start_task_info.failure_info.category == "usererror"
    assert "sig=secret" not in node.start_task_info.failure_info.message
