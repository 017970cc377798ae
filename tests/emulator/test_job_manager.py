"""The job manager task through the real SDK: created with its job (and with each job of a job
schedule), first in the job's queue, an ordinary task in list_tasks; killJobOnCompletion,
runExclusive, allowLowPriorityNode; a manager that adds its job's tasks through the SDK from inside
the task; and the errors."""
from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from localbatch import LocalBatchServer, WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .conftest import fast_timings
from .support import (LRO_POLLING, batch_client, create_job, terminate_options, create_pool_and_wait, read_task_file, unique_id, wait_for, wait_for_all_tasks,
                      wait_for_nodes, wait_for_task)


def _shell(script: str) -> str:
    return f"/bin/bash -c '{script}'"


def _gated(gate: Path, then: str = "true") -> str:
    return _shell(f"while [ ! -e {gate} ]; do sleep 0.02; done; {then}")


def _manager(command_line: str, task_id: str = "manager", **extra) -> models.BatchJobManagerTask:
    return models.BatchJobManagerTask(id=task_id, command_line=command_line, **extra)


def _create_job(client, pool_id: str, manager: models.BatchJobManagerTask, **extra) -> str:
    job_id = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), job_manager_task=manager, **extra))
    return job_id


def _wait_for_job(client, job_id: str, state: str = "completed") -> models.BatchJob:
    return wait_for(lambda: client.get_job(job_id), f"job {job_id} {state}", until=lambda job: job.state == state)


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details or []}


def test_the_job_manager_is_created_with_its_job_and_its_completion_ends_the_job(client, pool_id, tmp_path):
    job_id = _create_job(client, pool_id, _manager(_gated(tmp_path / "gate", "echo managed"), display_name="boss",
                                                   environment_settings=[models.EnvironmentSetting(name="ROLE", value="jm")]))
    job = client.get_job(job_id)
    # Shown with the service's defaults, as the job's GET shows them.
    assert (job.job_manager_task.id, job.job_manager_task.kill_job_on_completion, job.job_manager_task.run_exclusive,
            job.job_manager_task.allow_low_priority_node) == ("manager", True, True, True)
    assert [task.id for task in client.list_tasks(job_id)] == ["manager"]  # an ordinary task of the job
    wait_for_task(client, job_id, "manager", states=("running",))
    # A task added while the manager runs is still running when the manager completes: it is stopped.
    client.create_task(job_id, models.BatchTaskCreateOptions(id="worker", command_line=_gated(tmp_path / "never")))
    (tmp_path / "gate").touch()
    job = _wait_for_job(client, job_id)
    assert job.execution_info.termination_reason == "JMComplete"
    manager = client.get_task(job_id, "manager")
    assert manager.execution_info.exit_code == 0 and read_task_file(client, job_id, "manager") == "managed\n"
    assert manager.display_name == "boss" and manager.environment_settings[0].value == "jm"
    assert client.get_task(job_id, "worker").state == "completed"


def test_a_failed_job_manager_ends_its_job_too_after_its_retries(client, pool_id):
    job_id = _create_job(client, pool_id, _manager(_shell("exit 3"),
                                                   constraints=models.BatchTaskConstraints(max_task_retry_count=1)))
    job = _wait_for_job(client, job_id)
    manager = client.get_task(job_id, "manager")
    assert job.execution_info.termination_reason == "JMComplete"
    assert (manager.execution_info.exit_code, manager.execution_info.retry_count) == (3, 1)


def test_a_job_manager_adds_its_jobs_tasks_through_the_sdk_from_inside_the_task(server, client, pool_id, tmp_path):
    script = tmp_path / "manager.py"
    script.write_text(
        "import os\n"
        "from azure.batch import BatchClient, models\n"
        "from azure.core.credentials import AzureNamedKeyCredential\n"
        "client = BatchClient(os.environ['AZ_BATCH_ACCOUNT_URL'],\n"
        "                     AzureNamedKeyCredential(os.environ['AZ_BATCH_ACCOUNT_NAME'], os.environ['ACCOUNT_KEY']))\n"
        "job_id = os.environ['AZ_BATCH_JOB_ID']\n"
        "client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f'part-{i}', command_line=f'/bin/echo {i}')\n"
        "                             for i in range(3)])\n"
        "print(sorted(task.id for task in client.list_tasks(job_id)))\n")
    job_id = _create_job(
        client, pool_id,
        _manager(f"{sys.executable} {script}", kill_job_on_completion=False,
                 environment_settings=[models.EnvironmentSetting(name="ACCOUNT_KEY", value=WELL_KNOWN_ACCOUNT_KEY)]),
        all_tasks_complete_mode="terminatejob")  # with a job manager the job has a task from its creation
    job = _wait_for_job(client, job_id)
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert "'manager', 'part-0', 'part-1', 'part-2'" in read_task_file(client, job_id, "manager")
    assert {task.id: task.execution_info.exit_code for task in client.list_tasks(job_id)} == {
        "manager": 0, "part-0": 0, "part-1": 0, "part-2": 0}
    assert read_task_file(client, job_id, "part-2") == "2\n"


