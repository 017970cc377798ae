"""What get_node shows of a node's life: recentTasks (tasks and multi-instance subtasks, bounded,
durable, $select), and what a reimage takes away (node users) and keeps; sync and aio clients."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from localbatch import LocalBatchServer
from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from localbatch.domain.recenttasks import RECENT_TASKS_LIMIT

from .conftest import fast_timings
from .support import (LRO_POLLING, batch_client, create_job, create_pool_and_wait, reboot_options, run_task, unique_id,
                      wait_for, wait_for_nodes, wait_for_task)


def _recent(client, pool_id: str, node_id: str) -> list[models.BatchTaskInfo]:
    return client.get_node(pool_id, node_id).recent_tasks or []


def test_a_new_node_has_no_recent_tasks_and_a_task_appears_running_then_completed(client, tmp_path):
    pool = unique_id("recent")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    assert node.recent_tasks is None  # absent until a task has run on the node, as on Azure
    job_id = create_job(client, pool)
    gate = tmp_path / "gate"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="gated", command_line=f"/bin/bash -c 'while [ ! -e {gate} ]; do sleep 0.02; done; exit 7'"))
    running = wait_for(lambda: [t for t in _recent(client, pool, node.id) if t.task_state == "running"] or None,
                       "the node to list its running task")
    [entry] = running
    assert (entry.job_id, entry.task_id, entry.subtask_id) == (job_id, "gated", None)
    assert entry.task_url.endswith(f"/jobs/{job_id}/tasks/gated")
    assert entry.execution_info.start_time is not None and entry.execution_info.end_time is None
    gate.touch()
    wait_for_task(client, job_id, "gated")
    [entry] = _recent(client, pool, node.id)
    assert entry.task_state == "completed"
    info = entry.execution_info
    assert (info.exit_code, info.result, info.failure_info.code) == (7, "failure", "FailureExitCode")
    assert info.end_time is not None and (info.retry_count, info.requeue_count) == (0, 0)
    assert info.container_info is None  # not a container task


def test_recent_tasks_are_bounded_and_run_from_the_least_to_the_most_recent(client):
    pool = unique_id("recentbound")
    [node] = create_pool_and_wait(client, pool, nodes=1, task_slots_per_node=4)
    job_id = create_job(client, pool)
    count = RECENT_TASKS_LIMIT + 3
    ids = [f"t{index:02d}" for index in range(count)]
    for task_id in ids:  # one after the other, so the order of their ends is known
        run_task(client, job_id, "/bin/true", task_id=task_id)
    recent = _recent(client, pool, node.id)
    assert [entry.task_id for entry in recent] == ids[-RECENT_TASKS_LIMIT:]
    assert all(entry.task_state == "completed" and entry.execution_info.exit_code == 0 for entry in recent)
    assert client.get_node(pool, node.id).total_tasks_run == count  # the counter is not bounded


def test_select_takes_recent_tasks_like_any_other_property(client, raw):
    pool = unique_id("recentselect")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    run_task(client, job_id, "/bin/true", task_id="selected")
    only = client.get_node(pool, node.id, select=["id", "recentTasks"])
    assert only.id == node.id and only.state is None and [t.task_id for t in only.recent_tasks] == ["selected"]
    assert client.get_node(pool, node.id, select=["id", "state"]).recent_tasks is None
    body = raw.request("GET", f"/pools/{pool}/nodes/{node.id}?$select=recentTasks").json()
    assert set(body) - {"odata.metadata"} == {"recentTasks"}
    assert set(body["recentTasks"][0]) == {"taskUrl", "jobId", "taskId", "taskState", "executionInfo"}


def test_each_node_of_a_multi_instance_task_lists_the_task_or_its_subtask(client):
    pool = unique_id("recentmpi")
    create_pool_and_wait(client, pool, nodes=2, enable_inter_node_communication=True)
    job_id = create_job(client, pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=2, coordination_command_line="/bin/true")))
    task = wait_for_task(client, job_id, "mpi")
    [subtask] = client.list_subtasks(job_id, "mpi")
    master = _recent(client, pool, task.node_info.node_id)
    other = _recent(client, pool, subtask.node_info.node_id)
    assert [(t.task_id, t.subtask_id, t.task_state) for t in master] == [("mpi", None, "completed")]
    assert [(t.task_id, t.subtask_id, t.task_state) for t in other] == [("mpi", 1, "completed")]
    assert other[0].execution_info.exit_code == 0 and other[0].execution_info.result == "success"


def test_recent_tasks_survive_a_restart(tmp_path):
    location = tmp_path / "state"
    with LocalBatchServer(str(location), timings=fast_timings()) as first:
        with batch_client(first.url) as client:
            [node] = create_pool_and_wait(client, "kept", nodes=1)
            job_id = create_job(client, "kept", "kept-job")
            run_task(client, job_id, "/bin/bash -c 'exit 2'", task_id="before")
    with LocalBatchServer(str(location), timings=fast_timings()) as second:
        with batch_client(second.url) as client:
            [entry] = _recent(client, "kept", node.id)
            assert (entry.task_id, entry.task_state, entry.execution_info.exit_code) == ("before", "completed", 2)
            assert entry.task_url.startswith(second.url)  # the URL is the one this server answers on


def test_the_aio_client_reads_recent_tasks(server, client):
    pool = unique_id("recentaio")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    run_task(client, job_id, "/bin/true", task_id="aio")

    async def get() -> models.BatchNode:
        async with AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                        WELL_KNOWN_ACCOUNT_KEY)) as batch:
            return await batch.get_node(pool, node.id)
    fetched = asyncio.run(get())
    assert [(t.job_id, t.task_id, t.task_state) for t in fetched.recent_tasks] == [(job_id, "aio", "completed")]


# ---- reimage: a fresh OS disk ------------------------------------------------------------------------
def test_a_reimage_removes_the_node_users_and_keeps_the_recent_tasks(client):
    pool = unique_id("reimageusers")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    run_task(client, job_id, "/bin/true", task_id="before")
    client.create_node_user(pool, node.id, models.BatchNodeUserCreateOptions(name="alice", password="P4ssw0rd!"))
    client.begin_reimage_node(pool, node.id, models._models.BatchNodeReimageOptions(node_reimage_option="requeue"),
                              polling_interval=LRO_POLLING).result()
    [reimaged] = wait_for_nodes(client, pool, 1)
    assert reimaged.last_boot_time > node.last_boot_time
    # The user lived on the OS disk: it is gone, and the name can be given out again.
    with pytest.raises(ResourceNotFoundError) as caught:
        client.delete_node_user(pool, node.id, "alice")
    assert caught.value.error.code == "NodeUserNotFound"
    client.create_node_user(pool, node.id, models.BatchNodeUserCreateOptions(name="alice", password="An0ther!pw"))
    # recentTasks counts what ran since the node joined the pool, which a reimage does not change.
    assert [t.task_id for t in reimaged.recent_tasks] == ["before"]


def test_a_reboot_keeps_the_node_users(client):
    pool = unique_id("rebootusers")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    client.create_node_user(pool, node.id, models.BatchNodeUserCreateOptions(name="bob", password="P4ssw0rd!"))
    client.begin_reboot_node(pool, node.id, reboot_options(), polling_interval=LRO_POLLING).result()
    wait_for_nodes(client, pool, 1)
    client.delete_node_user(pool, node.id, "bob")  # still there: a reboot keeps the disk


# ---- get_node field by field ---------------------------------------------------------------------------
def test_get_node_shows_what_a_booted_node_reports_and_nothing_it_cannot(client, raw):
    pool = unique_id("nodefields")
    [node] = create_pool_and_wait(client, pool, nodes=1, start_task=models.BatchStartTask(command_line="/bin/true"))
    body = raw.request("GET", f"/pools/{pool}/nodes/{node.id}").json()
    assert set(body) == {
        "odata.metadata", "id", "url", "state", "schedulingState", "stateTransitionTime", "allocationTime",
        "lastBootTime", "ipAddress", "affinityId", "vmSize", "totalTasksRun", "totalTasksSucceeded",
        "runningTasksCount", "runningTaskSlotsCount", "isDedicated", "endpointConfiguration", "virtualMachineInfo",
        "nodeAgentInfo", "startTask", "startTaskInfo"}
    # The start task as the service applied it, with its defaults.
    assert body["startTask"] == {"commandLine": "/bin/true", "maxTaskRetryCount": 0, "waitForSuccess": True}
    assert body["nodeAgentInfo"]["lastUpdateTime"] == body["lastBootTime"]
    assert body["virtualMachineInfo"]["imageReference"]["exactVersion"]
    assert "scaleSetVmResourceId" not in body["virtualMachineInfo"]  # no scale set behind a local node


def test_a_node_reimaged_after_its_pool_lost_the_start_task_shows_none(client):
    pool = unique_id("nostart")
    [node] = create_pool_and_wait(client, pool, nodes=1, start_task=models.BatchStartTask(command_line="/bin/true"))
    assert node.start_task.command_line == "/bin/true" and node.start_task_info.state == "completed"
    client.replace_pool_properties(pool, models.BatchPoolReplaceOptions(metadata=[], application_package_references=[]))
    client.begin_reimage_node(pool, node.id, models._models.BatchNodeReimageOptions(node_reimage_option="requeue"),
                              polling_interval=LRO_POLLING).result()
    [reimaged] = wait_for_nodes(client, pool, 1)
    assert reimaged.last_boot_time > node.last_boot_time
    assert reimaged.start_task is None and reimaged.start_task_info is None
