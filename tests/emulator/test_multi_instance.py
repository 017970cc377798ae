"""Multi-instance tasks: subtasks on several nodes with the multi-instance environment, the
coordination command before the command line, commonResourceFiles on every node, list_subtasks,
failures of any instance failing (and retrying) the whole task, waiting for nodes, terminate,
node reboot, wall clock, restart durability, and the errors (sync and aio clients)."""
from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from localbatch import LocalBatchServer
from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from localbatch.node.engines import docker_unavailable_reason
from localbatch.node.network import random_node_subnet

from .conftest import fast_timings
from .support import (LRO_POLLING, RunningEmulator, batch_client, crash_with_launchers, create_job,
                      create_pool_and_wait, read_task_file, reboot_options, terminate_options, unique_id, wait_for,
                      wait_for_nodes, wait_for_task)
from .test_containers import BUSYBOX, ENGINE_WAIT, container_vm_configuration
from .test_resource_files import blob_sas_url

ENVIRONMENT = ("AZ_BATCH_HOST_LIST", "AZ_BATCH_NODE_LIST", "AZ_BATCH_MASTER_NODE", "AZ_BATCH_IS_CURRENT_NODE_MASTER",
               "AZ_BATCH_TASK_SHARED_DIR", "AZ_BATCH_TASK_DIR", "AZ_BATCH_TASK_ID", "AZ_BATCH_NODE_ID", "CCP_NODES")


def _shell(script: str) -> str:
    return "/bin/bash -c " + shlex.quote(script)


def _print_environment() -> str:
    return "env | grep -E '^(AZ_BATCH_|CCP_NODES=)' | sort"


def _environment(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _gated(gate: Path, then: str = "true") -> str:
    return f"while [ ! -e {gate} ]; do sleep 0.02; done; {then}"


def _multi_instance(count: int, coordination: str, **extra) -> models.MultiInstanceSettings:
    return models.MultiInstanceSettings(number_of_instances=count, coordination_command_line=coordination, **extra)


def _node_text(client, pool_id: str, node_id: str, path: str) -> str:
    return b"".join(client.download_node_file(pool_id, node_id, path)).decode("utf-8")


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details or []}


def _item_details(error: models.BatchError) -> dict[str, str]:
    return {detail.key: detail.value for detail in error.error_values or []}


def _without_urls(subtask: models.BatchSubtask) -> dict:
    """What a subtask reports apart from URLs (which name the server's port)."""
    found = subtask.as_dict()
    found["nodeInfo"] = {name: value for name, value in found["nodeInfo"].items() if not name.endswith(("url", "Url"))}
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _task_state(client, job_id: str, task_id: str, check) -> models.BatchTask:
    return wait_for(lambda: (lambda task: task if check(task) else None)(client.get_task(job_id, task_id)),
                    f"task {job_id}/{task_id} to reach the expected state")


@pytest.fixture(scope="module")
def mpi_pool(client) -> str:
    """Three idle nodes that run multi-instance tasks (inter-node communication, one slot each)."""
    pool = unique_id("mpipool")
    create_pool_and_wait(client, pool, nodes=3, enable_inter_node_communication=True)
    return pool


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    directory = tmp_path / "marks"
    directory.mkdir()
    return directory


