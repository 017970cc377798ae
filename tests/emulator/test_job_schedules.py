"""Job schedules through the real SDK: their operations, states and errors, and the recurrence that
creates jobs (`<schedule>:job-<n>`), driven by the server's test-only recurrence clock
(`server.advance_clock`), since the service's shortest interval is a minute."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from localbatch import LocalBatchServer, WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .conftest import fast_timings
from .support import LRO_POLLING, batch_client, pool_options, terminate_options, unique_id, wait_for

MINUTE = dt.timedelta(minutes=1)


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details or []}


def _spec(pool_id: str, **extra) -> models.BatchJobSpecification:
    return models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=pool_id), **extra)


def _create(client, pool_id: str, schedule: models.BatchJobScheduleConfiguration, **extra) -> str:
    schedule_id = unique_id("sched")
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=schedule, job_specification=_spec(pool_id), **extra))
    return schedule_id


def _job_ids(client, schedule_id: str) -> list[str]:
    return sorted(job.id for job in client.list_jobs_from_schedule(schedule_id))


def _wait_for_jobs(client, schedule_id: str, count: int) -> list[str]:
    return wait_for(lambda: _job_ids(client, schedule_id), f"{count} job(s) of schedule {schedule_id}",
                    until=lambda ids: len(ids) == count)


def _terminate_job(client, job_id: str) -> None:
    client.begin_terminate_job(job_id, terminate_options(), polling_interval=LRO_POLLING).result()


def _wait_for_state(client, schedule_id: str, state: str) -> models.BatchJobSchedule:
    return wait_for(lambda: client.get_job_schedule(schedule_id), f"job schedule {schedule_id} {state}",
                    until=lambda schedule: schedule.state == state)


def test_a_recurring_schedule_creates_its_first_job_at_once_and_reports_it(client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE),
                          display_name="nightly", metadata=[models.BatchMetadataItem(name="team", value="a")])
    assert _wait_for_jobs(client, schedule_id, 1) == [f"{schedule_id}:job-1"]
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.state == "active" and schedule.previous_state is None
    assert schedule.display_name == "nightly" and schedule.metadata[0].value == "a"
    assert schedule.schedule.recurrence_interval == MINUTE
    assert schedule.job_specification.pool_info.pool_id == pool_id
    assert schedule.execution_info.recent_job.id == f"{schedule_id}:job-1"
    assert schedule.execution_info.recent_job.url.endswith(f"/jobs/{schedule_id}%3Ajob-1")
    assert schedule.execution_info.next_run_time - schedule.creation_time == MINUTE
    assert schedule.execution_info.end_time is None
    assert schedule.url.endswith(f"/jobschedules/{schedule_id}") and schedule.etag.startswith("0x")
    job = client.get_job(f"{schedule_id}:job-1")
    assert job.state == "active" and job.pool_info.pool_id == pool_id
    assert client.job_schedule_exists(schedule_id) is True
    assert schedule_id in [s.id for s in client.list_job_schedules(filter=f"id eq '{schedule_id}'")]
    assert [s.id for s in client.list_job_schedules(filter="state eq 'active'", select=["id"])].count(schedule_id) == 1


def test_the_next_job_waits_for_the_active_one_and_a_closed_start_window_loses_the_opportunity(server, client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(
        recurrence_interval=dt.timedelta(minutes=10), start_window=dt.timedelta(minutes=2)))
    _wait_for_jobs(client, schedule_id, 1)
    server.advance_clock(10 * 60)  # job-2 is due, but job-1 is still active: no new job
    assert _job_ids(client, schedule_id) == [f"{schedule_id}:job-1"]
    _terminate_job(client, f"{schedule_id}:job-1")  # within job-2's start window: it is created now
    assert _wait_for_jobs(client, schedule_id, 2)[-1] == f"{schedule_id}:job-2"
    server.advance_clock(10 * 60)   # job-3 is due while job-2 is active ...
    server.advance_clock(3 * 60)    # ... and its 2-minute window closes before job-2 ends
    _terminate_job(client, f"{schedule_id}:job-2")
    schedule = _wait_for_state(client, schedule_id, "active")
    assert _job_ids(client, schedule_id) == [f"{schedule_id}:job-1", f"{schedule_id}:job-2"]
    server.advance_clock(7 * 60)    # the following opportunity (at 30 minutes) is taken again
    assert _wait_for_jobs(client, schedule_id, 3)[-1] == f"{schedule_id}:job-3"
    assert client.get_job_schedule(schedule_id).execution_info.recent_job.id == f"{schedule_id}:job-3"
    assert schedule.execution_info.next_run_time is not None


@pytest.fixture
def own_clock(tmp_path):
    """A server and client of the test's own, for tests whose absolute times must match the clock
    (the module's server clock has been moved forward by other tests)."""
    with LocalBatchServer(str(tmp_path / "localbatch"), timings=fast_timings()) as server, \
            batch_client(server.url) as client:
        client.create_pool(pool_options("own-pool", nodes=0))
        yield server, client


def test_do_not_run_until_holds_the_first_job_back(own_clock):
    server, client = own_clock
    pool_id = "own-pool"
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(hours=1)
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(do_not_run_until=start))
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.execution_info.next_run_time == start
    assert schedule.execution_info.recent_job is None and _job_ids(client, schedule_id) == []
    server.advance_clock(3600)
    assert _wait_for_jobs(client, schedule_id, 1) == [f"{schedule_id}:job-1"]
    assert client.get_job_schedule(schedule_id).execution_info.next_run_time is None


