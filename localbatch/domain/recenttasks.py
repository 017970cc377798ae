"""A node's `recentTasks`: the tasks (and multi-instance subtasks) that ran on it lately.

Each entry is what the node last saw of one task or subtask: jobId, taskId, subtaskId (a
subtask only), taskState and executionInfo; the view adds taskUrl. An entry moves to the end
whenever its task changes state on the node, so the list runs from the least to the most
recently changed, and holds at most RECENT_TASKS_LIMIT entries (the least recent go first). It
lives in the node's data, so it is durable and survives restarts; the property is absent until
a task has run on the node, as on Azure.
"""
from __future__ import annotations

from typing import Optional

from .entities import Node, Task

RECENT_TASKS_LIMIT = 20
# What a subtask record shares with BatchTaskExecutionInfo.
_SUBTASK_EXECUTION_FIELDS = ("startTime", "endTime", "exitCode", "containerInfo", "failureInfo", "result")


def note_task(node: Optional[Node], task: Task, subtask: Optional[dict] = None) -> None:
    """Record on `node` the current state of `task`, or of one of its subtasks."""
    if node is None or not node.attached:
        return
    if subtask is None:
        entry = {"jobId": task.job_id, "taskId": task.id, "taskState": task.state,
                 "executionInfo": dict(task.execution_info)}
    else:
        execution = {name: subtask[name] for name in _SUBTASK_EXECUTION_FIELDS if name in subtask}
        execution["retryCount"] = task.execution_info.get("retryCount", 0)
        execution["requeueCount"] = task.execution_info.get("requeueCount", 0)
        entry = {"jobId": task.job_id, "taskId": task.id, "subtaskId": subtask["id"], "taskState": subtask["state"],
                 "executionInfo": execution}
    entries = [dict(item) for item in node.data.get("recentTasks") or [] if not _same(item, entry)]
    entries.append(entry)
    node.data["recentTasks"] = entries[-RECENT_TASKS_LIMIT:]


def _same(a: dict, b: dict) -> bool:
    return (a["jobId"].lower() == b["jobId"].lower() and a["taskId"].lower() == b["taskId"].lower()
            and a.get("subtaskId") == b.get("subtaskId"))