# ---- the happy path -----------------------------------------------------------------------------------
def test_every_instance_coordinates_then_the_primary_runs_with_the_multi_instance_environment(client, mpi_pool,
                                                                                             marks):
    job_id = create_job(client, mpi_pool)
    coordinated = marks / "coordinated"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell(
            f'[ "$(wc -l < {coordinated})" -eq 3 ] || exit 7; echo "after $(wc -l < {coordinated}) coordinations"; '
            + _print_environment()),
        multi_instance_settings=_multi_instance(3, _shell(
            f'echo "$AZ_BATCH_NODE_ID $AZ_BATCH_IS_CURRENT_NODE_MASTER" >> {coordinated}; ' + _print_environment()))))
    task = wait_for_task(client, job_id, "mpi")
    assert (task.execution_info.result, task.execution_info.exit_code) == ("success", 0)
    assert task.multi_instance_settings.number_of_instances == 3
    assert task.multi_instance_settings.coordination_command_line.startswith("/bin/bash")

    addresses = {node.id: node.ip_address for node in client.list_nodes(mpi_pool)}
    master = task.node_info.node_id
    output = read_task_file(client, job_id, "mpi")
    assert output.startswith("after 3 coordinations\n")
    primary = _environment(output)
    hosts = primary["AZ_BATCH_HOST_LIST"].split(",")
    assert hosts[0] == addresses[master] and sorted(hosts) == sorted(addresses.values())
    assert primary["AZ_BATCH_NODE_LIST"] == ";".join(hosts)
    assert primary["AZ_BATCH_MASTER_NODE"] == f"{addresses[master]}:6000"
    assert primary["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "true"
    assert primary["AZ_BATCH_NODE_ID"] == master and primary["AZ_BATCH_TASK_ID"] == "mpi"
    assert primary["AZ_BATCH_TASK_SHARED_DIR"] == primary["AZ_BATCH_TASK_DIR"]
    assert primary["AZ_BATCH_TASK_SHARED_DIR"].endswith(f"/workitems/{job_id}/job-1/mpi")
    assert primary["CCP_NODES"].split()[0] == "3" and primary["CCP_NODES"].split()[1::2] == hosts

    runs = sorted(coordinated.read_text().splitlines())
    assert sorted(line.split()[0] for line in runs) == sorted(addresses)
    assert sorted(line.split()[1] for line in runs) == ["false", "false", "true"]

    subtasks = list(client.list_subtasks(job_id, "mpi"))
    assert [subtask.id for subtask in subtasks] == [1, 2]
    assert {subtask.node_info.node_id for subtask in subtasks} == set(addresses) - {master}
    for subtask in subtasks:
        node_id = subtask.node_info.node_id
        assert (subtask.state, subtask.previous_state, subtask.exit_code, subtask.result) == (
            "completed", "running", 0, "success")
        assert subtask.failure_info is None
        assert subtask.start_time <= subtask.end_time
        assert subtask.node_info.pool_id == mpi_pool
        assert subtask.node_info.affinity_id == f"TVM:{node_id}"
        assert subtask.node_info.task_root_directory == f"workitems/{job_id}/job-1/mpi"
        assert subtask.node_info.task_root_directory_url.endswith(
            f"/pools/{mpi_pool}/nodes/{node_id}/files/workitems/{job_id}/job-1/mpi")
        seen = _environment(_node_text(client, mpi_pool, node_id, f"{subtask.node_info.task_root_directory}/stdout.txt"))
        assert seen["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "false"
        assert seen["AZ_BATCH_NODE_ID"] == node_id and seen["AZ_BATCH_TASK_ID"] == "mpi"
        assert seen["AZ_BATCH_HOST_LIST"] == primary["AZ_BATCH_HOST_LIST"]
        assert seen["AZ_BATCH_MASTER_NODE"] == primary["AZ_BATCH_MASTER_NODE"]
        assert seen["AZ_BATCH_TASK_SHARED_DIR"] == seen["AZ_BATCH_TASK_DIR"]
    wait_for_nodes(client, mpi_pool, 3)  # every node is free again
    assert list(client.list_subtasks(job_id, "mpi", select=["id", "state"]))[0].as_dict() == {
        "id": 1, "state": "completed"}


def test_common_resource_files_reach_every_node_and_the_tasks_own_only_the_primary(storage_client, container):
    pool_id = unique_id("mpipool")
    create_pool_and_wait(storage_client, pool_id, nodes=2, enable_inter_node_communication=True)
    container.upload_blob("common.txt", b"for every instance\n")
    container.upload_blob("own.txt", b"for the primary\n")
    job_id = create_job(storage_client, pool_id)
    storage_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell('cat "$AZ_BATCH_TASK_SHARED_DIR/common.txt" own.txt'),
        resource_files=[models.ResourceFile(http_url=blob_sas_url(container, "own.txt"), file_path="own.txt")],
        multi_instance_settings=_multi_instance(2, _shell('cat "$AZ_BATCH_TASK_SHARED_DIR/common.txt"; ls'),
                                                common_resource_files=[models.ResourceFile(
                                                    http_url=blob_sas_url(container, "common.txt"),
                                                    file_path="common.txt")])))
    task = wait_for_task(storage_client, job_id, "mpi")
    assert task.execution_info.result == "success"
    assert read_task_file(storage_client, job_id, "mpi") == "for every instance\nfor the primary\n"
    assert read_task_file(storage_client, job_id, "mpi", "wd/own.txt") == "for the primary\n"
    [subtask] = storage_client.list_subtasks(job_id, "mpi")
    root = subtask.node_info.task_root_directory
    node_id = subtask.node_info.node_id
    assert _node_text(storage_client, pool_id, node_id, f"{root}/common.txt") == "for every instance\n"
    assert _node_text(storage_client, pool_id, node_id, f"{root}/stdout.txt") == "for every instance\n"
    with pytest.raises(ResourceNotFoundError):
        _node_text(storage_client, pool_id, node_id, f"{root}/wd/own.txt")


