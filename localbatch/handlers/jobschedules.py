"""Job schedules, and the jobs a schedule has created."""
from __future__ import annotations

from azure.batch import models

from ..domain.entities import JobSchedule
from ..http import Call, Reply
from .common import (accepted, bool_query, body_of, check_conditions, created, entity_list_reply, entity_reply,
                     updated)
from .views import job_schedule_url, job_schedule_view, job_view


def _schedule(call: Call) -> JobSchedule:
    """The job schedule the path names, once the request's conditional headers hold for it."""
    schedule = call.service.repo.get_job_schedule(call.params["jobScheduleId"])
    check_conditions(call, schedule.data)
    return schedule


def create_job_schedule(call: Call) -> Reply:
    schedule = call.service.job_schedules.create_job_schedule(body_of(call, models.BatchJobScheduleCreateOptions))
    return created(call, job_schedule_url(call, schedule.id), schedule.data)


def list_job_schedules(call: Call) -> Reply:
    return entity_list_reply(call, call.service.all_job_schedules(), job_schedule_view, "jobschedules")


def get_job_schedule(call: Call) -> Reply:
    return entity_reply(call, job_schedule_view(call, _schedule(call)), "jobschedules/@Element")


def job_schedule_exists(call: Call) -> Reply:
    schedule = _schedule(call)
    return Reply.entity(200, None, schedule.data["eTag"], schedule.data["lastModified"])


def update_job_schedule(call: Call) -> Reply:
    _schedule(call)
    schedule = call.service.job_schedules.update_job_schedule(
        call.params["jobScheduleId"], body_of(call, models.BatchJobScheduleUpdateOptions))
    return updated(call, job_schedule_url(call, schedule.id), schedule.data)


def replace_job_schedule(call: Call) -> Reply:
    _schedule(call)
    schedule = call.service.job_schedules.replace_job_schedule(call.params["jobScheduleId"],
                                                               body_of(call, models.BatchJobSchedule))
    return updated(call, job_schedule_url(call, schedule.id), schedule.data)


def disable_job_schedule(call: Call) -> Reply:
    _schedule(call)
    schedule = call.service.job_schedules.disable_job_schedule(call.params["jobScheduleId"])
    return updated(call, job_schedule_url(call, schedule.id), schedule.data, status=204)


def enable_job_schedule(call: Call) -> Reply:
    _schedule(call)
    schedule = call.service.job_schedules.enable_job_schedule(call.params["jobScheduleId"])
    return updated(call, job_schedule_url(call, schedule.id), schedule.data, status=204)


def terminate_job_schedule(call: Call) -> Reply:
    _schedule(call)
    bool_query(call, "force")
    schedule = call.service.job_schedules.terminate_job_schedule(call.params["jobScheduleId"])
    return updated(call, job_schedule_url(call, schedule.id), schedule.data, status=202)


def delete_job_schedule(call: Call) -> Reply:
    _schedule(call)
    bool_query(call, "force")
    call.service.job_schedules.delete_job_schedule(call.params["jobScheduleId"])
    return accepted(call, job_schedule_url(call, call.params["jobScheduleId"]))


def list_jobs_from_schedule(call: Call) -> Reply:
    schedule = call.service.repo.get_job_schedule(call.params["jobScheduleId"])
    return entity_list_reply(call, call.service.job_schedules.jobs_of(schedule), job_view, "jobs")
