"""Pool autoscale through the real SDK: enabling it (at creation or later), the periodic evaluation
on the server's recurrence clock (`server.advance_clock`; the service's shortest interval is five
minutes), evaluate, disable, the formula language and its errors."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .support import LRO_POLLING, create_job, pool_options, unique_id, wait_for, wait_for_nodes

FIVE_MINUTES = dt.timedelta(minutes=5)


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details or []}


def _autoscale_pool(client, formula: str, interval: dt.timedelta = FIVE_MINUTES) -> str:
    pool_id = unique_id("auto")
    options = pool_options(pool_id, nodes=0)
    options.target_dedicated_nodes = None
    options.enable_auto_scale = True
    options.auto_scale_formula = formula
    options.auto_scale_evaluation_interval = interval
    client.create_pool(options)
    return pool_id


def _evaluate(client, pool_id: str, formula: str) -> models.AutoScaleRun:
    return client.evaluate_pool_auto_scale(pool_id, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=formula))


def _run_error(run: models.AutoScaleRun) -> tuple[str, str]:
    return run.error.code, run.error.error_values[0].value


@pytest.fixture(scope="module")
def scaled_pool(client) -> str:
    """An autoscale pool that stays at zero nodes, for evaluating formulas against."""
    return _autoscale_pool(client, "$TargetDedicatedNodes = 0;")


def test_a_pool_created_with_autoscale_is_evaluated_at_once_and_sized_by_its_formula(client):
    pool_id = _autoscale_pool(client, "$TargetDedicatedNodes = 2; spare = max(1, 3) * 2;")
    pool = client.get_pool(pool_id)
    assert pool.enable_auto_scale is True and pool.auto_scale_evaluation_interval == FIVE_MINUTES
    assert pool.auto_scale_formula.startswith("$TargetDedicatedNodes = 2")
    assert pool.auto_scale_run.results == ("$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;"
                                           "$NodeDeallocationOption=requeue;spare=6")
    assert pool.auto_scale_run.error is None and pool.auto_scale_run.timestamp is not None
    assert pool.target_dedicated_nodes == 2
    wait_for_nodes(client, pool_id, 2)


def test_the_default_interval_is_fifteen_minutes(client):
    pool_id = unique_id("auto")
    options = pool_options(pool_id, nodes=0)
    options.target_dedicated_nodes = None
    options.enable_auto_scale = True
    options.auto_scale_formula = "$TargetDedicatedNodes = 0;"
    client.create_pool(options)
    assert client.get_pool(pool_id).auto_scale_evaluation_interval == dt.timedelta(minutes=15)


def test_the_formula_runs_again_every_interval_on_pending_tasks(server, client):
    formula = ("pending = $PendingTasks.GetSample(1); "
               "$TargetDedicatedNodes = min(3, val(pending, 0)); $NodeDeallocationOption = taskcompletion;")
    pool_id = _autoscale_pool(client, formula)
    assert client.get_pool(pool_id).target_dedicated_nodes == 0
    job_id = create_job(client, pool_id)
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true") for i in range(5)])
    first = client.get_pool(pool_id).auto_scale_run.timestamp
    server.advance_clock(5 * 60)
    pool = wait_for(lambda: client.get_pool(pool_id), "the second autoscale run",
                    until=lambda pool: pool.auto_scale_run.timestamp > first)
    assert pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;"
                                                  "$NodeDeallocationOption=taskcompletion;pending={5}")
    assert pool.target_dedicated_nodes == 3
    wait_for(lambda: not list(client.list_tasks(job_id, filter="state ne 'completed'")), "the tasks to run")


def test_enable_on_a_fixed_pool_then_disable(server, client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=1))
    wait_for_nodes(client, pool_id, 1)
    with pytest.raises(HttpResponseError) as caught:
        _evaluate(client, pool_id, "$TargetDedicatedNodes = 1;")
    assert caught.value.status_code == 409
    client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = $CurrentDedicatedNodes + 1;",
        auto_scale_evaluation_interval=dt.timedelta(minutes=10)))
    pool = client.get_pool(pool_id)
    assert pool.enable_auto_scale and pool.target_dedicated_nodes == 2
    assert pool.auto_scale_evaluation_interval == dt.timedelta(minutes=10)
    wait_for_nodes(client, pool_id, 2)
    with pytest.raises(HttpResponseError) as caught:
        client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=5),
                                 polling_interval=LRO_POLLING).result()
    assert caught.value.status_code == 409
    # Enabled already: a new interval alone keeps the formula (30 s later: the service's spacing).
    server.advance_clock(30)
    client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_evaluation_interval=dt.timedelta(minutes=20)))
    assert client.get_pool(pool_id).auto_scale_formula == "$TargetDedicatedNodes = $CurrentDedicatedNodes + 1;"
    client.disable_pool_auto_scale(pool_id)
    pool = client.get_pool(pool_id)
    assert pool.enable_auto_scale is False and pool.auto_scale_formula is None and pool.auto_scale_run is None
    assert pool.target_dedicated_nodes == 3  # the last run's target stays
    wait_for_nodes(client, pool_id, 3)
    client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=0),
                             polling_interval=LRO_POLLING).result()


@pytest.mark.parametrize("formula, results", [
    ("$TargetDedicatedNodes = 1 + 2 * 3 - 4 / 2;", "$TargetDedicatedNodes=5"),
    ("a = 2; b = a > 1 && a < 3 ? 10 : 20; $TargetDedicatedNodes = b;", "$TargetDedicatedNodes=10"),
    ("$TargetDedicatedNodes = !(1 == 2) || 0;", "$TargetDedicatedNodes=1"),
    ("$TargetLowPriorityNodes = max(1, 7, 3) - min(4, 2) + sum(1, 2) + len(1, 2, 3);", "$TargetLowPriorityNodes=11"),
    ("$TargetDedicatedNodes = avg(2, 4, 9);", "$TargetDedicatedNodes=5"),
    ("$TargetDedicatedNodes = (TimeInterval_Minute * 5) / TimeInterval_Second > 299 ? 1 : 0;",
     None),  # interval / interval is not in the subset: an error, below
    ("$NodeDeallocationOption = retaineddata; $TargetDedicatedNodes = 0;", "$NodeDeallocationOption=retaineddata"),
    ("// comment\n$TargetDedicatedNodes = $CurrentDedicatedNodes + $TaskSlotsPerNode;", "$TargetDedicatedNodes=1"),
    ("$TargetDedicatedNodes = $PendingTasks.Count() >= 1 ? 1 : 0;", "$TargetDedicatedNodes=1"),
    ("$TargetDedicatedNodes = $RunningTasks.GetSamplePeriod() == TimeInterval_Second * 30;", "$TargetDedicatedNodes=1"),
], ids=["arithmetic", "ternary-and", "not-or", "min-max-sum-len", "avg", "interval-ratio", "deallocation",
        "comment-and-service-variables", "count", "sample-period"])
def test_the_formula_subset(client, scaled_pool, formula, results):
    run = _evaluate(client, scaled_pool, formula)
    if results is None:
        assert run.error is not None and "does not apply to a time interval and a time interval" in _run_error(run)[1]
    else:
        assert run.error is None, run.error
        assert results in run.results


@pytest.mark.parametrize("formula, code, message", [
    ("$TargetDedicatedNodes = $CPUPercent.GetSample(1);", "AutoScalingFormulaEvaluationError",
     "$CPUPercent is not provided"),
    ("$TargetDedicatedNodes = avg($PendingTasks.GetSample(TimeInterval_Hour, 90));", "InsufficientSampleData",
     "Insufficient data from data set: $PendingTasks wanted 90%"),
    ("$TargetDedicatedNodes = $PendingTasks + 1;", "AutoScalingFormulaEvaluationError", "is a sampled variable"),
    ("$TargetDedicatedNodes = 1 / 0;", "AutoScalingFormulaEvaluationError", "Line 1, Col 27: Division by zero"),
    ("$TargetDedicatedNodes = unknownVariable;", "AutoScalingFormulaEvaluationError", "unknownVariable is used before"),
    ("$TargetDedicatedNodes = rand();", "AutoScalingFormulaEvaluationError", "Unknown function rand"),
    ("$CurrentDedicatedNodes = 3;", "AutoScalingFormulaEvaluationError", "$CurrentDedicatedNodes is a read-only"),
    ("$Bogus = 3;", "AutoScalingFormulaEvaluationError", "Unknown service variable $Bogus"),
    ("$TargetDedicatedNodes = -1;", "AutoScalingFormulaEvaluationError", "must be between 0 and 2147483647, got -1"),
    ("$TargetDedicatedNodes = 1e999;", "AutoScalingFormulaEvaluationError", "must be between 0 and 2147483647, got inf"),
    ("$TargetDedicatedNodes = val($PendingTasks.GetSample(1), 1e999);", "AutoScalingFormulaEvaluationError",
     "cannot be computed"),
    ("$TargetDedicatedNodes = time() + TimeInterval_Year * 1e9 > time();", "AutoScalingFormulaEvaluationError",
     "not a finite number"),
    ("$NodeDeallocationOption = 2;", "AutoScalingFormulaEvaluationError", "$NodeDeallocationOption must be one of"),
], ids=["metric-not-provided", "insufficient-samples", "sampled-used-directly", "division-by-zero",
        "unassigned", "unknown-function", "read-only", "unknown-service-variable", "negative-target",
        "infinite-target", "infinite-index", "timestamp-overflow",
        "bad-deallocation"])
def test_evaluation_errors_name_what_is_wrong(client, scaled_pool, formula, code, message):
    run = _evaluate(client, scaled_pool, formula)
    assert _run_error(run)[0] == code and message in _run_error(run)[1]
    # As on the service, a failed run reports the variables it would set, as they were.
    assert run.results == "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"


@pytest.mark.parametrize("formula, message", [
    ("$something_useless", "Line 1, Col 19: Expected '=' but found the end of the formula"),
    ("$TargetDedicatedNodes = (1", "Expected ')'"),
    ("$TargetDedicatedNodes = " + "(" * 100 + "1" + ")" * 100, "nests more than 64 levels"),
], ids=["no-assignment", "unclosed", "too-deep"])
def test_evaluating_a_formula_that_does_not_parse_is_an_error_run(client, scaled_pool, formula, message):
    run = _evaluate(client, scaled_pool, formula)
    assert _run_error(run)[0] == "AutoScalingFormulaEvaluationError" and message in _run_error(run)[1]
    assert run.results == "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"


def test_a_failing_run_leaves_the_pool_as_it_is(server, client):
    pool_id = _autoscale_pool(client, "$TargetDedicatedNodes = 1;")
    wait_for_nodes(client, pool_id, 1)
    client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 4 / ($CurrentDedicatedNodes - 1);"))
    pool = client.get_pool(pool_id)
    assert pool.auto_scale_run.error.code == "AutoScalingFormulaEvaluationError"
    assert pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=1;")
    assert pool.target_dedicated_nodes == 1 and len(list(client.list_nodes(pool_id))) == 1


@pytest.mark.parametrize("formula, reason", [
    ("$TargetDedicatedNodes = (1", "Expected ')' but found the end of the formula"),
    ("$TargetDedicatedNodes = 1 $", "Unexpected character '$'"),
    ("$TargetDedicatedNodes 1", "Expected '=' but found '1'"),
    ("$TargetDedicatedNodes = " + "(" * 100 + "1" + ")" * 100, "nests more than 64 levels"),
    ("$TargetDedicatedNodes = " + "-" * 100 + "1", "nests more than 64 levels"),
    ("a = 1;" * 1500, "at most 8192 are allowed"),
    ("", None),
], ids=["unclosed", "bad-character", "no-assignment", "deep-parentheses", "deep-unary", "too-long", "empty"])
def test_formulas_that_do_not_parse_are_refused_with_a_400_naming_the_property(client, scaled_pool, formula, reason):
    with pytest.raises(HttpResponseError) as caught:
        client.enable_pool_auto_scale(scaled_pool, models.BatchPoolEnableAutoScaleOptions(auto_scale_formula=formula))
    assert caught.value.status_code == 400
    details = _details(caught.value)
    assert details["PropertyName"] == "autoScaleFormula"
    if reason is not None:
        assert reason in details["Reason"]


@pytest.mark.parametrize("extra, prop", [
    ({"auto_scale_formula": None}, "autoScaleFormula"),
    ({"auto_scale_evaluation_interval": dt.timedelta(minutes=4)}, "autoScaleEvaluationInterval"),
    ({"auto_scale_evaluation_interval": dt.timedelta(hours=169)}, "autoScaleEvaluationInterval"),
    ({"target_dedicated_nodes": 2}, "targetDedicatedNodes"),
], ids=["no-formula", "interval-too-short", "interval-too-long", "fixed-target"])
def test_autoscale_pool_bodies_are_checked(client, extra, prop):
    options = pool_options(unique_id("auto"), nodes=0)
    options.target_dedicated_nodes = None
    options.enable_auto_scale = True
    options.auto_scale_formula = "$TargetDedicatedNodes = 0;"
    for name, value in extra.items():
        setattr(options, name, value)
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(options)
    assert caught.value.status_code == 400 and _details(caught.value)["PropertyName"] == prop


def test_autoscale_survives_a_restart(tmp_path):
    from localbatch import LocalBatchServer
    from .conftest import fast_timings
    from .support import batch_client
    location = str(tmp_path / "localbatch")
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        pool_id = _autoscale_pool(client, "$TargetDedicatedNodes = 1;")
        first = client.get_pool(pool_id).auto_scale_run.timestamp
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        pool = client.get_pool(pool_id)
        assert pool.enable_auto_scale and pool.auto_scale_run.timestamp == first
        server.advance_clock(5 * 60)
        wait_for(lambda: client.get_pool(pool_id), "an autoscale run after the restart",
                 until=lambda pool: pool.auto_scale_run.timestamp > first)


def test_the_sample_history_survives_a_restart(tmp_path):
    from localbatch import LocalBatchServer
    from .conftest import fast_timings
    from .support import batch_client
    location = str(tmp_path / "localbatch")
    # Twenty samples of three waiting tasks, then a restart: the formula still reads all of them.
    reads_history = ("$TargetDedicatedNodes = 0; waiting = min($ActiveTasks.GetSample(20)); "
                     "taken = $ActiveTasks.Count(); began = $ActiveTasks.HistoryBeginTime();")
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        pool_id = _autoscale_pool(client, "$TargetDedicatedNodes = 0;")
        job_id = create_job(client, pool_id)
        client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                     for i in range(3)])  # no node: they wait
        server.advance_clock(10 * 60)
        before = wait_for(lambda: _evaluate(client, pool_id, reads_history), "twenty samples before the restart",
                          until=lambda run: run.error is None)
        history = dict(item.split("=", 1) for item in before.results.split(";"))
        assert history["waiting"] == "3" and int(history["taken"]) >= 20
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        after = _evaluate(client, pool_id, reads_history)
        assert after.error is None, _run_error(after)
        restored = dict(item.split("=", 1) for item in after.results.split(";"))
        assert (restored["waiting"], restored["taken"], restored["began"]) == (
            "3", history["taken"], history["began"])
        client.disable_pool_auto_scale(pool_id)  # its history goes with it
        wait_for(lambda: client.get_pool(pool_id), "the pool to be steady",
                 until=lambda pool: pool.allocation_state == "steady")
        client.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 0;", auto_scale_evaluation_interval=FIVE_MINUTES))
        assert _run_error(_evaluate(client, pool_id, reads_history))[0] == "InsufficientSampleData"


def test_the_aio_client_enables_evaluates_and_disables(server, client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0))
    wait_for(lambda: client.get_pool(pool_id).allocation_state == "steady", "the new pool to be steady")

    async def scenario() -> tuple[models.AutoScaleRun, bool]:
        credential = AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)
        async with AsyncBatchClient(server.url, credential) as batch:
            await batch.enable_pool_auto_scale(pool_id, models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula="$TargetLowPriorityNodes = 0;", auto_scale_evaluation_interval=FIVE_MINUTES))
            run = await batch.evaluate_pool_auto_scale(pool_id, models.BatchPoolEvaluateAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = 2 * 2;"))
            await batch.disable_pool_auto_scale(pool_id)
            return run, (await batch.get_pool(pool_id)).enable_auto_scale
    run, enabled = asyncio.run(scenario())
    assert run.results.startswith("$TargetDedicatedNodes=4;") and enabled is False
    assert client.get_pool(pool_id).target_dedicated_nodes == 0  # evaluate applies nothing


def test_a_jobs_auto_pool_may_autoscale(client):
    job_id = unique_id("job")
    pool = models.BatchPoolSpecification(
        vm_size="standard_d2s_v3", enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = 1;",
        auto_scale_evaluation_interval=FIVE_MINUTES,
        virtual_machine_configuration=pool_options("x").virtual_machine_configuration)
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(
        auto_pool_specification=models.BatchAutoPoolSpecification(pool_lifetime_option="job", pool=pool))))
    pool_id = client.get_job(job_id).execution_info.pool_id
    assert client.get_pool(pool_id).auto_scale_run.results.startswith("$TargetDedicatedNodes=1;")
    wait_for_nodes(client, pool_id, 1)


def test_enable_requests_for_a_pool_are_at_least_30_seconds_apart(server, client, raw):
    pool_id = _autoscale_pool(client, "$TargetDedicatedNodes = 0;")
    body = {"autoScaleFormula": "$TargetDedicatedNodes = 0;"}
    assert raw.request("POST", f"/pools/{pool_id}/enableautoscale", body).status == 200
    refused = raw.request("POST", f"/pools/{pool_id}/enableautoscale", body)
    assert refused.status == 503 and refused.error_code == "TooManyEnableAutoScaleRequests"
    server.advance_clock(30)
    assert raw.request("POST", f"/pools/{pool_id}/enableautoscale", body).status == 200