def test_the_aio_client_adds_a_multi_instance_task_and_lists_its_subtasks(server, client, mpi_pool):
    job_id = create_job(client, mpi_pool)

    def aio() -> AsyncBatchClient:
        return AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY))

    async def add() -> None:
        async with aio() as batch:
            await batch.create_task(job_id, models.BatchTaskCreateOptions(
                id="mpi", command_line="/bin/echo primary",
                multi_instance_settings=_multi_instance(3, "/bin/echo coordinated")))

    async def subtasks() -> list[models.BatchSubtask]:
        async with aio() as batch:
            return [subtask async for subtask in batch.list_subtasks(job_id, "mpi")]
    asyncio.run(add())
    assert wait_for_task(client, job_id, "mpi").execution_info.exit_code == 0
    listed = asyncio.run(subtasks())
    assert [(s.id, s.state, s.exit_code) for s in listed] == [(1, "completed", 0), (2, "completed", 0)]


def test_a_task_with_one_instance_runs_its_coordination_command_and_has_no_subtasks(client, mpi_pool):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="one", command_line=_shell("cat ../coordinated.txt"),
        multi_instance_settings=models.MultiInstanceSettings(
            coordination_command_line=_shell('echo coordinated > "$AZ_BATCH_TASK_SHARED_DIR/coordinated.txt"'))))
    task = wait_for_task(client, job_id, "one")
    assert task.multi_instance_settings.number_of_instances == 1
    assert read_task_file(client, job_id, "one") == "coordinated\n"
    assert list(client.list_subtasks(job_id, "one")) == []


def test_instances_wait_in_preparing_for_the_jobs_preparation_task_on_their_nodes(client, mpi_pool, marks):
    gate = marks / "gate"
    job_id = create_job(client, mpi_pool, job_preparation_task=models.BatchJobPreparationTask(
        command_line=_shell(f'echo "$AZ_BATCH_NODE_ID" >> {marks}/prepared; ' + _gated(gate))))
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", multi_instance_settings=_multi_instance(3, "/bin/true")))
    try:
        assert wait_for_task(client, job_id, "mpi", states=("preparing",)).state == "preparing"
        assert [s.state for s in client.list_subtasks(job_id, "mpi")] == ["preparing", "preparing"]
        wait_for(lambda: (marks / "prepared").exists() and len((marks / "prepared").read_text().split()) == 3,
                 "the preparation task to run on the three nodes")
    finally:
        gate.touch()
    assert wait_for_task(client, job_id, "mpi").execution_info.result == "success"
    assert sorted((marks / "prepared").read_text().split()) == sorted(node.id for node in client.list_nodes(mpi_pool))
    assert [(s.previous_state, s.state) for s in client.list_subtasks(job_id, "mpi")] == [("running", "completed")] * 2