def test_a_schedule_without_recurrence_runs_one_job_and_completes_when_it_finishes(client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration())
    _wait_for_jobs(client, schedule_id, 1)
    assert client.get_job_schedule(schedule_id).state == "active"
    _terminate_job(client, f"{schedule_id}:job-1")
    schedule = _wait_for_state(client, schedule_id, "completed")
    assert schedule.previous_state == "active"
    assert schedule.execution_info.end_time is not None and schedule.execution_info.next_run_time is None
    assert _job_ids(client, schedule_id) == [f"{schedule_id}:job-1"]


def test_do_not_run_after_ends_the_recurrence(own_clock):
    server, client = own_clock
    pool_id = "own-pool"
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=90)
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(
        recurrence_interval=dt.timedelta(hours=1), do_not_run_after=end))
    _wait_for_jobs(client, schedule_id, 1)
    _terminate_job(client, f"{schedule_id}:job-1")
    server.advance_clock(3600)
    _wait_for_jobs(client, schedule_id, 2)
    assert client.get_job_schedule(schedule_id).execution_info.next_run_time is None  # 2 h is past the end
    _terminate_job(client, f"{schedule_id}:job-2")
    _wait_for_state(client, schedule_id, "completed")


def test_disable_stops_new_jobs_until_enable(server, client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE))
    _wait_for_jobs(client, schedule_id, 1)
    _terminate_job(client, f"{schedule_id}:job-1")
    client.disable_job_schedule(schedule_id)
    client.disable_job_schedule(schedule_id)  # disabling a disabled schedule changes nothing
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.state == "disabled" and schedule.previous_state == "active"
    server.advance_clock(60)
    assert _job_ids(client, schedule_id) == [f"{schedule_id}:job-1"]
    client.enable_job_schedule(schedule_id)
    assert client.get_job_schedule(schedule_id).state == "active"
    assert _wait_for_jobs(client, schedule_id, 2)[-1] == f"{schedule_id}:job-2"


def test_update_and_replace(client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE),
                          metadata=[models.BatchMetadataItem(name="k", value="v")])
    before = client.get_job_schedule(schedule_id)
    client.update_job_schedule(schedule_id, models.BatchJobScheduleUpdateOptions(
        schedule=models.BatchJobScheduleConfiguration(recurrence_interval=dt.timedelta(hours=2))))
    after = client.get_job_schedule(schedule_id)
    assert after.schedule.recurrence_interval == dt.timedelta(hours=2)
    assert after.metadata[0].name == "k" and after.etag != before.etag
    client.replace_job_schedule(schedule_id, models.BatchJobSchedule(
        job_specification=_spec(pool_id, priority=100),
        schedule=models.BatchJobScheduleConfiguration(recurrence_interval=dt.timedelta(hours=3))))
    replaced = client.get_job_schedule(schedule_id)
    assert replaced.metadata is None and replaced.job_specification.priority == 100
    assert replaced.schedule.recurrence_interval == dt.timedelta(hours=3)


def test_terminate_passes_through_terminating_and_terminates_the_active_job(server, client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE))
    _wait_for_jobs(client, schedule_id, 1)
    with server.holding("job_schedule_terminating"):
        poller = client.begin_terminate_job_schedule(schedule_id, polling_interval=LRO_POLLING)
        assert client.get_job_schedule(schedule_id).state == "terminating"
        with pytest.raises(HttpResponseError) as caught:
            client.disable_job_schedule(schedule_id)
        assert caught.value.status_code == 409 and caught.value.error.code == "JobScheduleBeingTerminated"
    poller.result()
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.state == "completed" and schedule.previous_state == "terminating"
    wait_for(lambda: client.get_job(f"{schedule_id}:job-1").state == "completed", "the schedule's job to complete")
    with pytest.raises(HttpResponseError) as caught:
        client.update_job_schedule(schedule_id, models.BatchJobScheduleUpdateOptions(metadata=[]))
    assert caught.value.status_code == 409 and caught.value.error.code == "JobScheduleCompleted"


