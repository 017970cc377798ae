"""Tasks: single and collection adds, listing, and task actions."""
from __future__ import annotations

import json

from azure.batch import models

from .. import schema
from ..errors import BatchServiceError
from ..http import Call, Reply
from ..domain.multiinstance import subtasks
from .common import body_of, check_conditions, created, entity_list_reply, entity_reply, list_reply, updated
from .views import job_url, subtask_view, task_view

MAX_TASKS_PER_COLLECTION = 100


def _task_url(call: Call, job_id: str, task_id: str) -> str:
    return f"{job_url(call, job_id)}/tasks/{task_id}"


def _task(call: Call):
    """The task the path names, once the request's conditional headers hold for it."""
    task = call.service.repo.get_task(call.params["jobId"], call.params["taskId"])
    check_conditions(call, task.data)
    return task


def create_task(call: Call) -> Reply:
    body = body_of(call, models.BatchTaskCreateOptions)
    [(task, error)] = call.service.tasks.create_tasks(call.params["jobId"], [body])
    if error is not None:
        raise error
    return created(call, _task_url(call, task.job_id, task.id), task.data)


def create_task_collection(call: Call) -> Reply:
    body = call.json()
    if not isinstance(body, dict) or not isinstance(body.get("value"), list):
        raise BatchServiceError("InvalidRequestBody", values={"Reason": "Expected {\"value\": [tasks]}."})
    if len(body["value"]) > MAX_TASKS_PER_COLLECTION:
        raise BatchServiceError("RequestBodyTooLarge", "A task collection may hold at most 100 tasks.",
                                values={"MaxLimit": str(MAX_TASKS_PER_COLLECTION)})
    job = call.service.repo.get_job(call.params["jobId"])
    results = []
    valid_bodies, positions = [], []
    for index, item in enumerate(body["value"]):
        try:
            valid_bodies.append(schema.validate(models.BatchTaskCreateOptions, item))
            positions.append(index)
            results.append(None)
        except BatchServiceError as error:
            results.append(_item_error(item, error))
    for index, (task, error) in zip(positions, call.service.tasks.create_tasks(job.id, valid_bodies)):
        item_id = body["value"][index].get("id")
        results[index] = _item_error(body["value"][index], error) if error else {
            "status": "success", "taskId": item_id, "eTag": task.data["eTag"],
            "lastModified": task.data["lastModified"], "location": _task_url(call, job.id, task.id)}
    return Reply(200, {"odata.metadata": call.metadata("taskaddresult"), "value": results})


def _item_error(item: object, error: BatchServiceError) -> dict:
    task_id = item.get("id") if isinstance(item, dict) else None
    status = "servererror" if error.status >= 500 and error.code != "FeatureNotEmulated" else "clienterror"
    return {"status": status, "taskId": task_id if isinstance(task_id, str) else json.dumps(task_id),
            "error": error.item_error()}


def list_tasks(call: Call) -> Reply:
    job = call.service.repo.get_job(call.params["jobId"])
    return entity_list_reply(call, list(job.tasks.values()), task_view, "tasks")


def get_task(call: Call) -> Reply:
    task = _task(call)
    return entity_reply(call, task_view(call, task), "tasks/@Element")


def replace_task(call: Call) -> Reply:
    _task(call)
    task = call.service.tasks.replace_task(call.params["jobId"], call.params["taskId"], body_of(call, models.BatchTask))
    return updated(call, _task_url(call, task.job_id, task.id), task.data)


def delete_task(call: Call) -> Reply:
    _task(call)
    call.service.tasks.delete_task(call.params["jobId"], call.params["taskId"])
    return Reply(200)


def terminate_task(call: Call) -> Reply:
    _task(call)
    call.service.tasks.terminate_task(call.params["jobId"], call.params["taskId"])
    return Reply(204)


def reactivate_task(call: Call) -> Reply:
    _task(call)
    call.service.tasks.reactivate_task(call.params["jobId"], call.params["taskId"])
    return Reply(204)


def list_sub_tasks(call: Call) -> Reply:
    task = call.service.repo.get_task(call.params["jobId"], call.params["taskId"])
    return list_reply(call, [subtask_view(call, subtask) for subtask in subtasks(task)], "subtaskinfo",
                      key=lambda subtask: f"{subtask['id']:010d}", filterable=False)
