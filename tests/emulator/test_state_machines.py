"""Illegal state transitions attempted through the API get the error the real Batch service gives.

One table: each case brings a pool, job, task or node into a state through the SDK, then makes
the call that state does not allow, and expects 409 Conflict with the service's error code.
Above each case, a comment names where its expected code comes from. Where the sources do not
settle the exact code, the case accepts only the candidates they leave open (and says so).

Sources, referred to below as:
  [codes]  Microsoft's "Batch Status and Error Codes" (learn.microsoft.com/rest/api/batchservice/
           batch-status-and-error-codes) and the SDKs' error code lists generated from the same
           service (Microsoft.Azure.Batch.Common.BatchErrorCodeStrings, Azure.Compute.Batch.BatchErrorCode):
           code, status and meaning of each documented error.
  [rest]   the Batch REST reference for the operation (learn.microsoft.com/rest/api/batchservice/...).
  [js]     Azure/azure-sdk-for-js sdk/batch/batch/test/batchClient.spec.ts, run against the service.
  [tes]    microsoft/ga4gh-tes src/TesApi.Web/AzureProxy.cs (Microsoft's TES on Azure Batch), which
           handles the codes the service sends it.
  [tower]  seqeralabs/nf-tower issue #385: a real 409 body logged from the Batch service.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from azure.batch import BatchClient, models
from azure.core.exceptions import HttpResponseError

from localbatch import LocalBatchServer
from localbatch.domain.runtime import STEPS

from .conftest import fast_timings
from .support import (LRO_POLLING, batch_client, create_job, pool_options, reboot_options, run_task,
                      terminate_options, ubuntu_configuration, unique_id, wait_for)

# Every 409 code in [codes], plus NodeNotReady, which [js] and [tes] show the service sends
# although the published table lacks it. A code outside this set is one the service never sends.
DOCUMENTED_CONFLICTS = frozenset({
    "OperationInvalidForCurrentState", "PoolBeingDeleted", "PoolBeingResized", "PoolBeingCreated",
    "NodeBeingCreated", "NodeBeingStarted", "NodeBeingReimaged", "NodeBeingRebooted", "NodeStateUnusable",
    "PoolExists", "JobExists", "NodeUserExists", "JobBeingTerminated", "JobBeingDeleted", "JobDisabled",
    "JobCompleted", "JobNotActive", "TaskExists", "TaskCompleted", "TaskNotCompleted", "TaskSucceeded",
    "TaskFilesUnavailable", "TaskFilesCleanedup", "NodeAlreadyInTargetSchedulingState",
    "OperationNotValidOnNode", "OperationNotValidOnPool", "NodeNotReady",
})


@pytest.fixture(scope="module")
def stalled_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchClient]:
    """A client of a server whose infrastructure steps are all held, so a pool stays resizing
    or deleting for as long as the module needs it to."""
    with LocalBatchServer(str(tmp_path_factory.mktemp("localbatch-stalled")), timings=fast_timings()) as running:
        with running.holding(*STEPS), batch_client(running.url) as client:
            yield client


@dataclass
class Context:
    client: BatchClient           # fast server: steps finish at once
    stalled: BatchClient          # held server: transitional states last until the module ends
    pool_id: str                  # on `client`: two idle nodes, two slots each
    tmp_path: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)


@pytest.fixture
def context(client, stalled_client, pool_id, tmp_path) -> Iterator[Context]:
    made = Context(client, stalled_client, pool_id, tmp_path)
    yield made
    for cleanup in reversed(made.cleanups):
        cleanup()


Attempt = Callable[[], object]


# ---- jobs ---------------------------------------------------------------------------------------
def _completed_job(ctx: Context) -> str:
    job_id = create_job(ctx.client, ctx.pool_id)
    ctx.client.begin_terminate_job(job_id, options=terminate_options(), polling_interval=LRO_POLLING).result()
    assert ctx.client.get_job(job_id).state == "completed", "precondition"
    return job_id


# [codes] JobCompleted, 409: "A job operation was attempted which is not permitted when the job has
# been completed" / "The specified job is already in a completed state."
def terminate_a_completed_job(ctx: Context) -> Attempt:
    job_id = _completed_job(ctx)
    return lambda: ctx.client.begin_terminate_job(job_id, options=terminate_options(), polling_interval=LRO_POLLING)


# [rest] Job - Disable: "If you try to disable a Job that is in any state other than active,
# disabling, or disabled, the request fails with status code 409." The code is not given there;
# [codes] has two that fit a completed job, JobCompleted and JobNotActive. Unresolved between them.
def disable_a_completed_job(ctx: Context) -> Attempt:
    job_id = _completed_job(ctx)
    return lambda: ctx.client.begin_disable_job(
        job_id, models.BatchJobDisableOptions(disable_tasks="requeue"), polling_interval=LRO_POLLING)


# [rest] Job - Enable only moves a disabled Job to enabling; it names no error code, and no source
# shows the one for an active job. "JobNotDisabled" appears in no Microsoft list: the code must at
# least be one the service documents (the emulator's OperationInvalidForCurrentState is).
def enable_an_active_job(ctx: Context) -> Attempt:
    job_id = create_job(ctx.client, ctx.pool_id)
    return lambda: ctx.client.begin_enable_job(job_id, polling_interval=LRO_POLLING)


# ---- tasks --------------------------------------------------------------------------------------
# [rest] Task - Reactivate: "Reactivation will fail for Tasks that are not completed or that
# previously completed successfully (with an exit code of 0)." [codes] has one code for each:
# TaskNotCompleted, 409: "The specified task is not in a completed state, and the requested
# operation can be performed only on completed tasks."
def reactivate_a_task_that_has_not_run(ctx: Context) -> Attempt:
    pool = unique_id("empty")
    ctx.client.create_pool(pool_options(pool, nodes=0))  # no node: the task stays active
    job_id = create_job(ctx.client, pool)
    ctx.client.create_task(job_id, models.BatchTaskCreateOptions(id="waiting", command_line="/bin/true"))
    assert ctx.client.get_task(job_id, "waiting").state == "active", "precondition"
    return lambda: ctx.client.reactivate_task(job_id, "waiting")


# [rest] as above; [codes] TaskSucceeded, 409: "The specified task has already completed
# successfully, and the requested operation cannot be performed on successful tasks."
def reactivate_a_task_that_succeeded(ctx: Context) -> Attempt:
    job_id = create_job(ctx.client, ctx.pool_id)
    assert run_task(ctx.client, job_id, "/bin/true", task_id="fine").execution_info.exit_code == 0, "precondition"
    return lambda: ctx.client.reactivate_task(job_id, "fine")


# [tower] the service answered a terminate of a completed task with 409 TaskCompleted ("The
# specified task is already in a completed state."), and [tes] treats exactly that answer to its
# terminate as "the task had already completed". Not a no-op 204.
def terminate_a_completed_task(ctx: Context) -> Attempt:
    job_id = create_job(ctx.client, ctx.pool_id)
    run_task(ctx.client, job_id, "/bin/true", task_id="done")
    return lambda: ctx.client.terminate_task(job_id, "done")


# [codes] TaskCompleted, 409: "A task operation was attempted which is not permitted when the
# task has been completed."
def update_a_completed_task(ctx: Context) -> Attempt:
    job_id = create_job(ctx.client, ctx.pool_id)
    run_task(ctx.client, job_id, "/bin/true", task_id="done")
    return lambda: ctx.client.replace_task(job_id, "done", models.BatchTask(
        constraints=models.BatchTaskConstraints(max_task_retry_count=2)))


# ---- pools and nodes ----------------------------------------------------------------------------
# [js] deletes a pool that is already being deleted and expects PoolBeingDeleted; [tes] catches
# PoolBeingDeleted from its delete as "a deletion race condition". [codes] PoolBeingDeleted, 409.
def delete_a_pool_twice(ctx: Context) -> Attempt:
    pool = unique_id("doomed")
    ctx.stalled.create_pool(pool_options(pool, nodes=0))
    ctx.stalled.begin_delete_pool(pool, polling_interval=LRO_POLLING)  # not waited for: the deletion is held
    assert ctx.stalled.get_pool(pool).state == "deleting", "precondition"
    return lambda: ctx.stalled.begin_delete_pool(pool, polling_interval=LRO_POLLING)


# [rest] Pool - Resize: "You can only resize a Pool when its allocation state is steady. If the
# Pool is already resizing, the request fails with status code 409." The code is not given there;
# [codes] documents exactly one for it, PoolBeingResized, 409: "A pool operation was attempted
# which is not permitted when the pool is in the process of being resized." (No source shows
# the emulator's PoolNotSteady.)
def resize_a_pool_that_is_resizing(ctx: Context) -> Attempt:
    pool = unique_id("growing")
    ctx.stalled.create_pool(pool_options(pool, nodes=1))  # allocating its node is held
    assert ctx.stalled.get_pool(pool).allocation_state == "resizing", "precondition"
    return lambda: ctx.stalled.begin_resize_pool(
        pool, models.BatchPoolResizeOptions(target_dedicated_nodes=2), polling_interval=LRO_POLLING)


# [rest] Node - Reboot: "You can restart a Compute Node only if it is in an idle or running state."
# NodeNotReady is what the service answers a node operation on a node that is not ready yet:
# [js] retries disable-scheduling on a just-created pool's node while the code is NodeNotReady,
# and [tes] retries its node-bound calls on NodeNotReady.
def reboot_a_node_waiting_for_its_start_task(ctx: Context) -> Attempt:
    gate = ctx.tmp_path / "gate"
    ctx.cleanups.append(gate.touch)  # lets the start task finish
    pool = unique_id("booting")
    ctx.client.create_pool(models.BatchPoolCreateOptions(
        id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=ubuntu_configuration(),
        start_task=models.BatchStartTask(
            command_line=f"/bin/bash -c 'while [ ! -e {gate} ]; do sleep 0.05; done'", wait_for_success=True)))
    node = wait_for(lambda: next((n for n in ctx.client.list_nodes(pool) if n.state == "waitingforstarttask"), None),
                    "the node to wait for its start task")
    return lambda: ctx.client.begin_reboot_node(pool, node.id, reboot_options(), polling_interval=LRO_POLLING)


@dataclass(frozen=True)
class Case:
    arrange: Callable[[Context], Attempt]  # brings the state about; returns the illegal call
    codes: frozenset[str]                  # what the service answers (one code where it is known)


CASES = [
    Case(terminate_a_completed_job, frozenset({"JobCompleted"})),
    Case(disable_a_completed_job, frozenset({"JobCompleted", "JobNotActive"})),
    Case(enable_an_active_job, DOCUMENTED_CONFLICTS),
    Case(reactivate_a_task_that_has_not_run, frozenset({"TaskNotCompleted"})),
    Case(reactivate_a_task_that_succeeded, frozenset({"TaskSucceeded"})),
    Case(terminate_a_completed_task, frozenset({"TaskCompleted"})),
    Case(update_a_completed_task, frozenset({"TaskCompleted"})),
    Case(delete_a_pool_twice, frozenset({"PoolBeingDeleted"})),
    Case(resize_a_pool_that_is_resizing, frozenset({"PoolBeingResized"})),
    Case(reboot_a_node_waiting_for_its_start_task, frozenset({"NodeNotReady"})),
]


@pytest.mark.parametrize("case", CASES, ids=[case.arrange.__name__ for case in CASES])
def test_an_illegal_transition_gets_the_services_conflict(case: Case, context: Context):
    attempt = case.arrange(context)
    expected = " or ".join(sorted(case.codes)) if len(case.codes) < 3 else "a documented Batch code"
    refusal = None
    try:
        attempt()
    except HttpResponseError as error:
        refusal = error
    if refusal is None:
        pytest.fail(f"{case.arrange.__name__} was accepted; the service answers 409 {expected}")
    code = refusal.error.code if refusal.error else None
    assert (refusal.status_code, code in case.codes) == (409, True), (
        f"{case.arrange.__name__}: answered {refusal.status_code} {code}; the service answers 409 {expected}")