def test_delete_passes_through_deleting_and_takes_its_jobs(server, client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE))
    _wait_for_jobs(client, schedule_id, 1)
    with server.holding("job_schedule_deleting"):
        poller = client.begin_delete_job_schedule(schedule_id, polling_interval=LRO_POLLING)
        assert client.get_job_schedule(schedule_id).state == "deleting"
        with pytest.raises(HttpResponseError) as caught:
            client.enable_job_schedule(schedule_id)
        assert caught.value.error.code == "JobScheduleBeingDeleted"
    poller.result()
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_job_schedule(schedule_id)
    assert caught.value.error.code == "JobScheduleNotFound"
    wait_for(lambda: f"{schedule_id}:job-1" not in [job.id for job in client.list_jobs()], "the schedule's job to go")


def test_an_auto_pool_that_lives_with_the_schedule_serves_every_job(server, client):
    schedule_id = unique_id("sched")
    pool = models.BatchPoolSpecification(
        vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                         sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04"))
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE),
        job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo(
            auto_pool_specification=models.BatchAutoPoolSpecification(
                auto_pool_id_prefix="sp", pool_lifetime_option="jobschedule", pool=pool)))))
    _wait_for_jobs(client, schedule_id, 1)
    first_pool = client.get_job(f"{schedule_id}:job-1").execution_info.pool_id
    assert first_pool.startswith("sp_")
    _terminate_job(client, f"{schedule_id}:job-1")
    server.advance_clock(60)
    _wait_for_jobs(client, schedule_id, 2)
    assert client.get_job(f"{schedule_id}:job-2").execution_info.pool_id == first_pool
    assert client.get_pool(first_pool).state == "active"  # the job ending does not take the pool
    client.begin_terminate_job_schedule(schedule_id, polling_interval=LRO_POLLING).result()
    wait_for(lambda: first_pool not in [p.id for p in client.list_pools()], "the schedule's auto-pool to go")


@pytest.mark.parametrize("schedule, prop", [
    (models.BatchJobScheduleConfiguration(recurrence_interval=dt.timedelta(seconds=59)), "schedule.recurrenceInterval"),
    (models.BatchJobScheduleConfiguration(start_window=dt.timedelta(seconds=30)), "schedule.startWindow"),
], ids=["interval", "window"])
def test_intervals_shorter_than_a_minute_are_refused(client, pool_id, schedule, prop):
    with pytest.raises(HttpResponseError) as caught:
        _create(client, pool_id, schedule)
    assert caught.value.status_code == 400 and caught.value.error.code == "InvalidPropertyValue"
    assert _details(caught.value)["PropertyName"] == prop


def test_errors_name_what_is_wrong(client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE))
    with pytest.raises(ResourceExistsError) as caught:
        client.create_job_schedule(models.BatchJobScheduleCreateOptions(
            id=schedule_id, schedule=models.BatchJobScheduleConfiguration(), job_specification=_spec(pool_id)))
    assert caught.value.status_code == 409 and caught.value.error.code == "JobScheduleExists"
    for call in (lambda: client.get_job_schedule("no-such-schedule"),
                 lambda: client.disable_job_schedule("no-such-schedule"),
                 lambda: list(client.list_jobs_from_schedule("no-such-schedule"))):
        with pytest.raises(ResourceNotFoundError) as caught:
            call()
        assert caught.value.error.code == "JobScheduleNotFound"
    with pytest.raises(HttpResponseError) as caught:
        client.create_job_schedule(models.BatchJobScheduleCreateOptions(
            id=unique_id("sched"), schedule=models.BatchJobScheduleConfiguration(),
            job_specification=_spec(pool_id, job_manager_task=models.BatchJobManagerTask(
                id="m", command_line="/bin/true", application_package_references=[
                    models.BatchApplicationPackageReference(application_id="app")]))))
    assert caught.value.status_code == 501
    assert _details(caught.value)["Feature"] == "jobManagerTask.applicationPackageReferences"
    with pytest.raises(HttpResponseError) as caught:
        client.create_job_schedule(models.BatchJobScheduleCreateOptions(
            id=unique_id("sched"), schedule=models.BatchJobScheduleConfiguration(),
            job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo())))
    assert caught.value.status_code == 400 and _details(caught.value)["PropertyName"] == "jobSpecification.poolInfo"


