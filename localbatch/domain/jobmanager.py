"""A job's job manager task: what is kept of it, and how it differs from the job's other tasks.

The job manager task is created with its job and is then an ordinary task of the job (list_tasks
shows it, its id is taken). It differs in three ways, all read from the job's `jobManagerTask`:
- it is scheduled before the job's other tasks (also when it is retried): while it waits for a
  node, they wait too;
- `runExclusive` (default true): it runs only on a node with no other task, and no other task
  starts on that node while it runs;
- `allowLowPriorityNode` (default true): false keeps it off low-priority (spot) nodes.
When it completes (whatever its result) and `killJobOnCompletion` is true (the default), the job
terminates with the reason `JMComplete`, stopping the tasks still running.
"""
from __future__ import annotations

from typing import Optional

from ..errors import BatchServiceError
from .entities import Job, Task

JOB_MANAGER = "jobManagerTask"
# Properties of a job manager that are not properties of the task it becomes, with the service's defaults.
JOB_MANAGER_FLAGS = {"killJobOnCompletion": True, "runExclusive": True, "allowLowPriorityNode": True}
TERMINATE_REASON = "JMComplete"


def job_manager_spec(body: dict) -> Optional[dict]:
    """The job manager of a job being created, as the job keeps and shows it (flags defaulted)."""
    spec = body.get(JOB_MANAGER)
    if not spec:
        return None
    flags = {name: default if spec.get(name) is None else spec[name] for name, default in JOB_MANAGER_FLAGS.items()}
    return {**spec, **flags}


def task_body(spec: dict) -> dict:
    """The body of the task the job manager becomes (as add_task would have received it)."""
    return {name: value for name, value in spec.items() if name not in JOB_MANAGER_FLAGS}


def with_property_prefix(error: BatchServiceError) -> BatchServiceError:
    """An error about the job manager's task body, naming the property as the job's body has it."""
    for key in ("PropertyName", "Feature"):
        if key in error.values and not error.values[key].startswith(JOB_MANAGER):
            error.values[key] = f"{JOB_MANAGER}.{error.values[key]}"
    return error


def is_job_manager(job: Job, task: Task) -> bool:
    spec = job.data.get(JOB_MANAGER)
    return bool(spec) and spec["id"].lower() == task.id.lower()


def job_manager_key(job: Job) -> Optional[str]:
    """The task key ("job/task", as nodes hold their running tasks) of the job's job manager, if any."""
    spec = job.data.get(JOB_MANAGER)
    return f"{job.key}/{spec['id'].lower()}" if spec else None


def job_manager_id(job: Job) -> Optional[str]:
    """The job manager's lower-cased id (as the job keys its tasks and its queue), if it has one."""
    spec = job.data.get(JOB_MANAGER)
    return spec["id"].lower() if spec else None


def exclusive_job_manager_key(job: Job) -> Optional[str]:
    """The task key of the job's job manager when it runs exclusive (the default), else None."""
    spec = job.data.get(JOB_MANAGER)
    return job_manager_key(job) if spec and spec.get("runExclusive", True) is not False else None


def runs_exclusive(job: Job, task: Task) -> bool:
    return is_job_manager(job, task) and job.data[JOB_MANAGER].get("runExclusive", True) is not False


def allows_low_priority_node(job: Job, task: Task) -> bool:
    return not is_job_manager(job, task) or job.data[JOB_MANAGER].get("allowLowPriorityNode", True) is not False


def kills_job_on_completion(job: Job, task: Task) -> bool:
    return is_job_manager(job, task) and job.data[JOB_MANAGER].get("killJobOnCompletion", True) is not False
