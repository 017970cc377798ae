"""Job preparation and release tasks: once per node before the job's first task there, release
at the job's end, waitForSuccess, rerunOnNodeRebootAfterSuccess, the status list, and the errors."""
from __future__ import annotations

import asyncio
import os
import datetime as dt

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .support import (LRO_POLLING, create_job, create_pool_and_wait, read_task_file, reboot_options,
                      terminate_options, unique_id, wait_for, wait_for_all_tasks, wait_for_nodes, wait_for_task)


def _shell(script: str) -> str:
    return f"/bin/bash -c '{script}'"


def _gated(gate, then: str = "true") -> str:
    return _shell(f"while [ ! -e {gate} ]; do sleep 0.02; done; {then}")


def _preparation(command_line: str, **extra) -> models.BatchJobPreparationTask:
    return models.BatchJobPreparationTask(command_line=command_line, **extra)


def _tasks(count: int, command_line: str = "/bin/true") -> list[models.BatchTaskCreateOptions]:
    return [models.BatchTaskCreateOptions(id=f"t{i}", command_line=command_line) for i in range(count)]


def _statuses(client, job_id: str) -> dict[str, models.BatchJobPreparationAndReleaseTaskStatus]:
    return {status.node_id: status for status in client.list_job_preparation_and_release_task_status(job_id)}


def _node_text(client, pool_id: str, node_id: str, path: str) -> str:
    return b"".join(client.download_node_file(pool_id, node_id, path)).decode("utf-8")


def _job_state(client, job_id: str, state: str) -> models.BatchJob:
    return wait_for(lambda: (lambda job: job if job.state == state else None)(client.get_job(job_id)),
                    f"job {job_id} {state}")


def test_the_job_reports_its_preparation_and_release_tasks_with_defaults(client, pool_id):
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"),
                        job_release_task=models.BatchJobReleaseTask(command_line="/bin/true"))
    job = client.get_job(job_id)
    assert job.job_preparation_task.id == "jobpreparation"
    assert job.job_preparation_task.wait_for_success is True
    assert job.job_preparation_task.rerun_on_node_reboot_after_success is True
    assert job.job_preparation_task.constraints.max_task_retry_count == 0
    assert job.job_release_task.id == "jobrelease"
    assert job.job_release_task.max_wall_clock_time == dt.timedelta(minutes=15)
    assert job.job_release_task.retention_time == dt.timedelta(days=7)
    assert list(client.list_job_preparation_and_release_task_status(job_id)) == []  # nothing ran yet


def test_preparation_runs_once_per_node_before_the_jobs_tasks(client, pool_id):
    job_id = create_job(client, pool_id, job_preparation_task=_preparation(_shell(
        f"echo prepared >> $AZ_BATCH_NODE_SHARED_DIR/{job_id_marker()}; echo ready > ready.txt")))
    client.create_tasks(job_id, _tasks(8, _shell(
        'cat "$AZ_BATCH_JOB_PREP_WORKING_DIR/ready.txt"; echo "$AZ_BATCH_JOB_PREP_DIR"')))
    wait_for_all_tasks(client, job_id)
    statuses = _statuses(client, job_id)
    used_nodes = {client.get_task(job_id, f"t{i}").node_info.node_id for i in range(8)}
    assert set(statuses) == used_nodes
    for node_id, status in statuses.items():
        info = status.job_preparation_task_execution_info
        assert (status.pool_id, info.state, info.exit_code, info.result, info.retry_count) == (
            pool_id, "completed", 0, "success", 0)
        assert info.task_root_directory == f"workitems/{job_id}/job-1/jobpreparation"
        assert status.node_url.endswith(f"/pools/{pool_id}/nodes/{node_id}")
        assert info.task_root_directory_url == f"{status.node_url}/files/{info.task_root_directory}"
        assert status.job_release_task_execution_info is None
        assert _node_text(client, pool_id, node_id, f"shared/{job_id_marker()}") == "prepared\n"
        assert _node_text(client, pool_id, node_id, f"{info.task_root_directory}/wd/ready.txt") == "ready\n"
    for i in range(8):
        task = client.get_task(job_id, f"t{i}")
        output = read_task_file(client, job_id, task.id)
        assert output.startswith("ready\n")
        assert output.rstrip().endswith(f"workitems/{job_id}/job-1/jobpreparation")
        prepared = statuses[task.node_info.node_id].job_preparation_task_execution_info.end_time
        assert task.execution_info.end_time >= prepared


