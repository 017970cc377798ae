"""The state machines of pools, nodes, jobs, job schedules and tasks: one table of allowed transitions each.

An entity changes state only through `StateMachine.check`, so a transition the table does not
allow is a bug that raises (and the request that caused it answers 500), never a silent
overwrite. Operations that a client may legitimately attempt in the wrong state check first and
answer the service's own error (e.g. JobCompleted); the tables are the last line of defence.
"""
from __future__ import annotations

from typing import Mapping


class IllegalTransition(RuntimeError):
    """The domain tried a state change its entity's table does not allow."""


class StateMachine:
    def __init__(self, entity: str, transitions: Mapping[str, frozenset[str]]):
        self.entity = entity
        self.transitions = transitions

    def check(self, current: str, new: str) -> None:
        allowed = self.transitions.get(current)
        if allowed is None or new not in allowed:
            raise IllegalTransition(f"{self.entity}: {current} -> {new} is not an allowed transition")

    def states(self) -> frozenset[str]:
        return frozenset(self.transitions)


def _table(**edges: str) -> dict[str, frozenset[str]]:
    return {state: frozenset(targets.split()) for state, targets in edges.items()}


POOL = StateMachine("pool", _table(active="deleting", deleting=""))

POOL_ALLOCATION = StateMachine("pool allocation", _table(
    steady="resizing",
    resizing="steady resizing stopping",
    stopping="steady",
))

# A node leaving the pool can be on its way from any state; leavingpool ends with its removal.
_LEAVE = " leavingpool"
NODE = StateMachine("node", _table(
    creating="starting" + _LEAVE,
    starting="waitingforstarttask idle running unusable" + _LEAVE,
    waitingforstarttask="idle running starttaskfailed" + _LEAVE,
    idle="running rebooting reimaging unusable" + _LEAVE,
    running="idle rebooting reimaging unusable" + _LEAVE,
    starttaskfailed="rebooting reimaging" + _LEAVE,
    unusable="rebooting reimaging" + _LEAVE,
    offline="rebooting reimaging" + _LEAVE,
    rebooting="waitingforstarttask idle running unusable" + _LEAVE,
    reimaging="waitingforstarttask idle running unusable" + _LEAVE,
    leavingpool="",
))

JOB = StateMachine("job", _table(
    active="disabling terminating completed deleting",
    disabling="disabled active terminating deleting",
    disabled="enabling active terminating deleting",
    enabling="active terminating deleting",
    terminating="completed deleting",
    completed="deleting",
    deleting="",
))

JOB_SCHEDULE = StateMachine("job schedule", _table(
    active="disabled terminating completed deleting",
    disabled="active terminating deleting",
    terminating="completed deleting",
    completed="deleting",
    deleting="",
))

TASK = StateMachine("task", _table(
    active="preparing running completed",
    preparing="running active completed",
    running="active completed",
    completed="active",  # reactivate
))

# Node states in which the node takes tasks.
SCHEDULABLE_NODE_STATES = frozenset({"idle", "running"})
UNFINISHED_TASK_STATES = frozenset({"active", "preparing", "running"})
RUNNING_TASK_STATES = frozenset({"preparing", "running"})