def test_an_exclusive_job_manager_has_its_node_to_itself(client, tmp_path):
    pool = unique_id("pool")
    create_pool_and_wait(client, pool, nodes=1, task_slots_per_node=2)
    job_id = _create_job(client, pool, _manager(_gated(tmp_path / "gate"), kill_job_on_completion=False))
    wait_for_task(client, job_id, "manager", states=("running",))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="worker", command_line="/bin/true"))
    (tmp_path / "gate").touch()
    worker = wait_for_task(client, job_id, "worker")
    manager = client.get_task(job_id, "manager")
    # The node had a free slot all along, yet the worker started only once the manager had ended.
    assert worker.execution_info.start_time >= manager.execution_info.end_time


def test_a_job_manager_that_does_not_run_exclusive_shares_its_node(client, tmp_path):
    pool = unique_id("pool")
    create_pool_and_wait(client, pool, nodes=1, task_slots_per_node=2)
    job_id = _create_job(client, pool, _manager(_gated(tmp_path / "gate"), run_exclusive=False,
                                                kill_job_on_completion=False))
    wait_for_task(client, job_id, "manager", states=("running",))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="worker", command_line="/bin/true"))
    wait_for_task(client, job_id, "worker")
    assert client.get_task(job_id, "manager").state == "running"  # held by its gate all along
    (tmp_path / "gate").touch()
    wait_for_all_tasks(client, job_id)


def test_a_job_manager_that_refuses_low_priority_nodes_waits_for_a_dedicated_one(client, tmp_path):
    pool = unique_id("pool")
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=1, target_low_priority_nodes=1,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(
                publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04")))
    nodes = wait_for_nodes(client, pool, 2)
    dedicated = next(node.id for node in nodes if node.is_dedicated)
    blocker_job = create_job(client, pool)
    client.create_task(blocker_job, models.BatchTaskCreateOptions(
        id="blocker", command_line=_gated(tmp_path / "gate"), affinity_info=models.BatchAffinityInfo(
            affinity_id=next(node.affinity_id for node in nodes if node.is_dedicated))))
    assert wait_for_task(client, blocker_job, "blocker", states=("running",)).node_info.node_id == dedicated
    job_id = _create_job(client, pool, _manager("/bin/true", allow_low_priority_node=False))
    (tmp_path / "gate").touch()  # the low-priority node was free all along
    _wait_for_job(client, job_id)
    assert client.get_task(job_id, "manager").node_info.node_id == dedicated


def test_job_manager_ids_and_bodies_are_checked_as_tasks_of_the_job_are(client, pool_id):
    with pytest.raises(HttpResponseError) as caught:
        _create_job(client, pool_id, _manager("/bin/true", task_id="bad id"))
    assert caught.value.status_code == 400 and _details(caught.value)["PropertyName"] == "jobManagerTask.id"
    with pytest.raises(HttpResponseError) as caught:
        _create_job(client, pool_id, _manager("/bin/true", resource_files=[models.ResourceFile(file_path="x")]))
    assert _details(caught.value)["PropertyName"] == "jobManagerTask.resourceFiles[0]"
    with pytest.raises(ResourceExistsError) as caught:
        _create_job(client, pool_id, _manager("/bin/true", task_id="jobpreparation"),
                    job_preparation_task=models.BatchJobPreparationTask(command_line="/bin/true"))
    assert caught.value.error.code == "TaskIdSameAsJobPreparationTask"
    assert not [job for job in client.list_jobs() if job.job_manager_task and job.job_manager_task.id in
                ("bad id", "jobpreparation")]  # a refused job is not created
    job_id = _create_job(client, pool_id, _manager(_shell("sleep 30")))
    with pytest.raises(ResourceExistsError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(id="MANAGER", command_line="/bin/true"))
    assert caught.value.error.code == "TaskExists"
    client.begin_terminate_job(job_id, terminate_options(), polling_interval=LRO_POLLING).result()


def test_each_job_of_a_job_schedule_gets_its_job_manager(client, pool_id):
    schedule_id = unique_id("sched")
    spec = models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                        job_manager_task=_manager("/bin/echo scheduled"))
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=models.BatchJobScheduleConfiguration(recurrence_interval=dt.timedelta(minutes=1)),
        job_specification=spec))
    job_id = f"{schedule_id}:job-1"
    job = wait_for(lambda: client.get_job(job_id), f"job {job_id} completed", until=lambda job: job.state == "completed")
    assert job.execution_info.termination_reason == "JMComplete"
    assert read_task_file(client, job_id, "manager") == "scheduled\n"
    assert client.get_job_schedule(schedule_id).job_specification.job_manager_task.id == "manager"
    client.begin_delete_job_schedule(schedule_id, polling_interval=LRO_POLLING).result()
    with pytest.raises(HttpResponseError) as caught:
        client.create_job_schedule(models.BatchJobScheduleCreateOptions(
            id=unique_id("sched"), schedule=models.BatchJobScheduleConfiguration(),
            job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                                           job_manager_task=_manager("/bin/true", task_id="a:b"))))
    assert _details(caught.value)["PropertyName"] == "jobSpecification.jobManagerTask.id"