def test_a_node_whose_preparation_task_failed_is_left_out_and_the_task_runs_on_others(client, mpi_pool):
    bad_node = sorted(node.id for node in client.list_nodes(mpi_pool))[0]
    job_id = create_job(client, mpi_pool, job_preparation_task=models.BatchJobPreparationTask(
        command_line=_shell(f'[ "$AZ_BATCH_NODE_ID" != "{bad_node}" ]')))
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", affinity_info=models.BatchAffinityInfo(affinity_id=f"TVM:{bad_node}"),
        multi_instance_settings=_multi_instance(2, "/bin/true")))
    task = wait_for_task(client, job_id, "mpi")
    assert (task.execution_info.result, task.execution_info.retry_count, task.execution_info.requeue_count) == (
        "success", 0, 0)
    used = {task.node_info.node_id, *(s.node_info.node_id for s in client.list_subtasks(job_id, "mpi"))}
    assert len(used) == 2 and bad_node not in used
    statuses = {status.node_id: status for status in client.list_job_preparation_and_release_task_status(job_id)}
    assert statuses[bad_node].job_preparation_task_execution_info.result == "failure"  # it was tried there first
    wait_for_nodes(client, mpi_pool, 3)


@pytest.mark.skipif(docker_unavailable_reason() is not None, reason=str(docker_unavailable_reason()))
def test_on_a_container_pool_every_instance_runs_in_a_container_of_the_tasks_image(client):
    pool_id = unique_id("mpicontainers")
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=2, enable_inter_node_communication=True,
        virtual_machine_configuration=container_vm_configuration(BUSYBOX)))
    try:
        wait_for_nodes(client, pool_id, 2, timeout=ENGINE_WAIT)
        job_id = create_job(client, pool_id)
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="mpi", command_line="sh -c 'cat $AZ_BATCH_TASK_SHARED_DIR/coordinated; busybox | head -1'",
            container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX),
            multi_instance_settings=_multi_instance(2, "sh -c 'echo $AZ_BATCH_IS_CURRENT_NODE_MASTER "
                                                       "| tee $AZ_BATCH_TASK_SHARED_DIR/coordinated'")))
        task = wait_for_task(client, job_id, "mpi", timeout=ENGINE_WAIT)
        assert task.execution_info.result == "success", task.execution_info.failure_info
        output = read_task_file(client, job_id, "mpi")
        assert output.startswith("true\nBusyBox")
        [subtask] = client.list_subtasks(job_id, "mpi")
        assert (subtask.exit_code, subtask.result) == (0, "success")
        # Each reports the container it ran in: the primary its command line's, a subtask its coordination command's.
        assert subtask.container_info.state == task.execution_info.container_info.state == "exited"
        assert subtask.container_info.container_id != task.execution_info.container_info.container_id
        assert _node_text(client, pool_id, subtask.node_info.node_id,
                          f"{subtask.node_info.task_root_directory}/stdout.txt") == "false\n"
    finally:
        client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING).result()


