"""Exit conditions: the job action a task's end asks for (on jobs whose onTaskFailure is
performExitOptionsJobAction), chosen by exit code, exit code range, pre-processing error or
default, with the service's defaults; and the exit conditions the service refuses."""
from __future__ import annotations

import asyncio

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .support import batch_client, create_job, unique_id, wait_for, wait_for_task

PERFORM = "performexitoptionsjobaction"


def _options(job_action=None, dependency_action=None) -> models.ExitOptions:
    return models.ExitOptions(job_action=job_action, dependency_action=dependency_action)


def _job_state(client, job_id: str, state: str) -> models.BatchJob:
    return wait_for(lambda: (lambda job: job if job.state == state else None)(client.get_job(job_id)),
                    f"job {job_id} {state}")


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details}


def test_a_failed_task_terminates_the_job_by_default(server, client, pool_id):
    job_id = create_job(client, pool_id, task_failure_mode=PERFORM)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="fails", command_line="/bin/bash -c 'exit 2'"))
    with server.holding("job_terminating"):
        # The task's failure takes the job through terminating, held here so it can be seen.
        _job_state(client, job_id, "terminating")
    job = _job_state(client, job_id, "completed")
    assert job.execution_info.termination_reason == "TaskFailed"
    assert client.get_task(job_id, "fails").execution_info.exit_code == 2


def test_a_failed_task_on_a_noaction_job_leaves_the_job_active(client, pool_id):
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="fails", command_line="/bin/false"))
    wait_for_task(client, job_id, "fails")
    assert client.get_job(job_id).state == "active"


def test_a_successful_task_takes_no_job_action_by_default(client, pool_id):
    job_id = create_job(client, pool_id, task_failure_mode=PERFORM)
    assert wait_for_task(client, job_id, _add(client, job_id, "ok", "/bin/true")).execution_info.result == "success"
    assert client.get_job(job_id).state == "active"


def _add(client, job_id: str, task_id: str, command_line: str, **extra) -> str:
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command_line, **extra))
    return task_id


@pytest.mark.parametrize("exit_code, expected_state", [(3, "active"), (15, "disabled"), (42, "completed")])
def test_exit_codes_and_ranges_choose_the_job_action(client, pool_id, exit_code, expected_state):
    job_id = create_job(client, pool_id, task_failure_mode=PERFORM)
    conditions = models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=3, exit_options=_options("none"))],
        exit_code_ranges=[models.ExitCodeRangeMapping(start=10, end=20, exit_options=_options("disable"))],
        default=_options("terminate"))
    task_id = _add(client, job_id, "t", f"/bin/bash -c 'exit {exit_code}'", exit_conditions=conditions)
    wait_for_task(client, job_id, task_id)
    job = _job_state(client, job_id, expected_state)
    assert client.get_task(job_id, task_id).exit_conditions.exit_code_ranges[0].start == 10
    if expected_state == "completed":
        assert job.execution_info.termination_reason == "TaskFailed"


def test_exit_code_zero_listed_explicitly_can_terminate_the_job(client, pool_id):
    job_id = create_job(client, pool_id, task_failure_mode=PERFORM)
    _add(client, job_id, "done", "/bin/true", exit_conditions=models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=0, exit_options=_options("terminate"))]))
    assert _job_state(client, job_id, "completed").execution_info.termination_reason == "TaskFailed"
    assert client.get_task(job_id, "done").execution_info.result == "success"


@pytest.mark.parametrize("pre_processing, expected_state", [(_options("none"), "active"), (None, "completed")],
                         ids=["preProcessingError-none", "default-terminate"])
def test_a_task_that_cannot_start_takes_the_pre_processing_action(client, pool_id, pre_processing, expected_state):
    job_id = create_job(client, pool_id, task_failure_mode=PERFORM)
    task_id = _add(client, job_id, "no-program", "/no/such/program", exit_conditions=models.ExitConditions(
        pre_processing_error=pre_processing, exit_codes=[models.ExitCodeMapping(code=1, exit_options=_options("none"))]))
    task = wait_for_task(client, job_id, task_id)
    assert task.execution_info.failure_info.code == "CommandProgramNotFound"
    _job_state(client, job_id, expected_state)


def test_a_job_action_on_a_noaction_job_is_refused_naming_it(client, pool_id):
    job_id = create_job(client, pool_id)
    with pytest.raises(HttpResponseError) as caught:
        _add(client, job_id, "t", "/bin/true", exit_conditions=models.ExitConditions(default=_options("terminate")))
    assert (caught.value.status_code, caught.value.error.code) == (400, "InvalidPropertyValue")
    assert _details(caught.value)["PropertyName"] == "exitConditions.default.jobAction"
    # A dependency action alone, or jobAction none, is fine on any job.
    _add(client, job_id, "fine", "/bin/true", exit_conditions=models.ExitConditions(
        default=_options("none", "satisfy")))


def test_a_backwards_exit_code_range_is_refused(client, pool_id):
    job_id = create_job(client, pool_id, task_failure_mode=PERFORM)
    with pytest.raises(HttpResponseError) as caught:
        _add(client, job_id, "t", "/bin/true", exit_conditions=models.ExitConditions(
            exit_code_ranges=[models.ExitCodeRangeMapping(start=9, end=1, exit_options=_options("none"))]))
    assert _details(caught.value)["PropertyName"] == "exitConditions.exitCodeRanges[0]"


def test_exit_conditions_through_the_aio_client(server, pool_id):
    job_id = unique_id("aio-exit")

    async def scenario() -> None:
        async with AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                        WELL_KNOWN_ACCOUNT_KEY)) as client:
            await client.create_job(models.BatchJobCreateOptions(
                id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), task_failure_mode=PERFORM))
            await client.create_task(job_id, models.BatchTaskCreateOptions(
                id="t", command_line="/bin/bash -c 'exit 7'", exit_conditions=models.ExitConditions(
                    exit_codes=[models.ExitCodeMapping(code=7, exit_options=_options("disable"))])))
    asyncio.run(scenario())
    with batch_client(server.url) as client:
        _job_state(client, job_id, "disabled")
