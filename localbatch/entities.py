"""In-memory entities. `data` holds the wire form (camelCase, as GET returns it, minus `url`);
the other attributes are the emulator's own bookkeeping. Both are persisted."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Optional

from . import wire


def _touch(data: dict) -> None:
    data["eTag"] = wire.new_etag()
    data["lastModified"] = wire.now_iso()


def _transition(data: dict, state: str, keep_previous: bool = False) -> None:
    if keep_previous and data.get("state") != state:
        data["previousState"] = data["state"]
        data["previousStateTransitionTime"] = data["stateTransitionTime"]
    data["state"] = state
    data["stateTransitionTime"] = wire.now_iso()


class _WireEntity:
    """What every entity reads from, or changes in, its wire form `data`."""
    data: dict

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> str:
        return self.data["state"]


class _VersionedEntity(_WireEntity):
    """An entity with an ETag (nodes have none)."""

    def touch(self) -> None:
        """A change the client can see: new ETag and lastModified."""
        _touch(self.data)


class _TrackedEntity(_VersionedEntity):
    """Jobs and tasks also report their previous state, and every transition is a change."""

    def set_state(self, state: str) -> None:
        _transition(self.data, state, keep_previous=True)
        _touch(self.data)


@dataclass
class Node(_WireEntity):
    pool_id: str
    data: dict
    index: int
    users: dict = field(default_factory=dict)   # name -> {isAdmin, expiryTime, sshPublicKey, hasPassword}
    running: dict = field(default_factory=dict)  # "job/task" -> slots used
    boot_generation: int = 0
    # "remove", "reboot" or "reimage": what to do once the running tasks finish (taskcompletion).
    after_tasks: Optional[str] = None
    start_task_pid: Optional[int] = None  # while the start task's program runs

    @property
    def key(self) -> str:
        return f"{self.pool_id.lower()}/{self.id}"

    def set_state(self, state: str) -> None:
        _transition(self.data, state)

    def record(self) -> dict:
        return {"poolId": self.pool_id, "data": self.data, "index": self.index, "users": self.users,
                "running": self.running, "afterTasks": self.after_tasks, "startTaskPid": self.start_task_pid}

    @classmethod
    def from_record(cls, record: dict) -> "Node":
        return cls(record["poolId"], record["data"], record["index"], record["users"], record["running"],
                   after_tasks=record.get("afterTasks"), start_task_pid=record.get("startTaskPid"))


@dataclass
class Pool(_VersionedEntity):
    data: dict
    next_node_index: int = 0
    auto_pool_job_id: Optional[str] = None
    nodes: dict[str, Node] = field(default_factory=dict)

    def set_state(self, state: str) -> None:
        _transition(self.data, state)

    def set_allocation_state(self, state: str) -> None:
        self.data["allocationState"] = state
        self.data["allocationStateTransitionTime"] = wire.now_iso()

    def record(self) -> dict:
        return {"data": self.data, "nextNodeIndex": self.next_node_index, "autoPoolJobId": self.auto_pool_job_id}

    @classmethod
    def from_record(cls, record: dict) -> "Pool":
        return cls(record["data"], record["nextNodeIndex"], record.get("autoPoolJobId"))


@dataclass
class Task(_TrackedEntity):
    job_id: str
    data: dict
    node_key: Optional[str] = None  # pool/node while it runs
    pid: Optional[int] = None
    working_dir: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.job_id.lower()}/{self.id.lower()}"

    @property
    def required_slots(self) -> int:
        return self.data.get("requiredSlots", 1)

    def record(self) -> dict:
        return {"jobId": self.job_id, "data": self.data, "nodeKey": self.node_key, "pid": self.pid,
                "workingDir": self.working_dir}

    @classmethod
    def from_record(cls, record: dict) -> "Task":
        return cls(record["jobId"], record["data"], record.get("nodeKey"), record.get("pid"), record.get("workingDir"))


@dataclass
class Job(_TrackedEntity):
    data: dict
    tasks: dict[str, Task] = field(default_factory=dict)  # lower-cased id -> task
    # Active tasks in the order they should be scheduled (insertion order of the dict).
    pending: "collections.OrderedDict[str, None]" = field(default_factory=collections.OrderedDict)
    running_count: int = 0  # tasks preparing or running, kept by the service

    @property
    def pool_id(self) -> Optional[str]:
        return (self.data.get("executionInfo") or {}).get("poolId")

    def record(self) -> dict:
        return {"data": self.data}

    @classmethod
    def from_record(cls, record: dict) -> "Job":
        return cls(record["data"])