# ---- failures ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failing_instance, expected_message", [
    ("true", "The primary task of the multi-instance task failed"),
    ("false", "Subtask "),
], ids=["on-the-master", "on-a-subtask"])
def test_a_failing_coordination_command_fails_the_task_which_is_retried(client, mpi_pool, marks, failing_instance,
                                                                        expected_message):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell(f"touch {marks}/application-ran"),
        constraints=models.BatchTaskConstraints(max_task_retry_count=1),
        multi_instance_settings=_multi_instance(3, _shell(
            f'echo "$AZ_BATCH_IS_CURRENT_NODE_MASTER" >> {marks}/coordinated; '
            f'[ "$AZ_BATCH_IS_CURRENT_NODE_MASTER" != {failing_instance} ] || {{ echo broken >&2; exit 3; }}'))))
    task = wait_for_task(client, job_id, "mpi")
    info = task.execution_info
    assert (info.result, info.exit_code, info.retry_count) == ("failure", 3, 1)
    assert info.failure_info.category == "usererror" and info.failure_info.code == "FailureExitCode"
    assert info.failure_info.message.startswith(expected_message)
    assert not (marks / "application-ran").exists()
    # The failing coordination command ran once per run: the first and its retry.
    assert (marks / "coordinated").read_text().splitlines().count(failing_instance) >= 2
    subtasks = list(client.list_subtasks(job_id, "mpi"))
    assert [subtask.state for subtask in subtasks] == ["completed", "completed"]
    if failing_instance == "false":
        # The first to fail failed on its own; the other may have been stopped as it exited.
        assert any((s.exit_code, s.result, s.failure_info.code) == (3, "failure", "FailureExitCode") for s in subtasks)
    wait_for_nodes(client, mpi_pool, 3)


def test_the_primarys_exit_code_is_the_tasks_and_the_subtasks_keep_their_own(client, mpi_pool):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell("exit 5"), multi_instance_settings=_multi_instance(2, "/bin/true")))
    task = wait_for_task(client, job_id, "mpi")
    assert (task.execution_info.exit_code, task.execution_info.failure_info.code) == (5, "FailureExitCode")
    assert [(s.exit_code, s.result) for s in client.list_subtasks(job_id, "mpi")] == [(0, "success")]


def test_a_resource_file_an_instance_cannot_download_fails_the_task(client, mpi_pool, marks):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", multi_instance_settings=_multi_instance(
            2, _shell(f"touch {marks}/coordinated"), common_resource_files=[models.ResourceFile(
                http_url="http://127.0.0.1:9/missing.txt", file_path="missing.txt")])))
    task = wait_for_task(client, job_id, "mpi")
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code != "FailureExitCode"
    assert task.execution_info.exit_code is None
    assert not (marks / "coordinated").exists()


# ---- waiting for nodes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pool_settings", [
    {"enable_inter_node_communication": False},
    {"enable_inter_node_communication": True, "task_slots_per_node": 2},
], ids=["without-inter-node-communication", "with-two-slots-per-node"])
def test_a_pool_that_cannot_run_it_leaves_the_task_active(client, pool_settings):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=1, **pool_settings)
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", multi_instance_settings=_multi_instance(1, "/bin/true")))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="after", command_line="/bin/true"))
    wait_for_task(client, job_id, "after")  # the scheduler has passed over the multi-instance task
    assert client.get_task(job_id, "mpi").state == "active"
    assert list(client.list_subtasks(job_id, "mpi")) == []


def test_the_task_waits_until_enough_nodes_are_free_at_once(client, marks):
    pool_id = unique_id("mpipool")
    create_pool_and_wait(client, pool_id, nodes=2, enable_inter_node_communication=True)
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", multi_instance_settings=_multi_instance(3, "/bin/true")))
    gate = marks / "gate"
    client.create_task(job_id, models.BatchTaskCreateOptions(id="busy", command_line=_shell(_gated(gate))))
    try:
        wait_for_task(client, job_id, "busy", states=("running",))
        client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=3),
                                 polling_interval=LRO_POLLING).result()
        wait_for(lambda: sum(node.state == "idle" for node in client.list_nodes(pool_id)) == 2,
                 "two idle nodes beside the busy one")
        client.create_task(job_id, models.BatchTaskCreateOptions(id="after", command_line="/bin/true"))
        wait_for_task(client, job_id, "after")
        assert client.get_task(job_id, "mpi").state == "active"  # two free nodes are not three
    finally:
        gate.touch()
    task = wait_for_task(client, job_id, "mpi")
    assert task.execution_info.result == "success"
    assert len(list(client.list_subtasks(job_id, "mpi"))) == 2