_MARKER = unique_id("prep-marker")


def job_id_marker() -> str:
    """A file name unique to this module's run, for the preparation task to count itself in."""
    return _MARKER


def test_a_task_waits_in_preparing_while_the_preparation_task_runs(client, pool_id, tmp_path):
    gate = tmp_path / "gate"
    job_id = create_job(client, pool_id, job_preparation_task=_preparation(_gated(gate)))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    try:
        task = wait_for_task(client, job_id, "t", states=("preparing",))
        status = _statuses(client, job_id)[task.node_info.node_id]
        assert status.job_preparation_task_execution_info.state == "running"
        assert status.job_preparation_task_execution_info.end_time is None
    finally:
        gate.touch()
    assert wait_for_task(client, job_id, "t").execution_info.result == "success"


def test_a_failed_preparation_task_keeps_the_jobs_tasks_off_the_node(client, tmp_path):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=2)
    bad_node = next(iter(client.list_nodes(pool_id))).id
    # It fails on one node only (retried once there), and succeeds on the other.
    job_id = create_job(client, pool_id, job_preparation_task=_preparation(
        _shell(f'[ "$AZ_BATCH_NODE_ID" != "{bad_node}" ] || exit 9'),
        constraints=models.BatchTaskConstraints(max_task_retry_count=1)))
    client.create_tasks(job_id, _tasks(6))
    wait_for_all_tasks(client, job_id)
    assert {client.get_task(job_id, f"t{i}").node_info.node_id for i in range(6)} == set(_statuses(client, job_id)) - {bad_node}
    failed = _statuses(client, job_id)[bad_node].job_preparation_task_execution_info
    assert (failed.state, failed.result, failed.exit_code, failed.retry_count) == ("completed", "failure", 9, 1)
    assert failed.failure_info.code == "FailureExitCode"
    # A task given affinity to that node runs elsewhere: the node takes no task of this job.
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="pinned", command_line="/bin/true",
        affinity_info=models.BatchAffinityInfo(affinity_id=client.get_node(pool_id, bad_node).affinity_id)))
    assert wait_for_task(client, job_id, "pinned").node_info.node_id != bad_node
    client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()


def test_without_wait_for_success_tasks_run_even_if_preparation_fails(client):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=1)
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/false", wait_for_success=False))
    client.create_tasks(job_id, _tasks(3))
    wait_for_all_tasks(client, job_id)
    assert all(client.get_task(job_id, f"t{i}").execution_info.result == "success" for i in range(3))
    [status] = _statuses(client, job_id).values()
    assert status.job_preparation_task_execution_info.result == "failure"
    client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()


def test_release_runs_at_terminate_and_the_job_stays_terminating_until_it_ends(client, pool_id, tmp_path):
    gate = tmp_path / "gate"
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"),
                        job_release_task=models.BatchJobReleaseTask(command_line=_gated(
                            gate, 'echo "released in $AZ_BATCH_JOB_PREP_DIR" > $AZ_BATCH_TASK_DIR/../released.txt')))
    client.create_tasks(job_id, _tasks(4))
    wait_for_all_tasks(client, job_id)
    ran_on = set(_statuses(client, job_id))
    terminating = client.begin_terminate_job(job_id, terminate_options(), polling_interval=LRO_POLLING)
    try:
        wait_for(lambda: all((s.job_release_task_execution_info or models.BatchJobReleaseTaskExecutionInfo(
            state="none")).state == "running" for s in _statuses(client, job_id).values()), "release tasks running")
        assert client.get_job(job_id).state == "terminating"
    finally:
        gate.touch()
    terminating.result()
    job = _job_state(client, job_id, "completed")
    assert job.execution_info.termination_reason == "test"
    statuses = _statuses(client, job_id)
    assert set(statuses) == ran_on
    for node_id, status in statuses.items():
        release = status.job_release_task_execution_info
        assert (release.state, release.exit_code, release.result) == ("completed", 0, "success")
        assert release.task_root_directory == f"workitems/{job_id}/job-1/jobrelease"
        assert _node_text(client, pool_id, node_id, f"workitems/{job_id}/job-1/released.txt").startswith("released in ")


