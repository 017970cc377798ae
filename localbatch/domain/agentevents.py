"""The nodes' agent logs, told by the state transitions of nodes and of the tasks on them.

The repository hands every state transition to `AgentEvents` (entities.TransitionObserver), so
a node's log says when it started, became idle, rebooted, was reimaged, failed its start task or
became unusable, and when each task was given to it, ran and ended (with its exit code and
failure), without a log call beside each transition. What a program run does (downloads,
process start and end) the node agent writes itself (node/agent.py).
"""
from __future__ import annotations

import logging
from typing import Optional

from ..node.agentlog import AgentLog
from .entities import Entity, Node, Task
from .repository import Repository
from .states import RUNNING_TASK_STATES

logger = logging.getLogger(__name__)


class AgentEvents:
    def __init__(self, log: AgentLog, repo: Repository):
        self.log = log
        self.repo = repo

    def __call__(self, entity: Entity, previous: str, state: str) -> None:
        try:
            if isinstance(entity, Node):
                self._node(entity, previous, state)
            elif isinstance(entity, Task):
                self._task(entity, previous, state)
        except Exception:  # pylint: disable=broad-except  (a log line never fails the transition it tells of)
            logger.exception("could not write the agent log line of a %s transition", entity.kind)

    def _node(self, node: Node, previous: str, state: str) -> None:
        message, level = f"node state {previous} -> {state}", "INFO"
        if previous == "creating":
            message += f": allocated, address {node.data.get('ipAddress')}"
        elif state == "rebooting":
            message += ": rebooting (the disk is kept; the start task runs again)"
        elif state == "reimaging":
            message += ": reimaging (a fresh disk; the start task runs again)"
        elif state == "leavingpool":
            message += ": leaving the pool"
        elif state == "starttaskfailed":
            message, level = message + ": " + _start_task_result(node.data.get("startTaskInfo") or {}), "WARNING"
        elif state == "unusable":
            errors = node.data.get("errors") or []
            message += ": " + ("; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors)
                               or "unusable")
            level = "ERROR"
        self.log.write(node.pool_id, node.id, message, level, create=True)

    def _task(self, task: Task, previous: str, state: str) -> None:
        if previous not in RUNNING_TASK_STATES and state not in RUNNING_TASK_STATES:
            return  # not on a node (added, reactivated, ended while it waited)
        where = self._node_of(task)
        if where is None:
            return
        name, info, level = f"task {task.job_id}/{task.id}", task.execution_info, "INFO"
        if previous == "active":
            message = f"{name}: given to this node ({state})"
        elif state == "running":
            message = f"{name}: running"
        elif state == "completed":
            message = f"{name}: completed, {_result(info)}"
            level = "INFO" if info.get("result") == "success" else "WARNING"
        else:  # back to active: retried after a failure, or requeued
            message = (f"{name}: back to active (retryCount {info.get('retryCount', 0)}, "
                       f"requeueCount {info.get('requeueCount', 0)})")
            if info.get("exitCode") is not None:
                message += f" after {_result(info)}"
        self.log.write(where[0], where[1], message, level)

    def _node_of(self, task: Task) -> Optional[tuple[str, str]]:
        """The node the task is (or was just) on, if it still exists."""
        node_info = task.data.get("nodeInfo") or {}
        pool = self.repo.find_pool(node_info.get("poolId"))
        if pool is None or node_info.get("nodeId") not in pool.nodes:
            return None
        return pool.id, node_info["nodeId"]


def _result(info: dict) -> str:
    parts = [f"result {info.get('result')}"]
    if info.get("exitCode") is not None:
        parts.append(f"exit code {info['exitCode']}")
    failure = info.get("failureInfo")
    if failure:
        parts.append(f"failure {failure.get('category')} {failure.get('code')}: {failure.get('message')}")
    return ", ".join(parts)


def _start_task_result(info: dict) -> str:
    return f"start task failed after {info.get('retryCount', 0)} retries, {_result(info)}"