# ---- stopping it ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["terminate-task", "terminate-job"])
def test_terminating_it_while_it_runs_ends_every_instance_and_what_they_started(client, mpi_pool, marks, how):
    job_id = create_job(client, mpi_pool)
    gate = marks / "gate"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell(f"touch {marks}/started; " + _gated(gate)),
        multi_instance_settings=_multi_instance(3, _shell(
            f'sleep 300 & echo $! > {marks}/daemon-$AZ_BATCH_NODE_ID'))))
    try:
        wait_for(lambda: (marks / "started").exists(), "the primary's command line to start")
        running = client.get_task(job_id, "mpi")
        assert running.state == "running"
        assert [(s.state, s.exit_code) for s in client.list_subtasks(job_id, "mpi")] == [("running", None)] * 2
        daemons = [int(path.read_text()) for path in marks.glob("daemon-*")]
        assert len(daemons) == 3 and all(_alive(pid) for pid in daemons)
        if how == "terminate-task":
            client.terminate_task(job_id, "mpi")
        else:
            client.begin_terminate_job(job_id, terminate_options(), polling_interval=LRO_POLLING).result()
        task = wait_for_task(client, job_id, "mpi")
    finally:
        gate.touch()
    assert task.execution_info.failure_info.code == "TaskEnded"
    subtasks = list(client.list_subtasks(job_id, "mpi"))
    assert [(s.state, s.exit_code, s.result) for s in subtasks] == [("completed", 0, "success")] * 2
    wait_for(lambda: not any(_alive(pid) for pid in daemons), "the coordination commands' daemons to end")
    wait_for_nodes(client, mpi_pool, 3)


def test_a_finished_task_ends_what_its_coordination_commands_left_running(client, mpi_pool, marks):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/true", multi_instance_settings=_multi_instance(3, _shell(
            f'sleep 300 & echo $! > {marks}/daemon-$AZ_BATCH_NODE_ID'))))
    assert wait_for_task(client, job_id, "mpi").execution_info.result == "success"
    daemons = [int(path.read_text()) for path in marks.glob("daemon-*")]
    assert len(daemons) == 3
    wait_for(lambda: not any(_alive(pid) for pid in daemons), "the coordination commands' daemons to end")


@pytest.mark.parametrize("how", ["reboot", "remove"])
def test_rebooting_or_removing_a_subtasks_node_requeues_the_whole_task(client, marks, how):
    pool_id = unique_id("mpipool")
    create_pool_and_wait(client, pool_id, nodes=2, enable_inter_node_communication=True)
    job_id = create_job(client, pool_id)
    gate = marks / "gate"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell(f"echo run >> {marks}/runs; " + _gated(gate)),
        multi_instance_settings=_multi_instance(2, "/bin/true")))
    try:
        wait_for(lambda: (marks / "runs").exists(), "the primary's command line to start")
        [subtask] = client.list_subtasks(job_id, "mpi")
        if how == "reboot":
            client.begin_reboot_node(pool_id, subtask.node_info.node_id, reboot_options("requeue"),
                                     polling_interval=LRO_POLLING).result()
        else:
            client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(
                node_ids=[subtask.node_info.node_id], node_deallocation_option="requeue"),
                polling_interval=LRO_POLLING).result()
        requeued = _task_state(client, job_id, "mpi", lambda task: task.execution_info.requeue_count == 1)
        assert requeued.execution_info.retry_count == 0
        if how == "remove":  # one node cannot run it: it waits for a second one
            assert requeued.state == "active" and list(client.list_subtasks(job_id, "mpi")) == []
            client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=2),
                                     polling_interval=LRO_POLLING).result()
        wait_for(lambda: (marks / "runs").read_text() == "run\nrun\n", "the task to run again on two nodes")
    finally:
        gate.touch()
    task = wait_for_task(client, job_id, "mpi")
    assert (task.execution_info.result, task.execution_info.requeue_count) == ("success", 1)
    assert [s.state for s in client.list_subtasks(job_id, "mpi")] == ["completed"]