def test_release_runs_when_all_tasks_complete_ends_the_job(client, pool_id):
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"),
                        job_release_task=models.BatchJobReleaseTask(command_line="/bin/true"))
    client.create_tasks(job_id, _tasks(2))
    client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    job = _job_state(client, job_id, "completed")
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert all(s.job_release_task_execution_info.state == "completed" for s in _statuses(client, job_id).values())


def test_release_runs_before_a_deleted_job_goes_away(client, pool_id, tmp_path):
    gate = tmp_path / "gate"
    marker = tmp_path / "released"
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"),
                        job_release_task=models.BatchJobReleaseTask(command_line=_gated(gate, f"touch {marker}")))
    client.create_tasks(job_id, _tasks(1))
    wait_for_all_tasks(client, job_id)
    deleting = client.begin_delete_job(job_id, polling_interval=LRO_POLLING)
    try:
        wait_for(lambda: any(s.job_release_task_execution_info for s in _statuses(client, job_id).values()),
                 "the release task to start")
        assert client.get_job(job_id).state == "deleting"
    finally:
        gate.touch()
    deleting.result()
    assert _gone(client, job_id)
    assert marker.exists()


def _gone(client, job_id: str) -> bool:
    try:
        client.get_job(job_id)
    except ResourceNotFoundError:
        return True
    return False


@pytest.mark.parametrize("rerun, expected_runs", [(True, 2), (False, 1)], ids=["rerun", "no-rerun"])
def test_a_reboot_reruns_preparation_as_rerun_on_node_reboot_after_success_says(client, rerun, expected_runs):
    pool_id = unique_id("pool")
    [node] = create_pool_and_wait(client, pool_id, nodes=1)
    job_id = create_job(client, pool_id, job_preparation_task=_preparation(
        _shell(f"echo run >> $AZ_BATCH_NODE_SHARED_DIR/{job_id_marker()}"), rerun_on_node_reboot_after_success=rerun))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="before", command_line="/bin/true"))
    wait_for_task(client, job_id, "before")
    client.begin_reboot_node(pool_id, node.id, reboot_options(), polling_interval=LRO_POLLING).result()
    wait_for_nodes(client, pool_id, 1)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="after", command_line="/bin/true"))
    wait_for_task(client, job_id, "after")
    assert _node_text(client, pool_id, node.id, f"shared/{job_id_marker()}") == "run\n" * expected_runs
    client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()


def test_preparation_and_release_errors(client, pool_id):
    with pytest.raises(HttpResponseError) as caught:
        create_job(client, pool_id, job_release_task=models.BatchJobReleaseTask(command_line="/bin/true"))
    assert (caught.value.status_code, caught.value.error.code) == (400, "InvalidPropertyValue")
    assert {d.code: d.message for d in caught.value.error.details}["PropertyName"] == "jobReleaseTask"
    with pytest.raises(HttpResponseError) as caught:
        create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"),
                   job_release_task=models.BatchJobReleaseTask(command_line="/bin/true",
                                                               max_wall_clock_time=dt.timedelta(hours=1)))
    assert {d.code: d.message for d in caught.value.error.details}["PropertyName"] == "jobReleaseTask.maxWallClockTime"
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true", id="setup"),
                        job_release_task=models.BatchJobReleaseTask(command_line="/bin/true", id="teardown"))
    for task_id, code in (("setup", "TaskIdSameAsJobPreparationTask"), ("TEARDOWN", "TaskIdSameAsJobReleaseTask")):
        with pytest.raises(ResourceExistsError) as conflict:
            client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true"))
        assert conflict.value.error.code == code


