"""Each node's agent log (agent-debug.log, as a Linux Batch node's agent writes it): what the node
agent did there, uploaded by upload_node_logs to a real container in Azurite, through the SDK."""
from __future__ import annotations

import datetime as dt
import os
import re

import pytest
from azure.batch import models
from azure.storage.blob import BlobSasPermissions, ContainerSasPermissions, generate_blob_sas, generate_container_sas

from localbatch import LocalBatchServer, WELL_KNOWN_ACCOUNT_KEY
from localbatch.node.agentlog import AgentLog, scrub
from localbatch.node.blobmount.manager import fuse_unavailable_reason
from localbatch.node.network import random_node_subnet

from .conftest import fast_timings
from .test_mounts import blob_mount, create_mounted_pool
from .support import (LRO_POLLING, batch_client, create_job, pool_options, read_task_file, reboot_options, run_task,
                      terminate_options, unique_id, wait_for, wait_for_nodes)

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z (INFO|WARNING|ERROR) \S")
PASSWORD = "N0de-User-Pa55word!"


def _container_sas_url(container) -> str:
    sas = generate_container_sas(container.account_name, container.container_name,
                                 account_key=container.credential.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return f"{container.url}?{sas}"


def _blob_sas_url(container, name: str) -> str:
    blob = container.get_blob_client(name)
    sas = generate_blob_sas(container.account_name, container.container_name, name,
                            account_key=container.credential.account_key, permission=BlobSasPermissions(read=True),
                            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return f"{blob.url}?{sas}"


def _upload_agent_log(client, pool_id: str, node_id: str, container, start: dt.datetime,
                      end: dt.datetime | None = None) -> str | None:
    """The agent log upload_node_logs put in the container, or None when it uploaded none."""
    result = client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
        container_url=_container_sas_url(container), start_time=start, end_time=end))
    name = f"{result.virtual_directory_name}/agent-debug.log"
    names = {blob.name for blob in container.list_blobs(name_starts_with=result.virtual_directory_name)}
    assert len(names) == result.number_of_files_uploaded
    return container.download_blob(name).readall().decode("utf-8") if name in names else None


def test_the_agent_log_says_what_happened_on_the_node_and_holds_no_secret(client, container):
    container.upload_blob("input.txt", b"an input\n")
    input_url = _blob_sas_url(container, "input.txt")
    missing_url = _blob_sas_url(container, "no-such-blob.txt")
    pool_id = unique_id("agentlog")
    options = pool_options(pool_id, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/cat input.txt", wait_for_success=True,
        resource_files=[models.ResourceFile(http_url=input_url, file_path="input.txt")]))
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    client.create_pool(options)
    node_id = wait_for_nodes(client, pool_id, 1)[0].id
    client.create_node_user(pool_id, node_id, models.BatchNodeUserCreateOptions(name="someone", password=PASSWORD))
    job_id = create_job(client, pool_id)
    failed = run_task(client, job_id, "/bin/bash -c 'echo \"$IDENTITY_HEADER\"; exit 3'", task_id="fails",
                      constraints=models.BatchTaskConstraints(max_task_retry_count=1))
    assert failed.execution_info.exit_code == 3 and failed.execution_info.retry_count == 1
    identity_header = read_task_file(client, job_id, "fails").split("\n")[-2]
    not_downloaded = run_task(client, job_id, "/bin/true", task_id="no-input", resource_files=[
        models.ResourceFile(http_url=missing_url, file_path="x.txt")])
    assert not_downloaded.execution_info.failure_info.code == "BlobNotFound"
    run_task(client, job_id, "/bin/true", task_id="works")

    log = _upload_agent_log(client, pool_id, node_id, container, before)
    lines = log.splitlines()
    assert lines and all(LINE.match(line) for line in lines), log
    expected_in_order = [
        "node state creating -> starting: allocated, address ",
        "SSH server listening on ",
        "node state starting -> waitingforstarttask",
        "start task: preparing (1 resource file(s) to download)",
        "downloaded resource file " + input_url.split("?")[0] + " to input.txt",
        "start task: started, process ",
        "start task: ended, exit code 0",
        "node state waitingforstarttask -> idle",
        f"task {job_id}/fails: given to this node (running)",
        f"task {job_id}/fails: ended, exit code 3, failure usererror FailureExitCode",
        f"task {job_id}/fails: back to active (retryCount 1, requeueCount 0) after result failure, exit code 3",
        f"task {job_id}/fails: completed, result failure, exit code 3, failure usererror FailureExitCode: ",
        f"task {job_id}/no-input: given to this node (preparing)",
        f"task {job_id}/no-input: preparing (1 resource file(s) to download)",
        f"task {job_id}/no-input: ended, failure usererror BlobNotFound: Could not download ",
        f"task {job_id}/no-input: completed, result failure, failure usererror BlobNotFound",
        f"task {job_id}/works: given to this node (running)",
        f"task {job_id}/works: completed, result success, exit code 0",
    ]
    position = 0
    for expected in expected_in_order:
        found = next((index for index in range(position, len(lines)) if expected in lines[index]), None)
        assert found is not None, f"{expected!r} not after line {position} of:\n{log}"
        position = found + 1
    for secret in (input_url.split("sig=")[1].split("&")[0], missing_url.split("sig=")[1].split("&")[0],
                   container.credential.account_key, WELL_KNOWN_ACCOUNT_KEY, PASSWORD, identity_header):
        assert secret and secret not in log
    assert "sig=" not in log

    # The time range is honoured line by line: nothing from after the end, nothing before the start.
    first_task_time = dt.datetime.fromisoformat(
        next(line for line in lines if "/fails: given to this node" in line).split(" ")[0][:26] + "+00:00")
    early = _upload_agent_log(client, pool_id, node_id, container, before, first_task_time - dt.timedelta(microseconds=1))
    assert "node state creating -> starting" in early and "/fails" not in early
    late = _upload_agent_log(client, pool_id, node_id, container, first_task_time)
    assert "/fails: given to this node" in late and "creating -> starting" not in late
    assert _upload_agent_log(client, pool_id, node_id, container, before, before + dt.timedelta(seconds=1)) is None