def test_the_wall_clock_limit_applies_to_the_whole_task(client, mpi_pool, marks):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell(_gated(marks / "never")),
        constraints=models.BatchTaskConstraints(max_wall_clock_time="PT1S"),
        multi_instance_settings=_multi_instance(3, "/bin/true")))
    task = wait_for_task(client, job_id, "mpi")
    assert task.execution_info.failure_info.code == "MaxWallClockTimeExpiry"
    assert [s.state for s in client.list_subtasks(job_id, "mpi")] == ["completed", "completed"]
    wait_for_nodes(client, mpi_pool, 3)


def test_deleting_a_running_task_frees_its_nodes(client, mpi_pool, marks):
    job_id = create_job(client, mpi_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="mpi", command_line=_shell(f"touch {marks}/started; " + _gated(marks / "never")),
        multi_instance_settings=_multi_instance(3, "/bin/true")))
    wait_for(lambda: (marks / "started").exists(), "the primary's command line to start")
    client.delete_task(job_id, "mpi")
    with pytest.raises(ResourceNotFoundError):
        list(client.list_subtasks(job_id, "mpi"))
    wait_for_nodes(client, mpi_pool, 3)


# ---- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, extra, code, property_name", [
    ({"number_of_instances": 0, "coordination_command_line": "/bin/true"}, {}, "InvalidPropertyValue",
     "multiInstanceSettings.numberOfInstances"),
    ({"number_of_instances": 2, "coordination_command_line": "/bin/true"}, {"required_slots": 2},
     "InvalidPropertyValue", "requiredSlots"),
    ({"number_of_instances": 2, "coordination_command_line": "/bin/true",
      "common_resource_files": [models.ResourceFile(file_path="x")]}, {}, "InvalidPropertyValue",
     "multiInstanceSettings.commonResourceFiles[0]"),
    ({"number_of_instances": 2}, {}, "MissingRequiredProperty", "multiInstanceSettings.coordinationCommandLine"),
], ids=["no-instances", "more-than-one-slot", "resource-file-without-source", "no-coordination-command"])
def test_what_the_service_refuses(client, pool_id, settings, extra, code, property_name):
    job_id = create_job(client, pool_id)
    task = models.BatchTaskCreateOptions(id="mpi", command_line="/bin/true",
                                         multi_instance_settings=models.MultiInstanceSettings(**settings), **extra)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, task)
    assert caught.value.status_code == 400
    assert caught.value.error.code == code
    assert _details(caught.value)["PropertyName"] == property_name
    result = client.create_task_collection(job_id, models.BatchTaskGroup(task_values=[
        task, models.BatchTaskCreateOptions(id="fine", command_line="/bin/true",
                                            multi_instance_settings=_multi_instance(2, "/bin/true"))]))
    by_id = {item.task_id: item for item in result.result_values}
    assert by_id["fine"].status == "success"
    assert (by_id["mpi"].status, by_id["mpi"].error.code) == ("clienterror", code)
    assert _item_details(by_id["mpi"].error)["PropertyName"] == property_name


def test_subtasks_of_tasks_that_have_none_or_do_not_exist(client, pool_id):
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="plain", command_line="/bin/true"))
    wait_for_task(client, job_id, "plain")
    assert list(client.list_subtasks(job_id, "plain")) == []
    with pytest.raises(ResourceNotFoundError) as caught:
        list(client.list_subtasks(job_id, "missing"))
    assert caught.value.error.code == "TaskNotFound"


