"""Task dependencies: tasks wait (active, never scheduled) until what they depend on completes
with a dependency action of satisfy; the errors the service gives for dependencies it refuses."""
from __future__ import annotations

import asyncio

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.batch.models import CreateTasksError
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .support import batch_client, create_job, read_task_file, wait_for_all_tasks, wait_for_task


def _task(task_id: str, command_line: str = "/bin/true", **extra) -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command_line, **extra)


def _after(*task_ids: str, ranges: tuple[tuple[int, int], ...] = ()) -> models.BatchTaskDependencies:
    return models.BatchTaskDependencies(
        task_ids=list(task_ids) or None,
        task_id_ranges=[models.BatchTaskIdRange(start=start, end=end) for start, end in ranges] or None)


def _gated(gate) -> str:
    return f"/bin/bash -c 'while [ ! -e {gate} ]; do sleep 0.02; done'"


def test_the_job_reports_uses_task_dependencies(client, pool_id):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    assert client.get_job(job_id).uses_task_dependencies is True
    assert client.get_job(create_job(client, pool_id)).uses_task_dependencies is False


def test_a_dependent_task_stays_active_until_its_dependency_succeeds(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    gate = tmp_path / "gate"
    client.create_task(job_id, _task("first", _gated(gate)))
    client.create_task(job_id, _task("second", "/bin/bash -c 'echo second ran'", depends_on=_after("first")))
    try:
        wait_for_task(client, job_id, "first", states=("running",))
        # The pool has free slots: only the dependency keeps "second" from running.
        second = client.get_task(job_id, "second")
        assert second.state == "active"
        assert second.depends_on.task_ids == ["first"]
        assert second.node_info is None
    finally:
        gate.touch()
    second = wait_for_task(client, job_id, "second")
    assert second.execution_info.result == "success"
    first = client.get_task(job_id, "first")
    assert second.execution_info.start_time >= first.execution_info.end_time
    assert read_task_file(client, job_id, "second") == "second ran\n"


def test_a_failed_dependency_blocks_its_dependents(client, pool_id):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    client.create_tasks(job_id, [_task("fails", "/bin/false"), _task("after", depends_on=_after("fails")),
                                 _task("unrelated")])
    wait_for_task(client, job_id, "fails")
    wait_for_task(client, job_id, "unrelated")
    assert client.get_task(job_id, "after").state == "active"
    counts = client.get_job_task_counts(job_id).task_counts
    assert (counts.active, counts.completed, counts.failed) == (1, 2, 1)


def test_dependency_action_satisfy_lets_dependents_run_after_a_failure(client, pool_id):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    satisfy_on_3 = models.ExitConditions(exit_codes=[models.ExitCodeMapping(
        code=3, exit_options=models.ExitOptions(dependency_action="satisfy"))])
    client.create_tasks(job_id, [
        _task("exits-3", "/bin/bash -c 'exit 3'", exit_conditions=satisfy_on_3),
        _task("runs-anyway", depends_on=_after("exits-3"))])
    assert wait_for_task(client, job_id, "runs-anyway").execution_info.result == "success"
    assert client.get_task(job_id, "exits-3").execution_info.result == "failure"


def test_dependency_action_block_holds_dependents_after_a_success(client, pool_id):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    block_on_0 = models.ExitConditions(exit_codes=[models.ExitCodeMapping(
        code=0, exit_options=models.ExitOptions(dependency_action="block"))])
    client.create_tasks(job_id, [_task("succeeds", exit_conditions=block_on_0),
                                 _task("held", depends_on=_after("succeeds")), _task("marker")])
    wait_for_task(client, job_id, "succeeds")
    wait_for_task(client, job_id, "marker")
    assert client.get_task(job_id, "held").state == "active"


def test_id_ranges_select_the_integer_ids_inside_them(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    gate = tmp_path / "gate"
    # "5a" and "07" are outside the range 1..10 (not integer ids); "12" is past its end.
    client.create_tasks(job_id, [_task("3"), _task("7"), _task("5a", _gated(gate)), _task("07", _gated(gate)),
                                 _task("12", _gated(gate)),
                                 _task("after-range", depends_on=_after(ranges=((1, 10),)))])
    try:
        done = wait_for_task(client, job_id, "after-range")
        assert done.execution_info.result == "success"
        assert {client.get_task(job_id, t).state for t in ("5a", "07", "12")} <= {"active", "running"}
    finally:
        gate.touch()
    wait_for_all_tasks(client, job_id)


def test_a_dependency_added_later_is_waited_for(client, pool_id):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    client.create_task(job_id, _task("waits", depends_on=_after("later")))
    client.create_task(job_id, _task("marker"))
    wait_for_task(client, job_id, "marker")
    assert client.get_task(job_id, "waits").state == "active"
    client.create_task(job_id, _task("later"))
    assert wait_for_task(client, job_id, "waits").execution_info.result == "success"


def test_a_chain_in_one_collection_runs_in_order(client, pool_id):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    # Listed last-first: each depends on a task that comes later in the same collection.
    chain = [_task(f"step{i}", f"/bin/bash -c 'echo {i} >> $AZ_BATCH_NODE_SHARED_DIR/{job_id}.txt'",
                   depends_on=_after(f"step{i - 1}") if i else None) for i in range(4, -1, -1)]
    client.create_tasks(job_id, chain)
    wait_for_all_tasks(client, job_id)
    ends = [client.get_task(job_id, f"step{i}").execution_info for i in range(5)]
    for earlier, later in zip(ends, ends[1:]):
        assert later.start_time >= earlier.end_time


def test_reactivating_a_failed_dependency_releases_its_dependents(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    fixed = tmp_path / "fixed"
    client.create_tasks(job_id, [_task("flaky", f"/bin/bash -c '[ -e {fixed} ]'"),
                                 _task("after", depends_on=_after("flaky"))])
    assert wait_for_task(client, job_id, "flaky").execution_info.result == "failure"
    assert client.get_task(job_id, "after").state == "active"
    fixed.touch()
    client.reactivate_task(job_id, "flaky")
    assert wait_for_task(client, job_id, "after").execution_info.result == "success"


@pytest.mark.parametrize("depends_on, code, status, property_name", [
    (_after("me"), "InvalidPropertyValue", 400, "dependsOn.taskIds"),
    (_after(ranges=((5, 2),)), "InvalidPropertyValue", 400, "dependsOn.taskIdRanges[0]"),
    (_after("x" * 64, *["y" * 64] * 1000), "TaskDependencyListTooLong", 400, None),
], ids=["itself", "backwards-range", "too-long"])
def test_dependencies_the_service_refuses(client, pool_id, depends_on, code, status, property_name):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, _task("me", depends_on=depends_on))
    assert (caught.value.status_code, caught.value.error.code) == (status, code)
    if property_name:
        assert {d.code: d.message for d in caught.value.error.details}["PropertyName"] == property_name


def test_depends_on_needs_a_job_that_uses_task_dependencies(client, pool_id):
    job_id = create_job(client, pool_id)
    with pytest.raises(ResourceExistsError) as caught:
        client.create_task(job_id, _task("t", depends_on=_after("a")))
    assert caught.value.error.code == "TaskDependenciesNotSpecifiedOnJob"
    # In a collection the error is the item's, and the other items are added.
    with pytest.raises(CreateTasksError) as refused:
        client.create_tasks(job_id, [_task("free"), _task("bound", depends_on=_after("free"))])
    [failure] = refused.value.failure_tasks
    assert (failure.task_id, failure.status, failure.error.code) == (
        "bound", "clienterror", "TaskDependenciesNotSpecifiedOnJob")
    assert client.get_task(job_id, "free").id == "free"


def test_dependencies_through_the_aio_client(server, pool_id):
    async def scenario() -> str:
        async with AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                        WELL_KNOWN_ACCOUNT_KEY)) as client:
            job_id = f"aio-deps-{pool_id[-6:]}"
            await client.create_job(models.BatchJobCreateOptions(
                id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), uses_task_dependencies=True))
            await client.create_tasks(job_id, [_task("b", depends_on=_after("a")), _task("a")])
            return job_id
    job_id = asyncio.run(scenario())
    with batch_client(server.url) as client:
        after = wait_for_task(client, job_id, "b")
        assert after.execution_info.start_time >= client.get_task(job_id, "a").execution_info.end_time
