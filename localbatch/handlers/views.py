"""Wire views of entities: the stored data plus what depends on the request (URLs)."""
from __future__ import annotations

from urllib.parse import quote

from ..domain.entities import Job, JobSchedule, Node, Pool, Task
from ..http import Call


def _segment(value: str) -> str:
    return quote(value, safe="")


def pool_url(call: Call, pool_id: str) -> str:
    return f"{call.base_url}/pools/{_segment(pool_id)}"


def pool_view(call: Call, pool: Pool) -> dict:
    return {"id": pool.id, "url": pool_url(call, pool.id), **pool.data}


def node_view(call: Call, node: Node) -> dict:
    view = {"id": node.id, "url": f"{pool_url(call, node.pool_id)}/nodes/{node.id}", **node.data}
    if view.get("recentTasks"):
        view["recentTasks"] = [{"taskUrl": f"{job_url(call, entry['jobId'])}/tasks/{_segment(entry['taskId'])}", **entry}
                               for entry in view["recentTasks"]]
    return view


def job_url(call: Call, job_id: str) -> str:
    return f"{call.base_url}/jobs/{_segment(job_id)}"


def job_view(call: Call, job: Job) -> dict:
    return {"id": job.id, "url": job_url(call, job.id), **job.data}


def task_view(call: Call, task: Task) -> dict:
    return _with_node_urls(call, {"id": task.id, "url": f"{job_url(call, task.job_id)}/tasks/{_segment(task.id)}",
                                  **task.data})


def subtask_view(call: Call, subtask: dict) -> dict:
    """A subtask of a multi-instance task (see domain/multiinstance.py), with its node's URLs."""
    return _with_node_urls(call, dict(subtask))


def _with_node_urls(call: Call, view: dict) -> dict:
    node_info = view.get("nodeInfo")
    if node_info:
        node_url = f"{pool_url(call, node_info['poolId'])}/nodes/{node_info['nodeId']}"
        view["nodeInfo"] = {**node_info, "nodeUrl": node_url,
                            "taskRootDirectoryUrl": f"{node_url}/files/{node_info['taskRootDirectory']}"}
    return view


def job_schedule_url(call: Call, schedule_id: str) -> str:
    return f"{call.base_url}/jobschedules/{_segment(schedule_id)}"


def job_schedule_view(call: Call, schedule: JobSchedule) -> dict:
    view = {"id": schedule.id, "url": job_schedule_url(call, schedule.id), **schedule.data}
    recent = view["executionInfo"].get("recentJob")
    if recent:
        view["executionInfo"] = {**view["executionInfo"], "recentJob": {**recent, "url": job_url(call, recent["id"])}}
    return view