def test_the_status_list_through_the_aio_client(server, client, pool_id):
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"))
    client.create_tasks(job_id, _tasks(2))
    wait_for_all_tasks(client, job_id)

    async def statuses() -> list:
        async with AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                        WELL_KNOWN_ACCOUNT_KEY)) as aio:
            return [status async for status in aio.list_job_preparation_and_release_task_status(job_id)]
    listed = asyncio.run(statuses())
    assert {s.node_id for s in listed} == set(_statuses(client, job_id))
    assert all(s.job_preparation_task_execution_info.result == "success" for s in listed)


def test_the_status_list_filters_selects_and_pages(client, pool_id):
    job_id = create_job(client, pool_id, job_preparation_task=_preparation("/bin/true"))
    client.create_tasks(job_id, _tasks(8))
    wait_for_all_tasks(client, job_id)
    node_ids = sorted(_statuses(client, job_id))
    assert len(node_ids) == 2  # the module's pool spreads eight tasks over both nodes
    [only] = client.list_job_preparation_and_release_task_status(job_id, filter=f"nodeId eq '{node_ids[1]}'")
    assert only.node_id == node_ids[1]
    assert [s.as_dict() for s in client.list_job_preparation_and_release_task_status(job_id, select=["nodeId"])] == [
        {"nodeId": node_id} for node_id in node_ids]
    assert [s.node_id for s in client.list_job_preparation_and_release_task_status(job_id, max_results=1)] == node_ids


def test_a_preparation_task_cut_short_by_a_reboot_runs_again(client, tmp_path):
    pool_id = unique_id("pool")
    [node] = create_pool_and_wait(client, pool_id, nodes=1)
    first_run = tmp_path / "first-run"
    # The first run waits for ever (until the reboot kills it); the second one succeeds at once.
    job_id = create_job(client, pool_id, job_preparation_task=_preparation(
        _shell(f"if [ -e {first_run} ]; then exit 0; fi; echo $$ > {first_run}; exec sleep 60"),
        rerun_on_node_reboot_after_success=False))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    wait_for(lambda: first_run.exists() and first_run.read_text().strip(), "the preparation task to start")
    assert client.get_task(job_id, "t").state == "preparing"
    client.begin_reboot_node(pool_id, node.id, reboot_options(), polling_interval=LRO_POLLING).result()
    task = wait_for_task(client, job_id, "t")
    assert (task.execution_info.result, task.execution_info.requeue_count) == ("success", 1)
    pid = int(first_run.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), "the first run's process to end")
    info = _statuses(client, job_id)[node.id].job_preparation_task_execution_info
    assert (info.state, info.result) == ("completed", "success")
    client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def test_a_preparation_task_past_its_wall_clock_time_fails_and_a_failing_release_is_reported(client):
    pool_id = unique_id("pool")
    [node] = create_pool_and_wait(client, pool_id, nodes=1)
    job_id = create_job(
        client, pool_id,
        job_preparation_task=_preparation("/bin/sleep 60", constraints=models.BatchTaskConstraints(
            max_wall_clock_time=dt.timedelta(milliseconds=200))),
        job_release_task=models.BatchJobReleaseTask(command_line=_shell("exit 5")))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    info = wait_for(lambda: (lambda s: s and s.job_preparation_task_execution_info.state == "completed" and s)(
        _statuses(client, job_id).get(node.id)), "the preparation task to end").job_preparation_task_execution_info
    assert (info.result, info.failure_info.code) == ("failure", "MaxWallClockTimeExpiry")
    assert client.get_task(job_id, "t").state == "active"  # its only node is barred for this job
    client.begin_terminate_job(job_id, terminate_options(), polling_interval=LRO_POLLING).result()
    release = _statuses(client, job_id)[node.id].job_release_task_execution_info
    assert (release.state, release.exit_code, release.result, release.failure_info.code) == (
        "completed", 5, "failure", "FailureExitCode")
    assert client.get_task(job_id, "t").execution_info.failure_info.code == "TaskEnded"
    client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()
