"""Pools, nodes, jobs, job schedules and tasks: in-memory entities that mark themselves changed.

`data` holds the wire form (camelCase, as GET returns it, minus `url`); the other public
attributes are the emulator's own bookkeeping. Both are persisted: any assignment to a public
attribute, and any change inside `data` (nested dicts included), tells the entity's tracker,
which writes the entity at the end of the event-loop turn. Nothing in the domain saves by hand.
Attributes named in `TRANSIENT` are derived at load time and never written.

Lists inside `data` are replaced, never changed in place (they are what the client sent).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional, Protocol

from .. import wire
from . import states


class Tracker(Protocol):
    def mark(self, entity: "Entity") -> None: ...


# Told of every state transition of an attached entity: (entity, previous state, new state).
TransitionObserver = Callable[["Entity", str, str], None]


class TrackedDict(dict):
    """A dict that tells its owning entity about every change, and wraps nested dicts alike."""
    __slots__ = ("_owner",)

    def __init__(self, owner: "Entity", values: Optional[dict] = None):
        super().__init__()
        self._owner = owner
        for key, value in (values or {}).items():
            dict.__setitem__(self, key, _wrap(owner, value))

    def __setitem__(self, key, value) -> None:
        dict.__setitem__(self, key, _wrap(self._owner, value))
        self._owner.changed()

    def __delitem__(self, key) -> None:
        dict.__delitem__(self, key)
        self._owner.changed()

    def pop(self, key, *default):
        had = key in self
        value = dict.pop(self, key, *default)
        if had:
            self._owner.changed()
        return value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            dict.__setitem__(self, key, _wrap(self._owner, value))
        self._owner.changed()

    def clear(self) -> None:
        if self:
            dict.clear(self)
            self._owner.changed()

    def popitem(self):
        item = dict.popitem(self)
        self._owner.changed()
        return item

    def __ior__(self, other):
        self.update(other)
        return self


def _wrap(owner: "Entity", value: Any) -> Any:
    if isinstance(value, dict) and not (isinstance(value, TrackedDict) and value._owner is owner):
        return TrackedDict(owner, value)
    return value


class Entity:
    """Base of every entity: change tracking, id and state."""
    kind: ClassVar[str]
    machine: ClassVar[states.StateMachine]
    TRANSIENT: ClassVar[frozenset[str]] = frozenset()
    data: TrackedDict

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in self.TRANSIENT:
            object.__setattr__(self, name, value)
            return
        object.__setattr__(self, name, _wrap(self, value))
        self.changed()

    def changed(self) -> None:
        tracker = self.__dict__.get("_tracker")
        if tracker is not None:
            tracker.mark(self)

    def attach(self, tracker: Optional[Tracker], changed: bool = True,
               observer: Optional[TransitionObserver] = None) -> None:
        """Start (a tracker) or stop (None) writing this entity's changes; `changed=False` for an
        entity just read from the store, which has nothing new to write. `observer` is told of
        every state transition from then on (until detached)."""
        object.__setattr__(self, "_tracker", tracker)
        object.__setattr__(self, "_observer", observer if tracker is not None else None)
        if changed:
            self.changed()

    @property
    def attached(self) -> bool:
        return self.__dict__.get("_tracker") is not None

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> str:
        return self.data["state"]

    def set_state(self, state: str) -> None:
        """Move to `state` as the entity's table allows; staying in the same state changes nothing."""
        if state == self.data["state"]:
            return
        self.machine.check(self.data["state"], state)
        self._record_transition(state)

    def _record_transition(self, state: str) -> None:
        previous = self.data["state"]
        self.data["state"] = state
        self.data["stateTransitionTime"] = wire.now_iso()
        observer = self.__dict__.get("_observer")
        if observer is not None:
            observer(self, previous, state)

    def touch(self) -> None:
        """A change the client can see: new ETag and lastModified."""
        self.data["eTag"] = wire.new_etag()
        self.data["lastModified"] = wire.now_iso()

    def record(self) -> dict:
        """What the store keeps of the entity."""
        raise NotImplementedError


