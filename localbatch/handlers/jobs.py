"""Jobs and their task counts."""
from __future__ import annotations

from azure.batch import models
from azure.batch.models import _models as generated_models

from ..http import Call, Reply
from .common import (accepted, body_of, check_conditions, created, entity_list_reply, entity_reply, list_reply,
                     optional_body, updated)
from ..domain.preparation import PREPARATION_INFO, RELEASE_INFO, status_list
from .views import job_url, job_view, pool_url


def _job(call: Call):
    """The job the path names, once the request's conditional headers hold for it."""
    job = call.service.repo.get_job(call.params["jobId"])
    check_conditions(call, job.data)
    return job


def create_job(call: Call) -> Reply:
    job = call.service.jobs.create_job(body_of(call, models.BatchJobCreateOptions))
    return created(call, job_url(call, job.id), job.data)


def list_jobs(call: Call) -> Reply:
    return entity_list_reply(call, call.service.all_jobs(), job_view, "jobs")


def get_job(call: Call) -> Reply:
    return entity_reply(call, job_view(call, _job(call)), "jobs/@Element")


def update_job(call: Call) -> Reply:
    _job(call)
    job = call.service.jobs.update_job(call.params["jobId"], body_of(call, models.BatchJobUpdateOptions))
    return updated(call, job_url(call, job.id), job.data)


def replace_job(call: Call) -> Reply:
    _job(call)
    job = call.service.jobs.replace_job(call.params["jobId"], body_of(call, models.BatchJob))
    return updated(call, job_url(call, job.id), job.data)


def delete_job(call: Call) -> Reply:
    _job(call)
    call.service.jobs.delete_job(call.params["jobId"])
    return accepted(call, job_url(call, call.params["jobId"]))


def terminate_job(call: Call) -> Reply:
    _job(call)
    body = optional_body(call, generated_models.BatchJobTerminateOptions)
    job = call.service.jobs.terminate_job(call.params["jobId"], body.get("terminateReason"))
    return updated(call, job_url(call, job.id), job.data, status=202)


def disable_job(call: Call) -> Reply:
    _job(call)
    body = body_of(call, models.BatchJobDisableOptions)
    job = call.service.jobs.disable_job(call.params["jobId"], body["disableTasks"])
    return updated(call, job_url(call, job.id), job.data, status=202)


def enable_job(call: Call) -> Reply:
    _job(call)
    job = call.service.jobs.enable_job(call.params["jobId"])
    return updated(call, job_url(call, job.id), job.data, status=202)


def list_job_preparation_and_release_task_status(call: Call) -> Reply:
    """Where the job's preparation (and release) task ran, node by node."""
    job = call.service.repo.get_job(call.params["jobId"])

    def view(entry: dict) -> dict:
        node_url = f"{pool_url(call, entry['poolId'])}/nodes/{entry['nodeId']}"
        shown = {"poolId": entry["poolId"], "nodeId": entry["nodeId"], "nodeUrl": node_url}
        for name in (PREPARATION_INFO, RELEASE_INFO):
            if entry.get(name):
                shown[name] = {**entry[name], "taskRootDirectoryUrl": f"{node_url}/files/{entry[name]['taskRootDirectory']}"}
        return shown
    return list_reply(call, status_list(job), "jobpreparationandreleasetaskstatuslist",
                      key=lambda entry: f"{entry['poolId']}/{entry['nodeId']}", view=view)


def get_job_task_counts(call: Call) -> Reply:
    return Reply(200, call.service.jobs.get_job_task_counts(call.params["jobId"]))