def test_authentication_token_settings_are_refused_as_the_service_refuses_an_unknown_property(raw, pool_id):
    """The task authentication token was retired (September 2024): api-version 2025-06-01 has no
    authenticationTokenSettings, and the SDK cannot send it."""
    job_id = unique_id("job")
    job = {"id": job_id, "poolInfo": {"poolId": pool_id},
           "jobManagerTask": {"id": "manager", "commandLine": "/bin/true",
                              "authenticationTokenSettings": {"access": ["job"]}}}
    response = raw.request("POST", "/jobs", job)
    assert (response.status, response.error_code) == (400, "InvalidRequestBody")
    assert "jobManagerTask.authenticationTokenSettings" in response.detail("Reason")


def test_the_aio_client_creates_a_job_with_its_job_manager(server, client, pool_id):
    job_id = unique_id("job")

    async def create() -> None:
        async with AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                        WELL_KNOWN_ACCOUNT_KEY)) as aio:
            await aio.create_job(models.BatchJobCreateOptions(
                id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), job_manager_task=_manager("/bin/true")))
            assert [task.id async for task in aio.list_tasks(job_id)] == ["manager"]
    asyncio.run(create())
    assert _wait_for_job(client, job_id).execution_info.termination_reason == "JMComplete"


def test_the_jobs_other_tasks_wait_until_its_job_manager_has_started(client, tmp_path):
    pool = unique_id("pool")
    create_pool_and_wait(client, pool, nodes=1, task_slots_per_node=2)
    other_job = create_job(client, pool)
    client.create_task(other_job, models.BatchTaskCreateOptions(id="busy", command_line=_gated(tmp_path / "busy")))
    wait_for_task(client, other_job, "busy", states=("running",))
    # The node has a free slot, but an exclusive job manager needs the whole node: nothing of its job runs.
    job_id = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool),
        job_manager_task=_manager(_gated(tmp_path / "manager"), kill_job_on_completion=False)))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="worker", command_line="/bin/true"))
    (tmp_path / "busy").touch()
    manager = wait_for_task(client, job_id, "manager", states=("running",))
    (tmp_path / "manager").touch()
    worker = wait_for_task(client, job_id, "worker")
    assert worker.execution_info.start_time >= client.get_task(job_id, "manager").execution_info.end_time
    assert manager.execution_info.start_time >= client.get_task(other_job, "busy").execution_info.end_time


def test_a_job_manager_running_when_localbatch_stops_runs_again_after_the_restart(tmp_path):
    location = str(tmp_path / "localbatch")
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        pool = unique_id("pool")
        create_pool_and_wait(client, pool, nodes=1, task_slots_per_node=2)
        job_id = _create_job(client, pool, _manager(_gated(tmp_path / "gate", "echo done"), run_exclusive=True))
        wait_for_task(client, job_id, "manager", states=("running",))
    (tmp_path / "gate").touch()
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        job = _wait_for_job(client, job_id)
        manager = client.get_task(job_id, "manager")
        assert job.execution_info.termination_reason == "JMComplete" and job.job_manager_task.run_exclusive
        assert (manager.execution_info.requeue_count, read_task_file(client, job_id, "manager")) == (1, "done\n")