class _TrackedHistoryEntity(Entity):
    """Jobs and tasks also report their previous state, and every transition is a change (ETag)."""

    def _record_transition(self, state: str) -> None:
        self.data["previousState"] = self.data["state"]
        self.data["previousStateTransitionTime"] = self.data["stateTransitionTime"]
        super()._record_transition(state)
        self.touch()


class Node(Entity):
    kind = "node"
    machine = states.NODE
    TRANSIENT = frozenset({"boot_generation"})

    def __init__(self, pool_id: str, data: dict, index: int, users: Optional[dict] = None,
                 running: Optional[dict] = None, after_tasks: Optional[str] = None,
                 start_task_pid: Optional[int] = None, host_key: Optional[str] = None):
        self.pool_id = pool_id
        self.data = data
        self.index = index
        # name -> {name, isAdmin, expiryTime, sshPublicKey, passwordHash}: never shown on the wire.
        self.users = users or {}
        self.running = running or {}    # "job/task" key -> slots used
        # "remove", "reboot" or "reimage": what to do once the running tasks finish (taskcompletion).
        self.after_tasks = after_tasks
        self.start_task_pid = start_task_pid  # while the start task's program runs
        self.host_key = host_key        # the SSH host key (OpenSSH private key), kept for the node's life
        self.boot_generation = 0        # bumped when a boot in progress is superseded

    @property
    def key(self) -> str:
        return f"{self.pool_id.lower()}/{self.id}"

    @property
    def is_dedicated(self) -> bool:
        return self.data.get("isDedicated", True)

    def record_slots(self) -> None:
        """runningTasksCount and runningTaskSlotsCount from the tasks that hold slots."""
        self.data["runningTasksCount"] = len(self.running)
        self.data["runningTaskSlotsCount"] = sum(self.running.values())

    def record(self) -> dict:
        return {"poolId": self.pool_id, "data": self.data, "index": self.index, "users": self.users,
                "running": self.running, "afterTasks": self.after_tasks, "startTaskPid": self.start_task_pid,
                "hostKey": self.host_key}

    @classmethod
    def from_record(cls, record: dict) -> "Node":
        return cls(record["poolId"], record["data"], record["index"], record["users"], record["running"],
                   after_tasks=record.get("afterTasks"), start_task_pid=record.get("startTaskPid"),
                   host_key=record.get("hostKey"))


class Pool(Entity):
    kind = "pool"
    machine = states.POOL
    TRANSIENT = frozenset({"nodes"})

    def __init__(self, data: dict, next_node_index: int = 0, auto_pool_job_id: Optional[str] = None,
                 mount_secrets: Optional[dict] = None):
        self.data = data
        self.next_node_index = next_node_index
        self.auto_pool_job_id = auto_pool_job_id
        # mountConfiguration index -> {"accountKey" | "sasKey": ...}: kept for the nodes, never shown.
        self.mount_secrets = mount_secrets or {}
        self.nodes: dict[str, Node] = {}

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def allocation_state(self) -> str:
        return self.data["allocationState"]

    def set_allocation_state(self, state: str) -> None:
        if state == self.data["allocationState"]:
            return
        states.POOL_ALLOCATION.check(self.data["allocationState"], state)
        self.data["allocationState"] = state
        self.data["allocationStateTransitionTime"] = wire.now_iso()

    def record(self) -> dict:
        return {"data": self.data, "nextNodeIndex": self.next_node_index, "autoPoolJobId": self.auto_pool_job_id,
                "mountSecrets": self.mount_secrets}

    @classmethod
    def from_record(cls, record: dict) -> "Pool":
        return cls(record["data"], record["nextNodeIndex"], record.get("autoPoolJobId"), record.get("mountSecrets"))