# ---- restarts ------------------------------------------------------------------------------------------
def test_subtasks_survive_a_restart_and_a_running_task_runs_again(tmp_path, marks):
    location = tmp_path / "state"
    subnet = random_node_subnet()
    first = LocalBatchServer(str(location), timings=fast_timings(), node_subnet=subnet).start()
    try:
        with batch_client(first.url) as client:
            create_pool_and_wait(client, "mpi-pool", nodes=2, enable_inter_node_communication=True)
            job_id = create_job(client, "mpi-pool", "mpi-job")
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="done", command_line="/bin/true", multi_instance_settings=_multi_instance(2, "/bin/echo hi")))
            wait_for_task(client, job_id, "done")
            before = [_without_urls(subtask) for subtask in client.list_subtasks(job_id, "done")]
            # Runs until the server stops; its second run finds the mark and succeeds.
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="interrupted", command_line=_shell(
                    f"if [ -e {marks}/first ]; then echo second run; exit 0; fi; "
                    f"echo $$ > {marks}/pid; touch {marks}/first; exec sleep 60"),
                multi_instance_settings=_multi_instance(2, _shell(
                    f'echo $$ >> {marks}/coordination-pids; sleep 300 & echo $! >> {marks}/daemons'))))
            wait_for(lambda: (marks / "pid").exists() and (marks / "pid").read_text().strip(),
                     "the interrupted task's command line to start")
            pid = int((marks / "pid").read_text())
            assert [s.state for s in client.list_subtasks(job_id, "interrupted")] == ["running"]
    finally:
        first.stop()
    assert not _alive(pid), "stopping the server must end the primary's process"
    daemons = [int(daemon) for daemon in (marks / "daemons").read_text().split()]
    assert len(daemons) == 2
    wait_for(lambda: not any(_alive(daemon) for daemon in daemons),
             "stopping the server to end what the coordination commands started")

    with LocalBatchServer(str(location), timings=fast_timings(), node_subnet=subnet) as second:
        with batch_client(second.url) as client:
            assert [_without_urls(subtask) for subtask in client.list_subtasks("mpi-job", "done")] == before
            task = wait_for_task(client, "mpi-job", "interrupted")
            assert (task.execution_info.result, task.execution_info.requeue_count) == ("success", 1)
            assert read_task_file(client, "mpi-job", "interrupted") == "second run\n"
            assert [(s.state, s.exit_code) for s in client.list_subtasks("mpi-job", "interrupted")] == [
                ("completed", 0)]
            assert len((marks / "coordination-pids").read_text().split()) == 4  # both instances, twice


def test_after_a_crash_the_restart_ends_what_the_interrupted_run_left_and_runs_it_again(tmp_path, marks):
    location = tmp_path / "state"
    emulators = [RunningEmulator(location, "--node-startup-seconds", "0.05")]
    try:
        with batch_client(emulators[0].url()) as client:
            create_pool_and_wait(client, "mpi-pool", nodes=2, enable_inter_node_communication=True)
            job_id = create_job(client, "mpi-pool", "mpi-job")
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="mpi", command_line=_shell(
                    f"if [ -e {marks}/first ]; then exit 0; fi; touch {marks}/first; echo $$ > {marks}/primary; "
                    "exec sleep 300"),
                multi_instance_settings=_multi_instance(2, _shell(f"sleep 300 & echo $! >> {marks}/daemons"))))
            wait_for(lambda: (marks / "primary").exists() and (marks / "primary").read_text().strip(),
                     "the primary's command line to start")
            assert client.get_task(job_id, "mpi").state == "running"  # read, so on record
        crash_with_launchers(emulators[0])
        left = [int(pid) for pid in (marks / "daemons").read_text().split()] + [int((marks / "primary").read_text())]
        assert len(left) == 3 and all(_alive(pid) for pid in left), "a crash leaves the task's processes running"

        emulators.append(RunningEmulator(location, "--node-startup-seconds", "0.05"))
        with batch_client(emulators[1].url()) as client:
            task = wait_for_task(client, "mpi-job", "mpi")
            assert (task.execution_info.result, task.execution_info.requeue_count) == ("success", 1)
        wait_for(lambda: not any(_alive(pid) for pid in left), "the interrupted run's processes to be ended")
    finally:
        for emulator in emulators:
            emulator.kill()
