"""Tasks: create (single, collection, create_tasks), list with $filter/$select/paging, get,
terminate, reactivate, delete and replace, through the real SDK."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from .support import (LRO_POLLING, create_job, run_task, unique_id, wait_for, wait_for_all_tasks,
                      wait_for_task)


def _task(task_id: str, command_line: str = "/bin/true", **extra) -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command_line, **extra)


@pytest.fixture
def job_id(client, pool_id) -> str:
    return create_job(client, pool_id)


@pytest.fixture
def held_job_id(client, pool_id) -> str:
    """A disabled job: its tasks stay active, so listings and counts hold still."""
    job = create_job(client, pool_id)
    client.begin_disable_job(job, models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=LRO_POLLING).result()
    return job


# ---- create and get --------------------------------------------------------------------------------
def test_created_task_has_the_service_defaults(client, held_job_id):
    client.create_task(held_job_id, _task("t1", display_name="first"))
    task = client.get_task(held_job_id, "t1")
    assert task.id == "t1" and task.display_name == "first"
    assert task.state == "active"
    assert task.command_line == "/bin/true"
    assert task.required_slots == 1
    assert task.constraints.retention_time == dt.timedelta(days=7)
    assert task.constraints.max_task_retry_count == 0
    assert task.user_identity.auto_user.scope == "pool"
    assert task.user_identity.auto_user.elevation_level == "nonadmin"
    assert task.execution_info.retry_count == 0 and task.execution_info.requeue_count == 0
    assert task.url.endswith(f"/jobs/{held_job_id}/tasks/t1")
    assert re.fullmatch(r"0x[0-9A-F]{15}", task.etag)
    assert task.node_info is None


def test_completed_task_reports_where_and_how_it_ran(client, job_id, pool_id):
    task = run_task(client, job_id, "/bin/true", task_id="ran")
    assert task.state == "completed"
    assert task.previous_state == "running"
    assert task.previous_state_transition_time <= task.state_transition_time
    info = task.execution_info
    assert info.exit_code == 0 and info.result == "success" and info.failure_info is None
    assert info.start_time <= info.end_time
    node = task.node_info
    assert node.pool_id == pool_id
    assert node.affinity_id == f"TVM:{node.node_id}"
    assert node.node_url.endswith(f"/pools/{pool_id}/nodes/{node.node_id}")
    assert node.task_root_directory == f"workitems/{job_id}/job-1/ran"
    assert node.task_root_directory_url == f"{node.node_url}/files/workitems/{job_id}/job-1/ran"


def test_failing_task_reports_failure_exit_code(client, job_id):
    task = run_task(client, job_id, "/bin/bash -c 'exit 3'")
    assert task.execution_info.exit_code == 3
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert task.execution_info.failure_info.code == "FailureExitCode"


def test_create_existing_task_fails_with_task_exists(client, held_job_id):
    client.create_task(held_job_id, _task("dup"))
    with pytest.raises(ResourceExistsError) as caught:
        client.create_task(held_job_id, _task("DUP"))  # ids are case-insensitive
    assert caught.value.error.code == "TaskExists"


def test_get_missing_task_fails_with_task_not_found(client, held_job_id):
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_task(held_job_id, "nope")
    assert caught.value.error.code == "TaskNotFound"


def test_get_task_with_select(client, held_job_id):
    client.create_task(held_job_id, _task("sel"))
    task = client.get_task(held_job_id, "sel", select=["id", "state"])
    assert (task.id, task.state) == ("sel", "active")
    assert task.command_line is None and task.constraints is None


# ---- collections ----------------------------------------------------------------------------------
def test_add_task_collection_answers_per_item_with_task_exists_inside(client, held_job_id):
    client.create_task(held_job_id, _task("b"))
    result = client.create_task_collection(held_job_id, models.BatchTaskGroup(
        task_values=[_task("a"), _task("b"), _task("c")]))
    by_id = {item.task_id: item for item in result.result_values}
    assert set(by_id) == {"a", "b", "c"}
    assert by_id["a"].status == "success" and by_id["c"].status == "success"
    assert re.fullmatch(r"0x[0-9A-F]{15}", by_id["a"].etag)
    assert by_id["a"].location.endswith(f"/jobs/{held_job_id}/tasks/a")
    assert by_id["b"].status == "clienterror"
    assert by_id["b"].error.code == "TaskExists"
    assert sorted(t.id for t in client.list_tasks(held_job_id)) == ["a", "b", "c"]


def test_add_task_collection_reports_a_bad_item_without_failing_the_others(client, held_job_id):
    result = client.create_task_collection(held_job_id, models.BatchTaskGroup(
        task_values=[_task("good"), _task("bad id!")]))
    by_id = {item.task_id: item for item in result.result_values}
    assert by_id["good"].status == "success"
    assert by_id["bad id!"].status == "clienterror"
    assert by_id["bad id!"].error.code == "InvalidPropertyValue"


def test_add_task_collection_of_more_than_100_tasks_is_413(client, held_job_id):
    with pytest.raises(HttpResponseError) as caught:
        client.create_task_collection(held_job_id, models.BatchTaskGroup(
            task_values=[_task(f"t{n}") for n in range(101)]))
    assert caught.value.status_code == 413
    assert caught.value.error.code == "RequestBodyTooLarge"
    assert list(client.list_tasks(held_job_id)) == []


def test_add_task_collection_over_one_megabyte_is_413(client, held_job_id):
    padding = "x" * 30_000
    tasks = [_task(f"t{n}", environment_settings=[models.EnvironmentSetting(name="PAD", value=padding)])
             for n in range(40)]  # about 1.2 MB
    with pytest.raises(HttpResponseError) as caught:
        client.create_task_collection(held_job_id, models.BatchTaskGroup(task_values=tasks))
    assert caught.value.status_code == 413
    assert caught.value.error.code == "RequestBodyTooLarge"
    assert list(client.list_tasks(held_job_id)) == []


def test_create_tasks_splits_oversized_chunks_and_adds_every_task(client, held_job_id):
    padding = "x" * 15_000
    tasks = [_task(f"t{n:03d}", environment_settings=[models.EnvironmentSetting(name="PAD", value=padding)])
             for n in range(150)]  # 100 of them are about 1.5 MB: the SDK halves the chunk on 413
    result = client.create_tasks(held_job_id, tasks)
    assert len(result.result_values) == 150
    assert all(item.status == "success" for item in result.result_values)
    listed = [t.id for t in client.list_tasks(held_job_id, select=["id"])]
    assert listed == [f"t{n:03d}" for n in range(150)]
    assert client.get_task(held_job_id, "t149").environment_settings[0].value == padding


def test_create_tasks_treats_an_existing_task_as_added(client, held_job_id):
    client.create_task(held_job_id, _task("t005"))
    result = client.create_tasks(held_job_id, [_task(f"t{n:03d}") for n in range(10)], max_concurrency=2)
    assert len(result.result_values) == 10
    assert len(list(client.list_tasks(held_job_id))) == 10


def test_create_tasks_reports_client_errors(client, held_job_id):
    with pytest.raises(models.CreateTasksError) as caught:
        client.create_tasks(held_job_id, [_task("fine"), _task("not fine")])
    assert [item.task_id for item in caught.value.failure_tasks] == ["not fine"]
    assert caught.value.failure_tasks[0].error.code == "InvalidPropertyValue"


# ---- list: $filter, $select, paging ----------------------------------------------------------------
def test_list_tasks_filters_on_state_joined_with_and_or(client, job_id, pool_id):
    client.create_tasks(job_id, [_task("ok1"), _task("ok2"), _task("bad", "/bin/false")])
    wait_for_all_tasks(client, job_id)
    held = create_job(client, pool_id)
    client.begin_disable_job(held, models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=LRO_POLLING).result()

    def ids(filter_text: str, job: str = job_id) -> list[str]:
        return [t.id for t in client.list_tasks(job, filter=filter_text)]
    assert ids("state eq 'completed'") == ["bad", "ok1", "ok2"]
    assert ids("state eq 'active'") == []
    assert ids("state eq 'completed' and executionInfo/result eq 'failure'") == ["bad"]
    assert ids("state eq 'completed' and executionInfo/exitCode eq 0") == ["ok1", "ok2"]
    assert ids("state eq 'active' or id eq 'ok2'") == ["ok2"]
    assert ids("(state eq 'running' or state eq 'completed') and startswith(id, 'ok')") == ["ok1", "ok2"]
    client.create_task(held, _task("waiting"))
    assert ids("state eq 'active' or state eq 'running'", held) == ["waiting"]
    assert ids("state ne 'completed'", held) == ["waiting"]


def test_list_tasks_with_an_invalid_filter_is_a_400(client, held_job_id):
    with pytest.raises(HttpResponseError) as caught:
        list(client.list_tasks(held_job_id, filter="state eq 'active' and"))
    assert caught.value.status_code == 400
    assert caught.value.error.code == "InvalidQueryParameterValue"


def test_list_tasks_with_select(client, held_job_id):
    client.create_tasks(held_job_id, [_task("s1"), _task("s2")])
    listed = list(client.list_tasks(held_job_id, select=["id", "state"]))
    assert [(t.id, t.state) for t in listed] == [("s1", "active"), ("s2", "active")]
    assert all(t.command_line is None and t.url is None for t in listed)


def test_list_tasks_pages_across_several_pages(client, held_job_id):
    expected = [f"p{n:02d}" for n in range(23)]
    client.create_tasks(held_job_id, [_task(task_id) for task_id in expected])
    pages = [[t.id for t in page] for page in client.list_tasks(held_job_id, max_results=10).by_page()]
    assert pages == [expected[0:10], expected[10:20], expected[20:23]]
    filtered = [[t.id for t in page] for page in
                client.list_tasks(held_job_id, max_results=4, filter="startswith(id, 'p1')",
                                  select=["id"]).by_page()]
    assert filtered == [expected[10:14], expected[14:18], expected[18:20]]


# ---- actions -----------------------------------------------------------------------------------
def test_terminate_running_task(client, job_id):
    client.create_task(job_id, _task("long", "sleep 60"))
    wait_for_task(client, job_id, "long", states=("running",))
    client.terminate_task(job_id, "long")
    task = wait_for_task(client, job_id, "long")
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code == "TaskEnded"


def test_terminate_active_task_completes_it_without_running(client, held_job_id):
    client.create_task(held_job_id, _task("never"))
    client.terminate_task(held_job_id, "never")
    task = client.get_task(held_job_id, "never")
    assert task.state == "completed"
    assert task.node_info is None
    assert task.execution_info.failure_info.code == "TaskEnded"


def test_reactivate_a_failed_task_runs_it_again(client, job_id, tmp_path):
    flag = tmp_path / "flag"
    # Fails the first time, succeeds once the flag exists.
    command = f"/bin/bash -c 'if [ -e {flag} ]; then echo second; else touch {flag}; exit 2; fi'"
    first = run_task(client, job_id, command, task_id="flaky")
    assert first.execution_info.exit_code == 2
    client.reactivate_task(job_id, "flaky")
    assert client.get_task(job_id, "flaky").state in ("active", "running", "completed")
    second = wait_for(lambda: (t := client.get_task(job_id, "flaky")).state == "completed"
                      and t.execution_info.exit_code == 0 and t, "the reactivated task to succeed")
    assert second.execution_info.result == "success"
    assert second.execution_info.failure_info is None


def test_reactivate_a_succeeded_task_is_a_conflict(client, job_id):
    run_task(client, job_id, "/bin/true", task_id="fine")
    with pytest.raises(ResourceExistsError):
        client.reactivate_task(job_id, "fine")


def test_delete_task_stops_it_and_forgets_it(client, job_id):
    client.create_task(job_id, _task("doomed", "sleep 60"))
    wait_for_task(client, job_id, "doomed", states=("running",))
    client.delete_task(job_id, "doomed")
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_task(job_id, "doomed")
    assert caught.value.error.code == "TaskNotFound"
    assert "doomed" not in [t.id for t in client.list_tasks(job_id)]
    with pytest.raises(ResourceNotFoundError):
        client.delete_task(job_id, "doomed")


def test_replace_task_changes_its_constraints(client, held_job_id):
    client.create_task(held_job_id, _task("constrained"))
    client.replace_task(held_job_id, "constrained", models.BatchTask(
        constraints=models.BatchTaskConstraints(max_task_retry_count=4,
                                                max_wall_clock_time=dt.timedelta(minutes=5))))
    task = client.get_task(held_job_id, "constrained")
    assert task.constraints.max_task_retry_count == 4
    assert task.constraints.max_wall_clock_time == dt.timedelta(minutes=5)
    assert task.constraints.retention_time == dt.timedelta(days=7)


def test_replace_a_completed_task_is_a_conflict(client, job_id):
    run_task(client, job_id, "/bin/true", task_id="finished")
    with pytest.raises(ResourceExistsError) as caught:
        client.replace_task(job_id, "finished", models.BatchTask(
            constraints=models.BatchTaskConstraints(max_task_retry_count=1)))
    assert caught.value.error.code == "TaskCompleted"


# ---- scheduling ------------------------------------------------------------------------------------
def test_max_parallel_tasks_one_runs_tasks_one_after_another(client, pool_id):
    job_id = create_job(client, pool_id, max_parallel_tasks=1)
    client.create_tasks(job_id, [_task(f"s{n}", "sleep 0.1") for n in range(3)])
    wait_for_all_tasks(client, job_id)
    spans = sorted((t.execution_info.start_time, t.execution_info.end_time) for t in client.list_tasks(job_id))
    for (_, earlier_end), (later_start, _) in zip(spans, spans[1:]):
        assert later_start >= earlier_end


def test_affinity_places_a_task_on_the_named_node(client, job_id, pool_id, tmp_path):
    # Spread scheduling puts a task on the node with the most free slots. So make one node busier
    # than the other and name the busier one: only affinity can bring the task there.
    assert client.get_pool(pool_id).task_scheduling_policy.node_fill_type.lower() == "spread"
    wait_for(lambda: all(n.state == "idle" for n in client.list_nodes(pool_id)), "the pool's nodes to be idle")
    gate = tmp_path / "gate"
    client.create_task(job_id, _task("blocker", f"/bin/bash -c 'while [ ! -e {gate} ]; do sleep 0.02; done'"))
    try:
        busy = wait_for_task(client, job_id, "blocker", states=("running",)).node_info.node_id
        slots_in_use = {n.id: n.running_task_slots_count for n in client.list_nodes(pool_id)}
        [other] = set(slots_in_use) - {busy}
        assert (slots_in_use[busy], slots_in_use[other]) == (1, 0)  # 1 free slot against 2: spread picks `other`

        task = run_task(client, job_id, "/bin/true", affinity_info=models.BatchAffinityInfo(affinity_id=f"TVM:{busy}"))

        assert task.node_info.node_id == busy
    finally:
        gate.touch()
    wait_for_task(client, job_id, "blocker")


def test_required_slots_fill_a_node(client, pool_id):
    job_id = create_job(client, pool_id)
    client.create_tasks(job_id, [_task(f"w{n}", "sleep 60", required_slots=2) for n in range(3)])
    wait_for(lambda: len(list(client.list_tasks(job_id, filter="state eq 'running'"))) == 2,
             "two two-slot tasks to run")
    # Two nodes with two slots each: the third two-slot task has to wait.
    assert [t.id for t in client.list_tasks(job_id, filter="state eq 'active'")] != []
    nodes = list(client.list_nodes(pool_id))
    assert sorted(n.running_task_slots_count for n in nodes) == [2, 2]
    assert all(n.state == "running" for n in nodes)
    client.begin_terminate_job(job_id, options=models._models.BatchJobTerminateOptions(termination_reason="done"),
                               polling_interval=LRO_POLLING).result()
    wait_for(lambda: all(n.state == "idle" for n in client.list_nodes(pool_id)), "the nodes to be idle again")


def test_task_ids_are_checked(client, held_job_id):
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(held_job_id, _task("x" * 65))
    assert caught.value.status_code == 400
    assert caught.value.error.code == "InvalidPropertyValue"


def test_a_task_with_an_unknown_program_fails_with_a_clear_code(client, job_id):
    task = run_task(client, job_id, "no-such-program-anywhere --flag")
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert task.execution_info.failure_info.code == "CommandProgramNotFound"
    assert "no-such-program-anywhere" in task.execution_info.failure_info.message


def test_unique_task_ids_across_jobs(client, pool_id):
    first, second = create_job(client, pool_id), create_job(client, pool_id)
    run_task(client, first, "/bin/echo one", task_id="same")
    run_task(client, second, "/bin/echo two", task_id="same")
    assert b"".join(client.download_task_file(first, "same", "stdout.txt")) == b"one\n"
    assert b"".join(client.download_task_file(second, "same", "stdout.txt")) == b"two\n"
