"""Task dependencies: a task with `dependsOn` stays active, and is not scheduled, until every task
it names (by id, or by an inclusive range of integer ids) has completed with a dependency action
of `satisfy` (by default: succeeded). A dependency that failed with `block` blocks for ever, as on
Azure. A task named in `taskIds` that does not exist yet is waited for; a range selects the tasks
of the job whose ids are integers inside it (as documented: 1..10 selects "3" and "7", not "5a").
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

from ..errors import BatchServiceError, invalid_property
from . import exitconditions
from .entities import Job, Task

MAX_TASK_IDS_LENGTH = 64000  # the service's limit on the summed length of dependsOn.taskIds


def check_depends_on(job: Job, task_id: str, depends_on: Optional[dict]) -> None:
    if not depends_on:
        return
    if not job.data.get("usesTaskDependencies"):
        raise BatchServiceError("TaskDependenciesNotSpecifiedOnJob")
    task_ids = depends_on.get("taskIds") or []
    if sum(len(name) for name in task_ids) > MAX_TASK_IDS_LENGTH:
        raise BatchServiceError("TaskDependencyListTooLong")
    if any(name.lower() == task_id.lower() for name in task_ids):
        raise invalid_property("dependsOn.taskIds", task_id, "A task cannot depend on itself.")
    for index, id_range in enumerate(depends_on.get("taskIdRanges") or []):
        if id_range["start"] > id_range["end"]:
            raise invalid_property(f"dependsOn.taskIdRanges[{index}]", f"{id_range['start']}-{id_range['end']}",
                                   "The start of a range may not be greater than its end.")
        if id_range["start"] < 0:
            raise invalid_property(f"dependsOn.taskIdRanges[{index}].start", id_range["start"],
                                   "Task id ranges cover non-negative integer ids.")
        if _integer_id(task_id) is not None and id_range["start"] <= int(task_id) <= id_range["end"]:
            raise invalid_property(f"dependsOn.taskIdRanges[{index}]", f"{id_range['start']}-{id_range['end']}",
                                   "A task cannot depend on itself.")


class Dependencies:
    """Which active tasks wait for others, and letting them go when what they wait for completes."""

    def __init__(self, make_pending: Callable[[Job, Task], None]):
        self._make_pending = make_pending

    def admit(self, job: Job, task: Task) -> None:
        """A task became active: schedulable now, or blocked until its dependencies complete."""
        if task.data.get("dependsOn") and not self.satisfied(job, task):
            job.blocked[task.id.lower()] = None
            return
        self._make_pending(job, task)

    def task_completed(self, job: Job) -> None:
        """A task of the job completed: let go of every blocked task that no longer waits."""
        if not job.blocked:
            return
        for key in list(job.blocked):
            task = job.tasks.get(key)
            if task is None or task.state != "active":
                job.blocked.pop(key, None)
            elif self.satisfied(job, task):
                job.blocked.pop(key, None)
                self._make_pending(job, task)

    def forget(self, job: Job, task: Task) -> None:
        job.blocked.pop(task.id.lower(), None)

    def satisfied(self, job: Job, task: Task) -> bool:
        depends_on = task.data.get("dependsOn") or {}
        if not all(_satisfies(job.tasks.get(name.lower())) for name in depends_on.get("taskIds") or []):
            return False
        return all(_satisfies(dependency) for dependency in _tasks_in_ranges(job, depends_on.get("taskIdRanges") or []))


def _satisfies(dependency: Optional[Task]) -> bool:
    if dependency is None or dependency.state != "completed":
        return False
    info = dependency.execution_info
    failure = info.get("failureInfo") or {}
    options = exitconditions.resolve(dependency.data.get("exitConditions"), info.get("exitCode"), failure.get("code"))
    return options.dependency_action == "satisfy"


def _tasks_in_ranges(job: Job, ranges: list[dict]) -> Iterator[Task]:
    """The job's tasks whose ids are integers inside a range (ids such as '07' or '5a' are not)."""
    for id_range in ranges:
        if id_range["end"] - id_range["start"] < len(job.tasks):
            candidates = (job.tasks.get(str(number)) for number in range(id_range["start"], id_range["end"] + 1))
            yield from (task for task in candidates if task is not None)
        else:
            for task in list(job.tasks.values()):
                number = _integer_id(task.id)
                if number is not None and id_range["start"] <= number <= id_range["end"]:
                    yield task


def _integer_id(task_id: str) -> Optional[int]:
    return int(task_id) if task_id.isdigit() and str(int(task_id)) == task_id else None
