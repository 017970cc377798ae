"""The issue's "done when" script, as a test: only the public SDK, a fresh server, real Azurite.

A pool whose start task downloads a blob through a SAS URL, 500 tasks added with create_tasks,
waited for with list_tasks + $filter, every stdout read with download_task_file, task counts,
then terminate and delete the job and the pool. With a wrong key the same script fails at its
first call with a clear AuthenticationFailed and leaves nothing behind.
"""
from __future__ import annotations

import datetime as dt

import pytest
from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, generate_blob_sas

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME, LocalBatchServer
from tests.waiting import wait_for

from .conftest import fast_timings

TASK_COUNT = 500
DEADLINE_SECONDS = 300
POLL_SECONDS = 0.2


def run_script(client: BatchClient, input_sas_url: str, pool_id: str, job_id: str) -> dict:
    """What a user would write; returns what the test checks."""
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=2, task_slots_per_node=4,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(
                publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04"),
        start_task=models.BatchStartTask(
            command_line="/bin/bash -c 'cp input.txt $AZ_BATCH_NODE_SHARED_DIR/input.txt'",
            resource_files=[models.ResourceFile(http_url=input_sas_url, file_path="input.txt")],
            wait_for_success=True)))
    nodes = wait_for(lambda: (n := list(client.list_nodes(pool_id))) and len(n) == 2
                     and all(node.state == "idle" for node in n) and n, "two idle nodes",
                     DEADLINE_SECONDS, poll=POLL_SECONDS)

    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    tasks = [models.BatchTaskCreateOptions(
        id=f"task{n:03d}",
        command_line="/bin/bash -c 'echo $AZ_BATCH_TASK_ID; cat $AZ_BATCH_NODE_SHARED_DIR/input.txt'")
        for n in range(TASK_COUNT)]
    added = client.create_tasks(job_id, tasks, max_concurrency=4)

    wait_for(lambda: not list(client.list_tasks(job_id, filter="state eq 'active' or state eq 'running' "
                                                              "or state eq 'preparing'", select=["id", "state"])),
             "every task to complete", DEADLINE_SECONDS, poll=POLL_SECONDS)
    completed = list(client.list_tasks(job_id, filter="state eq 'completed'", select=["id", "executionInfo"]))
    outputs = {task.id: b"".join(client.download_task_file(job_id, task.id, "stdout.txt")).decode()
               for task in completed}
    counts = client.get_job_task_counts(job_id)

    client.begin_terminate_job(job_id, options=models._models.BatchJobTerminateOptions(  # see support.py
        termination_reason="done"), polling_interval=POLL_SECONDS).result()
    terminated_state = client.get_job(job_id).state
    client.begin_delete_job(job_id, polling_interval=POLL_SECONDS).result()
    client.begin_delete_pool(pool_id, polling_interval=POLL_SECONDS).result()
    return {"nodes": nodes, "added": added, "completed": completed, "outputs": outputs, "counts": counts,
            "terminated_state": terminated_state}


@pytest.fixture
def input_blob_sas_url(container) -> str:
    container.upload_blob("input.txt", b"input through a SAS URL\n")
    sas = generate_blob_sas(container.account_name, container.container_name, "input.txt",
                            account_key=container.credential.account_key, permission=BlobSasPermissions(read=True),
                            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return f"{container.get_blob_client('input.txt').url}?{sas}"


@pytest.fixture
def fresh_server(tmp_path):
    with LocalBatchServer(str(tmp_path / "localbatch"), timings=fast_timings()) as server:
        yield server


def test_done_when_script_runs_end_to_end(fresh_server, input_blob_sas_url):
    with BatchClient(fresh_server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)) \
            as client:
        result = run_script(client, input_blob_sas_url, "donewhen-pool", "donewhen-job")
        assert len(result["nodes"]) == 2
        assert len(result["added"].result_values) == TASK_COUNT
        assert all(item.status == "success" for item in result["added"].result_values)
        assert len(result["completed"]) == TASK_COUNT
        assert all(task.execution_info.exit_code == 0 for task in result["completed"])
        assert result["outputs"] == {f"task{n:03d}": f"task{n:03d}\ninput through a SAS URL\n"
                                     for n in range(TASK_COUNT)}
        counts = result["counts"]
        assert (counts.task_counts.active, counts.task_counts.running, counts.task_counts.completed,
                counts.task_counts.succeeded, counts.task_counts.failed) == (0, 0, TASK_COUNT, TASK_COUNT, 0)
        assert counts.task_slot_counts.completed == TASK_COUNT
        assert result["terminated_state"] == "completed"
        with pytest.raises(ResourceNotFoundError):
            client.get_job("donewhen-job")
        with pytest.raises(ResourceNotFoundError):
            client.get_pool("donewhen-pool")
        assert list(client.list_pools()) == [] and list(client.list_jobs()) == []


def test_done_when_script_with_a_wrong_key_fails_clearly_and_creates_nothing(fresh_server, input_blob_sas_url):
    wrong_key = "d3Jvbmcga2V5IGZvciB0aGUgbG9jYWxiYXRjaCBhY2NvdW50IQ=="
    with BatchClient(fresh_server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, wrong_key)) as wrong:
        with pytest.raises(HttpResponseError) as caught:
            run_script(wrong, input_blob_sas_url, "wrongkey-pool", "wrongkey-job")
    error = caught.value
    assert error.status_code == 403
    assert error.error.code == "AuthenticationFailed"
    assert "Server failed to authenticate the request" in error.error.message
    assert any("signature" in detail.message for detail in error.error.details)
    assert wrong_key not in str(error)
    with BatchClient(fresh_server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)) \
            as right:
        assert list(right.list_pools()) == []