class Task(_TrackedHistoryEntity):
    kind = "task"
    machine = states.TASK
    TRANSIENT = frozenset({"assignment"})

    def __init__(self, job_id: str, data: dict, node_key: Optional[str] = None, pid: Optional[int] = None,
                 working_dir: Optional[str] = None, instances: Optional[dict] = None):
        self.job_id = job_id
        self.data = data
        self.node_key = node_key        # "pool/node" while it holds a slot (a multi-instance task's master)
        self.pid = pid                  # while its program runs, to kill it after a crash
        self.working_dir = working_dir
        # A multi-instance task's instances of its latest run, by id ("0" the primary): see multiinstance.py.
        self.instances = instances or {}
        self.assignment = 0             # bumped each time it is given a node, to tell runs apart

    @property
    def key(self) -> str:
        return f"{self.job_id.lower()}/{self.id.lower()}"

    @property
    def required_slots(self) -> int:
        return self.data.get("requiredSlots", 1)

    @property
    def execution_info(self) -> TrackedDict:
        return self.data["executionInfo"]

    @property
    def multi_instance(self) -> Optional[dict]:
        """The multiInstanceSettings of a multi-instance task, None for any other task."""
        return self.data.get("multiInstanceSettings")

    def record(self) -> dict:
        record = {"jobId": self.job_id, "data": self.data, "nodeKey": self.node_key, "pid": self.pid,
                  "workingDir": self.working_dir}
        if self.instances:
            record["instances"] = self.instances
        return record

    @classmethod
    def from_record(cls, record: dict) -> "Task":
        return cls(record["jobId"], record["data"], record.get("nodeKey"), record.get("pid"), record.get("workingDir"),
                   record.get("instances"))


class Job(_TrackedHistoryEntity):
    kind = "job"
    machine = states.JOB
    TRANSIENT = frozenset({"tasks", "pending", "blocked", "running_count", "barred_nodes"})

    def __init__(self, data: dict, preparation: Optional[dict] = None):
        self.data = data
        self.tasks: dict[str, Task] = {}     # lower-cased id -> task
        # Active tasks in the order they should be scheduled (insertion order).
        self.pending: dict[str, None] = {}
        self.blocked: dict[str, None] = {}   # active tasks waiting for their dependencies
        self.running_count = 0               # tasks preparing or running
        # "pool/node" -> the preparation and release tasks' status there (wire form, see preparation.py).
        self.preparation = preparation or {}
        self.barred_nodes: set[str] = set()  # node ids whose preparation task failed (waitForSuccess)

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def pool_id(self) -> Optional[str]:
        return (self.data.get("executionInfo") or {}).get("poolId")

    def record(self) -> dict:
        return {"data": self.data, "preparation": self.preparation}

    @classmethod
    def from_record(cls, record: dict) -> "Job":
        return cls(record["data"], record.get("preparation"))


class JobSchedule(_TrackedHistoryEntity):
    """A job schedule; `job_ids` are the jobs it created (oldest first), `last_run` the opportunity
    (ISO time) its most recent job was created for, `pool_id` its auto-pool when the pool lives as
    long as the schedule (poolLifetimeOption `jobschedule`)."""
    kind = "jobschedule"
    machine = states.JOB_SCHEDULE

    def __init__(self, data: dict, job_ids: Optional[list] = None, last_run: Optional[str] = None,
                 pool_id: Optional[str] = None, mount_secrets: Optional[dict] = None):
        self.data = data
        self.job_ids = job_ids or []
        self.last_run = last_run
        self.pool_id = pool_id
        # Its auto-pool's mount keys by mountConfiguration index, for the pools it creates; never shown.
        self.mount_secrets = mount_secrets or {}

    @property
    def key(self) -> str:
        return self.id.lower()

    def record(self) -> dict:
        return {"data": self.data, "jobIds": self.job_ids, "lastRun": self.last_run, "poolId": self.pool_id,
                "mountSecrets": self.mount_secrets}

    @classmethod
    def from_record(cls, record: dict) -> "JobSchedule":
        return cls(record["data"], record.get("jobIds"), record.get("lastRun"), record.get("poolId"),
                   record.get("mountSecrets"))