def test_preparation_release_and_a_failed_start_task_are_logged(client, container):
    pool_id = unique_id("agentlog-prep")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    client.create_pool(pool_options(pool_id, nodes=1))
    node_id = wait_for_nodes(client, pool_id, 1)[0].id
    job_id = create_job(client, pool_id,
                        job_preparation_task=models.BatchJobPreparationTask(id="prep", command_line="/bin/true"),
                        job_release_task=models.BatchJobReleaseTask(id="release", command_line="/bin/false"))
    run_task(client, job_id, "/bin/true", task_id="work")
    client.begin_terminate_job(job_id, terminate_options(), polling_interval=LRO_POLLING).result()
    wait_for(lambda: client.get_job(job_id), "the job to complete", until=lambda job: job.state == "completed")
    log = _upload_agent_log(client, pool_id, node_id, container, start)
    assert f"INFO job preparation task prep of job {job_id}: ended, exit code 0" in log
    assert log.index(f"preparation task prep of job {job_id}: ended") < log.index(f"task {job_id}/work: started")
    assert f"WARNING job release task release of job {job_id}: ended, exit code 1, failure usererror FailureExitCode" in log

    failing = unique_id("agentlog-start")
    client.create_pool(pool_options(failing, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/bash -c 'exit 7'", wait_for_success=True)))
    failed_node = wait_for_nodes(client, failing, 1, states=("starttaskfailed",))[0].id
    log = _upload_agent_log(client, failing, failed_node, container, start)
    assert "WARNING start task: ended, exit code 7, failure usererror FailureExitCode" in log
    assert ("WARNING node state waitingforstarttask -> starttaskfailed: start task failed after 0 retries, "
            "result failure, exit code 7, failure usererror FailureExitCode") in log


def test_a_multi_instance_tasks_coordination_command_is_logged_on_each_node(client, container):
    pool_id = unique_id("agentlog-mi")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    client.create_pool(pool_options(pool_id, nodes=2, enable_inter_node_communication=True))
    node_ids = [node.id for node in wait_for_nodes(client, pool_id, 2)]
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/true", task_id="mpi", multi_instance_settings=models.MultiInstanceSettings(
        number_of_instances=2, coordination_command_line="/bin/true"))
    assert task.execution_info.result == "success"
    logs = [_upload_agent_log(client, pool_id, node_id, container, start) for node_id in node_ids]
    assert all(f"coordination command of task {job_id}/mpi (instance " in log for log in logs)
    assert sum(f"INFO task {job_id}/mpi: ended, exit code 0" in log for log in logs) == 1  # on the master


@pytest.mark.skipif(fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason()))
def test_a_blob_mount_is_logged_without_its_key(storage_client, blob_storage, container):
    pool_id = unique_id("agentlog-mount")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    node_id = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, container.container_name)])[0].id
    log = _upload_agent_log(storage_client, pool_id, node_id, container, start)
    assert "INFO 1 blob container(s) mounted under fsmounts/" in log
    assert blob_storage.account_key not in log and "sig=" not in log