def test_a_schedule_survives_a_restart_and_catches_up(tmp_path):
    location = str(tmp_path / "localbatch")
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        client.create_pool(pool_options("restart-pool", nodes=0))
        schedule_id = _create(client, "restart-pool", models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE))
        _wait_for_jobs(client, schedule_id, 1)
        _terminate_job(client, f"{schedule_id}:job-1")
        next_run = client.get_job_schedule(schedule_id).execution_info.next_run_time
    with LocalBatchServer(location, timings=fast_timings()) as server, batch_client(server.url) as client:
        schedule = client.get_job_schedule(schedule_id)
        assert schedule.state == "active" and schedule.execution_info.next_run_time == next_run
        server.advance_clock(60)
        assert _wait_for_jobs(client, schedule_id, 2)[-1] == f"{schedule_id}:job-2"


def test_the_aio_client_drives_a_schedule(server, pool_id):
    async def scenario() -> tuple[str, list[str], str]:
        credential = AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)
        async with AsyncBatchClient(server.url, credential) as client:
            schedule_id = unique_id("sched")
            await client.create_job_schedule(models.BatchJobScheduleCreateOptions(
                id=schedule_id, schedule=models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE),
                job_specification=_spec(pool_id)))
            jobs = [job.id async for job in client.list_jobs_from_schedule(schedule_id)]
            await client.disable_job_schedule(schedule_id)
            poller = await client.begin_delete_job_schedule(schedule_id, polling_interval=LRO_POLLING)
            await poller.result()
            state = "gone"
            try:
                await client.get_job_schedule(schedule_id)
                state = "still there"
            except ResourceNotFoundError:
                pass
            return schedule_id, jobs, state
    schedule_id, jobs, state = asyncio.run(scenario())
    assert jobs == [f"{schedule_id}:job-1"] and state == "gone"


def test_the_longest_durations_the_service_accepts_do_not_break_the_recurrence(client, pool_id):
    longest = dt.timedelta(days=10675199, hours=2, minutes=48, seconds=5)
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(
        recurrence_interval=longest, start_window=longest))
    assert _wait_for_jobs(client, schedule_id, 1) == [f"{schedule_id}:job-1"]
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.state == "active" and schedule.execution_info.next_run_time is None  # past the year 9999


@pytest.mark.parametrize("schedule, prop", [
    ({"doNotRunUntil": "not a time"}, "schedule.doNotRunUntil"),
    ({"recurrenceInterval": "every hour"}, "schedule.recurrenceInterval"),
    ({"startWindow": "PT30S"}, "schedule.startWindow"),
], ids=["time", "duration", "short-window"])
def test_raw_bodies_the_sdk_would_not_send_are_400s_naming_the_property(raw, pool_id, schedule, prop):
    response = raw.request("POST", "/jobschedules", {"id": unique_id("sched"), "schedule": schedule,
                                                     "jobSpecification": {"poolInfo": {"poolId": pool_id}}})
    assert response.status == 400 and response.error_code == "InvalidPropertyValue"
    assert response.detail("PropertyName") == prop


def test_force_must_be_a_boolean(raw, client, pool_id):
    schedule_id = _create(client, pool_id, models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE))
    response = raw.request("DELETE", f"/jobschedules/{schedule_id}?force=maybe")
    assert response.status == 400 and response.error_code == "InvalidQueryParameterValue"
    assert client.get_job_schedule(schedule_id).state == "active"


def test_secrets_of_the_job_specification_are_never_echoed(client, raw):
    schedule_id = unique_id("sched")
    pool = models.BatchPoolSpecification(
        vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                         sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04",
            extensions=[models.VMExtension(name="e", publisher="p", type="t",
                                           protected_settings={"key": "extension-secret-1"})]),
        user_accounts=[models.UserAccount(name="u", password="user-password-2")])
    client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=models.BatchJobScheduleConfiguration(recurrence_interval=MINUTE),
        job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo(
            auto_pool_specification=models.BatchAutoPoolSpecification(pool_lifetime_option="job", pool=pool)))))
    _wait_for_jobs(client, schedule_id, 1)
    for path in (f"/jobschedules/{schedule_id}", f"/jobschedules/{schedule_id}/jobs", f"/jobs/{schedule_id}%3Ajob-1"):
        body = raw.request("GET", path).body
        assert b"extension-secret-1" not in body and b"user-password-2" not in body, path
    auto_pool = client.get_job(f"{schedule_id}:job-1").execution_info.pool_id
    assert client.get_pool(auto_pool).user_accounts[0].name == "u"
