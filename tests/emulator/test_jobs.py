"""Jobs: create (on a pool or with an auto-pool), get, list, patch/replace, terminate,
disable/enable, delete, onAllTasksComplete and task counts, through the real SDK."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from .support import (LRO_POLLING, create_job, create_pool_and_wait, pool_options, run_task, terminate_options,
                      ubuntu_configuration, unique_id, wait_for, wait_for_all_tasks, wait_for_task)


def test_create_and_get_job_on_a_pool_has_the_service_defaults(client, pool_id):
    job_id = create_job(client, pool_id)
    job = client.get_job(job_id)
    assert job.id == job_id and job.state == "active"
    assert job.pool_info.pool_id == pool_id
    assert job.execution_info.pool_id == pool_id
    assert job.execution_info.start_time is not None
    assert job.priority == 0
    assert job.max_parallel_tasks == -1
    assert job.uses_task_dependencies is False
    assert job.constraints.max_task_retry_count == 0
    assert job.constraints.max_wall_clock_time > dt.timedelta(days=10000)
    assert job.all_tasks_complete_mode == "noaction"
    assert job.task_failure_mode == "noaction"
    assert job.url.endswith(f"/jobs/{job_id}")
    assert re.fullmatch(r"0x[0-9A-F]{15}", job.etag)


def test_create_existing_job_fails_with_job_exists(client, pool_id):
    job_id = create_job(client, pool_id)
    with pytest.raises(ResourceExistsError) as caught:
        create_job(client, pool_id, job_id)
    assert caught.value.error.code == "JobExists"
    assert "The specified job already exists." in caught.value.error.message


@pytest.mark.parametrize("call", [
    lambda c: c.get_job("no-such-job"),
    lambda c: c.get_job_task_counts("no-such-job"),
    lambda c: list(c.list_tasks("no-such-job")),
    lambda c: c.create_task("no-such-job", models.BatchTaskCreateOptions(id="t", command_line="/bin/true")),
    lambda c: c.begin_delete_job("no-such-job", polling_interval=LRO_POLLING),
    lambda c: c.update_job("no-such-job", models.BatchJobUpdateOptions(priority=1)),
], ids=["get", "taskcounts", "list-tasks", "create-task", "delete", "update"])
def test_operations_on_a_missing_job_fail_with_job_not_found(client, call):
    with pytest.raises(ResourceNotFoundError) as caught:
        call(client)
    assert caught.value.error.code == "JobNotFound"


def test_list_jobs_with_filter_and_select(client, pool_id):
    prefix = unique_id("listjob")
    ids = [create_job(client, pool_id, f"{prefix}-{n}") for n in range(3)]
    listed = list(client.list_jobs(filter=f"startswith(id, '{prefix}') and state eq 'active'", select=["id", "state"]))
    assert [job.id for job in listed] == ids
    assert all(job.pool_info is None for job in listed)  # not selected
    assert [j.id for j in client.list_jobs(filter=f"id eq '{ids[2]}'")] == [ids[2]]


def test_update_job_patches_and_replace_job_replaces(client, pool_id):
    job_id = create_job(client, pool_id, metadata=[models.BatchMetadataItem(name="a", value="1")])
    client.update_job(job_id, models.BatchJobUpdateOptions(priority=100, max_parallel_tasks=3))
    patched = client.get_job(job_id)
    assert patched.priority == 100 and patched.max_parallel_tasks == 3
    assert [(m.name, m.value) for m in patched.metadata] == [("a", "1")]

    client.replace_job(job_id, models.BatchJob(pool_info=models.BatchPoolInfo(pool_id=pool_id), priority=-5))
    replaced = client.get_job(job_id)
    assert replaced.priority == -5
    assert replaced.metadata is None
    assert replaced.etag != patched.etag


def test_terminate_job_ends_running_tasks_and_completes_with_the_reason(client, pool_id):
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="sleeper", command_line="sleep 60"))
    wait_for_task(client, job_id, "sleeper", states=("running",))
    client.begin_terminate_job(job_id, options=terminate_options("enough"), polling_interval=LRO_POLLING).result()
    job = client.get_job(job_id)
    assert job.state == "completed"
    assert job.execution_info.termination_reason == "enough"
    assert job.execution_info.end_time is not None
    task = client.get_task(job_id, "sleeper")
    assert task.state == "completed"
    assert task.execution_info.result == "failure"
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(id="late", command_line="/bin/true"))
    assert caught.value.error.code == "JobCompleted"


def test_terminate_a_completed_job_is_a_conflict(client, pool_id):
    job_id = create_job(client, pool_id)
    client.begin_terminate_job(job_id, options=terminate_options(), polling_interval=LRO_POLLING).result()
    with pytest.raises(ResourceExistsError) as caught:
        client.begin_terminate_job(job_id, options=terminate_options(), polling_interval=LRO_POLLING)
    assert caught.value.error.code == "JobCompleted"


def test_disable_job_requeues_running_tasks_and_enable_resumes_them(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id)
    gate = tmp_path / "gate"
    # Runs until the gate file exists; prints how many times it started.
    script = (f"echo started >> {tmp_path}/starts; "
              f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done")
    client.create_task(job_id, models.BatchTaskCreateOptions(id="gated", command_line=f"/bin/bash -c '{script}'"))
    starts = tmp_path / "starts"
    wait_for(lambda: starts.exists() and starts.read_text(), "the task's program to start")
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="requeue"),
                             polling_interval=LRO_POLLING).result()
    assert client.get_job(job_id).state == "disabled"
    task = wait_for_task(client, job_id, "gated", states=("active",))
    assert task.execution_info.requeue_count == 1

    gate.touch()
    client.begin_enable_job(job_id, polling_interval=LRO_POLLING).result()
    assert client.get_job(job_id).state == "active"
    task = wait_for_task(client, job_id, "gated")
    assert task.execution_info.exit_code == 0
    assert starts.read_text().count("started") == 2


def test_disabled_job_starts_no_tasks(client, pool_id):
    job_id = create_job(client, pool_id)
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=LRO_POLLING).result()
    client.create_task(job_id, models.BatchTaskCreateOptions(id="waits", command_line="/bin/true"))
    assert client.get_task(job_id, "waits").state == "active"
    # Disabling a disabled job changes nothing; a completed one cannot be disabled.
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=LRO_POLLING).result()
    assert client.get_job(job_id).state == "disabled"
    client.begin_enable_job(job_id, polling_interval=LRO_POLLING).result()
    assert wait_for_task(client, job_id, "waits").execution_info.exit_code == 0


def test_delete_job_goes_through_deleting_and_removes_its_tasks(server, client):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=1)
    job_id = create_job(client, pool_id)
    run_task(client, job_id, "/bin/true", task_id="done")
    with server.holding("job_deleting"):
        poller = client.begin_delete_job(job_id, polling_interval=LRO_POLLING)
        assert client.get_job(job_id).state == "deleting"
        with pytest.raises(ResourceExistsError) as caught:
            create_job(client, pool_id, job_id)
        assert caught.value.error.code == "JobBeingDeleted"
    poller.result()
    with pytest.raises(ResourceNotFoundError):
        client.get_job(job_id)
    # A new job may reuse the id and starts empty.
    create_job(client, pool_id, job_id)
    assert list(client.list_tasks(job_id)) == []


def test_on_all_tasks_complete_terminatejob_completes_the_job(client, pool_id):
    # The documented pattern: add the tasks under noaction, then switch to terminatejob.
    job_id = create_job(client, pool_id)
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{n}", command_line="/bin/true")
                                 for n in range(4)])
    client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    job = wait_for(lambda: (j := client.get_job(job_id)).state == "completed" and j, "the job to complete")
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert all(task.state == "completed" for task in client.list_tasks(job_id))


def test_a_job_created_with_terminatejob_and_no_tasks_completes_at_once(client, pool_id):
    # "If a Job contains no Tasks, then all Tasks are considered complete."
    job_id = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                                   all_tasks_complete_mode="terminatejob"))
    job = wait_for(lambda: (j := client.get_job(job_id)).state == "completed" and j, "the job to complete")
    assert job.execution_info.termination_reason == "AllTasksComplete"
    with pytest.raises(ResourceExistsError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(id="late", command_line="/bin/true"))
    assert caught.value.error.code == "JobCompleted"


def test_terminatejob_cannot_be_turned_off_again(client, pool_id):
    job_id = create_job(client, pool_id)
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=LRO_POLLING).result()
    client.create_task(job_id, models.BatchTaskCreateOptions(id="held", command_line="/bin/true"))
    client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    with pytest.raises(HttpResponseError) as caught:
        client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="noaction"))
    assert caught.value.status_code == 400
    assert caught.value.error.code == "InvalidPropertyValue"
    with pytest.raises(HttpResponseError) as caught:  # a PUT without it means noaction
        client.replace_job(job_id, models.BatchJob(pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    assert caught.value.status_code == 400
    assert client.get_job(job_id).all_tasks_complete_mode == "terminatejob"


def test_task_counts_count_tasks_and_slots(client, pool_id):
    job_id = create_job(client, pool_id)
    client.create_tasks(job_id, [
        models.BatchTaskCreateOptions(id="ok1", command_line="/bin/true"),
        models.BatchTaskCreateOptions(id="ok2", command_line="/bin/true", required_slots=2),
        models.BatchTaskCreateOptions(id="bad", command_line="/bin/false", required_slots=2),
    ])
    wait_for_all_tasks(client, job_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="blocked", command_line="/bin/true",
                                                             required_slots=2))
    counts = client.get_job_task_counts(job_id)
    # `blocked` may already have run; count it wherever it is.
    if counts.task_counts.active == 1:
        assert counts.task_counts.completed == 3
        assert counts.task_slot_counts.active == 2
    else:
        assert counts.task_counts.completed + counts.task_counts.running == 4
    assert counts.task_counts.failed == 1
    assert counts.task_slot_counts.failed == 2
    assert counts.task_slot_counts.succeeded + counts.task_slot_counts.failed >= 5

    wait_for_all_tasks(client, job_id)
    final = client.get_job_task_counts(job_id)
    assert (final.task_counts.completed, final.task_counts.succeeded, final.task_counts.failed) == (4, 3, 1)
    assert (final.task_slot_counts.completed, final.task_slot_counts.succeeded,
            final.task_slot_counts.failed) == (7, 5, 2)
    assert final.task_counts.active == final.task_counts.running == 0


# ---- auto-pools --------------------------------------------------------------------------------
def _auto_pool_job(client, job_id: str, prefix: str | None = None, **job_extra) -> None:
    client.create_job(models.BatchJobCreateOptions(
        id=job_id,
        pool_info=models.BatchPoolInfo(auto_pool_specification=models.BatchAutoPoolSpecification(
            pool_lifetime_option="job", auto_pool_id_prefix=prefix,
            pool=models.BatchPoolSpecification(vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                                               virtual_machine_configuration=ubuntu_configuration()))),
        **job_extra))


def test_auto_pool_is_created_for_the_job_and_deleted_with_it(client):
    job_id = unique_id("autojob")
    _auto_pool_job(client, job_id)
    job = client.get_job(job_id)
    auto_pool_id = job.execution_info.pool_id
    assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}", auto_pool_id)
    assert client.get_pool(auto_pool_id).target_dedicated_nodes == 1

    task = run_task(client, job_id, "/bin/true")
    assert task.node_info.pool_id == auto_pool_id
    client.begin_delete_job(job_id, polling_interval=LRO_POLLING).result()
    wait_for(lambda: auto_pool_id not in [p.id for p in client.list_pools()], "the auto-pool to go away")


def test_auto_pool_goes_away_when_the_job_completes(client):
    job_id = unique_id("autojob")
    _auto_pool_job(client, job_id, prefix="sample")
    auto_pool_id = client.get_job(job_id).execution_info.pool_id
    assert auto_pool_id.startswith("sample_")
    client.create_task(job_id, models.BatchTaskCreateOptions(id="only", command_line="/bin/true"))
    client.update_job(job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait_for(lambda: client.get_job(job_id).state == "completed", "the job to complete")
    wait_for(lambda: auto_pool_id not in [p.id for p in client.list_pools()], "the auto-pool to go away")
    assert client.get_task(job_id, "only").execution_info.exit_code == 0


def test_auto_pool_with_an_unsupported_image_names_the_nested_property(client):
    with pytest.raises(HttpResponseError) as caught:
        client.create_job(models.BatchJobCreateOptions(
            id=unique_id("autojob"),
            pool_info=models.BatchPoolInfo(auto_pool_specification=models.BatchAutoPoolSpecification(
                pool_lifetime_option="job",
                pool=models.BatchPoolSpecification(
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=models.VirtualMachineConfiguration(
                        image_reference=models.BatchVmImageReference(publisher="x", offer="y", sku="z"),
                        node_agent_sku_id="batch.node.ubuntu 22.04"))))))
    assert caught.value.status_code == 400
    details = {d.code: d.message for d in caught.value.error.details}
    assert details["PropertyName"].startswith("poolInfo.autoPoolSpecification.pool.")


def test_job_on_a_missing_pool_waits_without_failing(client):
    job_id = create_job(client, unique_id("missingpool"))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    assert client.get_task(job_id, "t").state == "active"
    assert client.get_job(job_id).state == "active"


def test_job_ids_with_invalid_characters_are_rejected(client, pool_id):
    with pytest.raises(HttpResponseError) as caught:
        create_job(client, pool_id, "bad/job")
    assert caught.value.status_code == 400
    assert caught.value.error.code == "InvalidPropertyValue"


def test_pool_can_be_created_after_the_job_that_names_it(client):
    pool_id = unique_id("late")
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    client.create_pool(pool_options(pool_id, nodes=1))
    assert wait_for_task(client, job_id, "t").execution_info.exit_code == 0


def test_updating_job_constraints_fills_defaults_and_rearms_the_wall_clock(client, pool_id):
    job_id = create_job(client, pool_id)
    client.update_job(job_id, models.BatchJobUpdateOptions(constraints=models.BatchJobConstraints(
        max_wall_clock_time=dt.timedelta(milliseconds=300))))
    job = client.get_job(job_id)
    assert job.constraints.max_task_retry_count == 0
    assert job.constraints.max_wall_clock_time == dt.timedelta(milliseconds=300)
    ended = wait_for(lambda: (j := client.get_job(job_id)).state == "completed" and j, "the job's time to run out")
    assert ended.execution_info.termination_reason == "MaxWallClockTimeExpiry"


def test_deleting_a_job_removes_its_task_directories_from_the_nodes(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/echo hi")
    path = f"workitems/{job_id}/job-1/{task.id}/stdout.txt"
    assert client.get_node_file_properties(pool_id, task.node_info.node_id, path).content_length == 3
    client.begin_delete_job(job_id, polling_interval=LRO_POLLING).result()
    names = [f.name for f in client.list_node_files(pool_id, task.node_info.node_id, recursive=True)]
    assert not any(name.startswith(f"workitems/{job_id}") for name in names)


def test_higher_priority_jobs_run_first(client):
    pool = unique_id("prio")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    # Hold the node while both jobs fill up, so the scheduler sees all tasks at once.
    client.disable_node_scheduling(pool, node.id, models.BatchNodeDisableSchedulingOptions(
        node_disable_scheduling_option="requeue"))
    low = create_job(client, pool, priority=-100)
    high = create_job(client, pool, priority=500)
    client.create_tasks(low, [models.BatchTaskCreateOptions(id=f"low{n}", command_line="/bin/true") for n in range(3)])
    client.create_tasks(high, [models.BatchTaskCreateOptions(id=f"high{n}", command_line="/bin/true")
                               for n in range(3)])
    client.enable_node_scheduling(pool, node.id)
    wait_for_all_tasks(client, low)
    wait_for_all_tasks(client, high)
    last_high = max(t.execution_info.start_time for t in client.list_tasks(high))
    first_low = min(t.execution_info.start_time for t in client.list_tasks(low))
    assert last_high <= first_low


@pytest.mark.parametrize("fill_type, distinct_nodes", [("spread", 2), ("pack", 1)])
def test_node_fill_type(client, fill_type, distinct_nodes):
    pool = unique_id("fill")
    client.create_pool(pool_options(pool, nodes=2, task_slots_per_node=2,
                                    task_scheduling_policy=models.BatchTaskSchedulingPolicy(node_fill_type=fill_type)))
    wait_for(lambda: len([n for n in client.list_nodes(pool) if n.state == "idle"]) == 2, "two idle nodes")
    job_id = create_job(client, pool)
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{n}", command_line="sleep 0.3") for n in range(2)])
    wait_for_all_tasks(client, job_id)
    assert len({t.node_info.node_id for t in client.list_tasks(job_id)}) == distinct_nodes


def test_deleting_a_pool_requeues_its_running_tasks(client):
    pool = unique_id("gone")
    client.create_pool(pool_options(pool, nodes=1))
    job_id = create_job(client, pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="orphan", command_line="sleep 60"))
    wait_for_task(client, job_id, "orphan", states=("running",))
    client.begin_delete_pool(pool, polling_interval=LRO_POLLING).result()
    task = wait_for_task(client, job_id, "orphan", states=("active",))  # once its process is seen to end
    assert task.execution_info.requeue_count == 1
    assert task.node_info is None or task.node_info.pool_id == pool


def test_disable_with_wait_lets_running_tasks_finish_before_the_job_is_disabled(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id)
    gate, started = tmp_path / "gate", tmp_path / "started"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="finishing", command_line=f"/bin/bash -c 'touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done'"))
    wait_for(lambda: started.exists(), "the task to start")
    poller = client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="wait"),
                                      polling_interval=LRO_POLLING)
    assert client.get_job(job_id).state == "disabling"  # until the running task is done
    assert client.get_task(job_id, "finishing").state == "running"
    gate.touch()
    poller.result()
    assert client.get_job(job_id).state == "disabled"
    task = client.get_task(job_id, "finishing")
    assert task.state == "completed" and task.execution_info.exit_code == 0
    assert task.execution_info.requeue_count == 0


def test_a_completed_job_cannot_be_disabled(client, pool_id):
    job_id = create_job(client, pool_id)
    client.begin_terminate_job(job_id, options=terminate_options(), polling_interval=LRO_POLLING).result()
    with pytest.raises(ResourceExistsError) as caught:
        client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="requeue"),
                                 polling_interval=LRO_POLLING)
    assert caught.value.error.code == "JobNotActive"