def test_the_agent_log_is_not_among_the_node_files(client, pool_id):
    node_id = next(iter(client.list_nodes(pool_id))).id
    names = [file.name for file in client.list_node_files(pool_id, node_id, recursive=True)]
    assert names and not any("agent-debug" in name for name in names)


def test_reboot_and_reimage_are_logged_and_the_log_outlives_a_reimage(server, client, container):
    pool_id = unique_id("agentlog-reimage")
    client.create_pool(pool_options(pool_id, nodes=1))
    node_id = wait_for_nodes(client, pool_id, 1)[0].id
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    client.begin_reboot_node(pool_id, node_id, reboot_options(), polling_interval=LRO_POLLING).result()
    wait_for_nodes(client, pool_id, 1)
    client.begin_reimage_node(pool_id, node_id, models._models.BatchNodeReimageOptions(  # pylint: disable=protected-access
        node_reimage_option="requeue"), polling_interval=LRO_POLLING).result()
    wait_for_nodes(client, pool_id, 1)
    log = _upload_agent_log(client, pool_id, node_id, container, start)
    assert "node state idle -> rebooting: rebooting" in log and "SSH server and NAT frontends stopped" in log
    assert "node state idle -> reimaging: reimaging (a fresh disk" in log
    assert log.index("-> reimaging") < log.rindex("node state reimaging -> idle")


def test_the_agent_log_survives_a_restart_and_goes_with_its_node(tmp_path, blob_storage):
    location = str(tmp_path / "localbatch")
    subnet = random_node_subnet()
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    container = blob_storage.blob_service().create_container(unique_id("c").lower())
    try:
        with LocalBatchServer(location, timings=fast_timings(), node_subnet=subnet) as first, \
                batch_client(first.url) as client:
            client.create_pool(pool_options("kept", nodes=2))
            node_id = wait_for_nodes(client, "kept", 2)[0].id
            job_id = create_job(client, "kept")
            run_task(client, job_id, "/bin/true", task_id="before-restart")
        with LocalBatchServer(location, timings=fast_timings(), node_subnet=subnet) as second, \
                batch_client(second.url) as client:
            wait_for_nodes(client, "kept", 2)
            log = _upload_agent_log(client, "kept", node_id, container, start)
            assert "node state creating -> starting" in log
            assert "the node agent starts again: localbatch restarted" in log
            assert log.index("creating -> starting") < log.index("localbatch restarted")
            log_file = second.service.context.agent.layout.agent_log("kept", node_id)
            assert os.path.isfile(log_file)
            client.begin_remove_nodes("kept", models.BatchNodeRemoveOptions(node_ids=[node_id]),
                                      polling_interval=LRO_POLLING).result()
            wait_for(lambda: node_id not in {n.id for n in client.list_nodes("kept")} or None, "the node to be removed")
            wait_for(lambda: not os.path.exists(os.path.dirname(os.path.dirname(log_file))) or None,
                     "the removed node's agent log to be deleted")
    finally:
        container.delete_container()


def test_the_log_is_bounded_and_keeps_the_newest_lines(tmp_path):
    log = AgentLog(lambda pool_id, node_id: str(tmp_path / pool_id / node_id / "agent-debug.log"), max_bytes=2000)
    for index in range(300):
        log.write("pool", "node", f"event {index}", create=True)
    path = tmp_path / "pool" / "node" / "agent-debug.log"
    assert sorted(os.listdir(path.parent)) == ["agent-debug.log", "agent-debug.log.1"]
    assert path.stat().st_size <= 2000 and (path.parent / "agent-debug.log.1").stat().st_size <= 2000
    kept = log.lines_between("pool", "node", dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1), None)
    events = [int(line.split(b" event ")[1]) for line in kept.splitlines()]
    assert events[-1] == 299 and events == list(range(events[0], 300)) and events[0] > 0
    # A node whose log is gone (removed) gets no new one from anything but its own state changes.
    log.write("pool", "gone", "a late event")
    assert not (tmp_path / "pool" / "gone").exists()


def test_anything_that_looks_like_a_secret_is_scrubbed():
    assert scrub("from https://a.blob/c/b?sv=2025&sig=abc%2Bdef to x") == "from https://a.blob/c/b?<query removed> to x"
    assert "abc" not in scrub("sig=abc&se=1") and "tok" not in scrub("Authorization: Bearer tok.en")
    assert scrub("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl") == "<token removed>"
    assert WELL_KNOWN_ACCOUNT_KEY not in scrub(f"key {WELL_KNOWN_ACCOUNT_KEY}")
    assert scrub("two\nlines") == "two lines"
