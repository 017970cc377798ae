"""The Batch service's domain: pools, nodes, jobs and tasks, and their state transitions.

Handlers call these methods with already-validated request bodies and shape what they return.
Every change goes to the store through `_save`; timers and background work run on the loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Optional

from . import images, wire
from .node import processes
from .node.agent import EmulatorFault, NodeAgent, execution_times
from .entities import Job, Node, Pool, Task
from .errors import BatchServiceError, invalid_property
from .node.resourcefiles import AutoStorage, ResourceFileDownloader, check_relative_path
from .scheduler import Scheduler
from .store import Store

logger = logging.getLogger(__name__)

NODE_AGENT_VERSION = "1.12.7"
UNFINISHED_TASK_STATES = ("active", "preparing", "running")


@dataclass
class Timings:
    """How long simulated infrastructure steps take, in seconds (short by default)."""
    node_creating: float = 0.1
    node_starting: float = 0.2
    pool_deleting: float = 0.1
    node_leaving: float = 0.05
    job_terminating: float = 0.05
    job_deleting: float = 0.05
    node_rebooting: float = 0.2


class BatchService:
    def __init__(self, location: str, account_name: str, timings: Optional[Timings] = None,
                 auto_storage: Optional[AutoStorage] = None):
        self.location = os.path.abspath(location)
        self.account_name = account_name
        self.base_url = ""  # set by the server once it is bound
        self.timings = timings or Timings()
        self.store = Store(os.path.join(self.location, "state"))
        self.agent = NodeAgent(self, os.path.join(self.location, "nodes"),
                               ResourceFileDownloader(auto_storage or AutoStorage()))
        self.scheduler = Scheduler(self._pool_by_key, self._jobs_on_pool, self._begin_task)
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self._jobs_by_pool: dict[str, set[str]] = {}
        self._background: set[asyncio.Task] = set()
        self._job_timers: dict[str, asyncio.TimerHandle] = {}
        self._closing = False

    # ------------------------------------------------------------------ lifecycle ----------
    def load(self) -> None:
        """Read the saved state and bring what was in flight back to a consistent point."""
        for record in self.store.load("pool"):
            pool = Pool.from_record(record)
            self.pools[pool.id.lower()] = pool
        for record in self.store.load("node"):
            node = Node.from_record(record)
            pool = self.pools.get(node.pool_id.lower())
            if pool is not None:
                pool.nodes[node.id] = node
        for record in self.store.load("job"):
            job = Job.from_record(record)
            self.jobs[job.id.lower()] = job
            self._index_job(job)
        for record in self.store.load("task"):
            task = Task.from_record(record)
            job = self.jobs.get(task.job_id.lower())
            if job is not None:
                job.tasks[task.id.lower()] = task
        self._recover()

    def _recover(self) -> None:
        for job in self.jobs.values():
            for key, task in job.tasks.items():
                if task.state in ("running", "preparing"):
                    if task.pid and task.working_dir:
                        processes.kill_leftover_process_group(task.pid, task.working_dir)
                    self._requeue(job, task, save=True)
                elif task.state == "active":
                    job.pending[key] = None
        for pool in self.pools.values():
            for node in pool.nodes.values():
                if node.start_task_pid:  # the emulator stopped without ending it (a crash)
                    processes.kill_leftover_process_group(
                        node.start_task_pid, os.path.join(self.agent.node_root(node), "startup", "wd"))
                    node.start_task_pid = None
                    self._save_node(node)
                node.running.clear()
                if node.data["state"] in ("idle", "running"):
                    node.data["runningTasksCount"] = node.data["runningTaskSlotsCount"] = 0
                    node.set_state("idle")
                    self._save_node(node)
        for job in list(self.jobs.values()):
            if job.state == "deleting":
                self._spawn(self._finish_job_delete(job))
            elif job.state == "terminating":
                self._spawn(self._finish_job_terminate(job, job.data["executionInfo"].get("terminateReason")))
            elif job.state == "disabling":
                self._spawn(self._finish_job_disable(job))

    def start_background_work(self) -> None:
        """Resume timers and node boots; called on the loop once the server runs."""
        for pool in list(self.pools.values()):
            if pool.data["state"] == "deleting":
                self._spawn(self._finish_pool_delete(pool))
                continue
            for node in list(pool.nodes.values()):
                if node.data["state"] in ("creating", "starting", "waitingforstarttask", "rebooting", "reimaging"):
                    self._spawn(self._boot_node(pool, node, skip_creating=node.data["state"] != "creating"))
                elif node.data["state"] == "leavingpool":
                    self._spawn(self._finish_node_removal(pool, node))
                elif node.after_tasks:  # its tasks were requeued when the emulator stopped
                    self._run_deferred_action(node)
            if pool.data["allocationState"] != "steady":
                self._resize_to_target(pool)
            self.scheduler.kick(pool.id)
        for job in list(self.jobs.values()):
            self._arm_job_wall_clock(job)

    async def close(self) -> None:
        self._closing = True  # the scheduler starts nothing more
        for timer in self._job_timers.values():
            timer.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await self.agent.close()
        finally:
            self.store.close()  # whatever happened to the processes, the state is saved

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work failed", exc_info=task.exception())

    # ------------------------------------------------------------------ persistence --------
    # Only what still exists is written: work that finishes after a delete (a start task or a
    # task being killed) must not bring the row back, nor attach it to a new entity of the same id.
    def _save_pool(self, pool: Pool) -> None:
        if self.pools.get(pool.id.lower()) is pool:
            self.store.put("pool", pool.id.lower(), pool.record())

    def _save_node(self, node: Node) -> None:
        pool = self.pools.get(node.pool_id.lower())
        if pool is not None and pool.nodes.get(node.id) is node:
            self.store.put("node", node.key, node.record())

    def _save_job(self, job: Job) -> None:
        if self.jobs.get(job.id.lower()) is job:
            self.store.put("job", job.id.lower(), job.record())

    def _save_task(self, task: Task) -> None:
        job = self.jobs.get(task.job_id.lower())
        if job is not None and job.tasks.get(task.id.lower()) is task:
            self.store.put("task", task.key, task.record())

    # ------------------------------------------------------------------ lookups ------------
    def _pool_by_key(self, key: str) -> Optional[Pool]:
        return self.pools.get(key.lower())

    def get_pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id.lower())
        if pool is None:
            raise BatchServiceError("PoolNotFound")
        return pool

    def get_node(self, pool_id: str, node_id: str) -> Node:
        node = self.get_pool(pool_id).nodes.get(node_id)
        if node is None:
            raise BatchServiceError("NodeNotFound")
        return node

    def get_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id.lower())
        if job is None:
            raise BatchServiceError("JobNotFound")
        return job

    def get_task(self, job_id: str, task_id: str) -> Task:
        task = self.get_job(job_id).tasks.get(task_id.lower())
        if task is None:
            raise BatchServiceError("TaskNotFound")
        return task

    def _jobs_on_pool(self, pool_key: str) -> list[Job]:
        return [self.jobs[key] for key in self._jobs_by_pool.get(pool_key.lower(), ()) if key in self.jobs]

    def _index_job(self, job: Job) -> None:
        if job.pool_id:
            self._jobs_by_pool.setdefault(job.pool_id.lower(), set()).add(job.id.lower())

    # ================================================================== pools ==============
    def create_pool(self, body: dict, auto_pool_job_id: Optional[str] = None) -> Pool:
        _check_id("id", body["id"])
        if body["id"].lower() in self.pools:
            existing = self.pools[body["id"].lower()]
            raise BatchServiceError("PoolBeingDeleted" if existing.data["state"] == "deleting" else "PoolExists")
        _check_pool_body(body)
        now = wire.now_iso()
        data = {
            "id": body["id"], "creationTime": now, "state": "active", "stateTransitionTime": now,
            "allocationState": "resizing", "allocationStateTransitionTime": now,
            "vmSize": body["vmSize"].lower(), "resizeTimeout": body.get("resizeTimeout") or "PT15M",
            "currentDedicatedNodes": 0, "currentLowPriorityNodes": 0,
            "targetDedicatedNodes": body.get("targetDedicatedNodes") or 0,
            "targetLowPriorityNodes": body.get("targetLowPriorityNodes") or 0,
            "enableAutoScale": bool(body.get("enableAutoScale")),
            "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication")),
            "taskSlotsPerNode": body.get("taskSlotsPerNode") or 1,
            "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "Spread"},
        }
        vm_config = dict(body["virtualMachineConfiguration"])
        vm_config["imageReference"] = {"version": "latest", **vm_config["imageReference"]}
        data["virtualMachineConfiguration"] = vm_config
        for optional in ("displayName", "startTask", "metadata", "networkConfiguration", "upgradePolicy",
                         "mountConfiguration"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        if body.get("userAccounts") is not None:
            data["userAccounts"] = _without_secrets(body["userAccounts"])
        pool = Pool(data, auto_pool_job_id=auto_pool_job_id)
        pool.touch()
        self.pools[pool.id.lower()] = pool
        self._save_pool(pool)
        self._resize_to_target(pool)
        return pool

    def update_pool(self, pool_id: str, body: dict, replace: bool = False) -> Pool:
        pool = self.get_pool(pool_id)
        if pool.data["state"] == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        for name in ("startTask", "metadata", "displayName", "taskSchedulingPolicy", "networkConfiguration",
                     "vmSize", "taskSlotsPerNode", "virtualMachineConfiguration", "upgradePolicy",
                     "enableInterNodeCommunication", "mountConfiguration", "resizeTimeout"):
            if name in body and body[name] is not None:
                pool.data[name] = body[name]
            elif replace and name in ("startTask", "metadata"):
                pool.data.pop(name, None)
        if body.get("userAccounts") is not None:
            pool.data["userAccounts"] = _without_secrets(body["userAccounts"])
        pool.touch()
        self._save_pool(pool)
        return pool

    def resize_pool(self, pool_id: str, body: dict) -> Pool:
        pool = self._steady_pool(pool_id)
        if pool.data.get("enableAutoScale"):
            raise BatchServiceError("OperationInvalidForCurrentState",
                                    "A pool with auto scale enabled cannot be resized manually.")
        for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if body.get(name) is not None:
                if body[name] < 0:
                    raise invalid_property(name, body[name], "The value must be zero or more.")
                pool.data[name] = body[name]
        pool.data["resizeTimeout"] = body.get("resizeTimeout") or pool.data["resizeTimeout"]
        pool.touch()
        self._resize_to_target(pool, body.get("nodeDeallocationOption") or "requeue")
        return pool

    def stop_resize(self, pool_id: str) -> Pool:
        pool = self.get_pool(pool_id)
        if pool.data["allocationState"] == "resizing":
            # Nodes are allocated at once here, so stopping keeps what exists as the new target.
            pool.data["targetDedicatedNodes"] = _count_nodes(pool, dedicated=True)
            pool.data["targetLowPriorityNodes"] = _count_nodes(pool, dedicated=False)
            pool.set_allocation_state("steady")
            pool.touch()
            self._save_pool(pool)
        return pool

    def remove_nodes(self, pool_id: str, body: dict) -> Pool:
        pool = self._steady_pool(pool_id)
        node_ids = body["nodeList"]
        missing = [node_id for node_id in node_ids if node_id not in pool.nodes]
        if missing:
            raise invalid_property("nodeList", missing[0], "The node does not belong to the pool.")
        for node_id in node_ids:
            node = pool.nodes[node_id]
            key = "targetDedicatedNodes" if node.data.get("isDedicated", True) else "targetLowPriorityNodes"
            pool.data[key] = max(0, pool.data[key] - 1)
        pool.set_allocation_state("resizing")
        pool.touch()
        for node_id in node_ids:
            self._remove_node(pool, pool.nodes[node_id], body.get("nodeDeallocationOption") or "requeue")
        self._save_pool(pool)
        self._finish_allocation_later(pool)
        return pool

    def _steady_pool(self, pool_id: str) -> Pool:
        pool = self.get_pool(pool_id)
        if pool.data["state"] == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        if pool.data["allocationState"] != "steady":
            raise BatchServiceError("PoolNotSteady", "The pool is resizing; wait until its allocationState "
                                                     "is steady or stop the resize.")
        return pool

    def delete_pool(self, pool_id: str) -> None:
        pool = self.get_pool(pool_id)
        if pool.data["state"] == "deleting":
            return
        pool.set_state("deleting")
        pool.touch()
        self._save_pool(pool)
        self._spawn(self._finish_pool_delete(pool))

    async def _finish_pool_delete(self, pool: Pool) -> None:
        await asyncio.sleep(self.timings.pool_deleting)
        for node in list(pool.nodes.values()):
            self._evict_tasks(node, "requeue")
            self.agent.stop(_start_task_key(node), "shutdown")
            self.store.delete("node", node.key)
        pool.nodes.clear()
        await asyncio.get_running_loop().run_in_executor(None, self.agent.remove_node_directories, pool.id)
        self.pools.pop(pool.id.lower(), None)
        self.store.delete("pool", pool.id.lower())

    def _resize_to_target(self, pool: Pool, deallocation: str = "requeue") -> None:
        """Add or remove nodes so the pool meets its targets; allocation finishes after a short delay."""
        pool.set_allocation_state("resizing")
        for dedicated, target_key in ((True, "targetDedicatedNodes"), (False, "targetLowPriorityNodes")):
            kind = [n for n in pool.nodes.values()
                    if n.data.get("isDedicated", True) == dedicated and n.data["state"] != "leavingpool"]
            current = [n for n in kind if n.after_tasks != "remove"]
            # Growing again: keep nodes that were only waiting for their tasks to leave, then add.
            for node in [n for n in kind if n.after_tasks == "remove"][:max(0, pool.data[target_key] - len(current))]:
                node.after_tasks = None
                self._save_node(node)
                current.append(node)
            for _ in range(pool.data[target_key] - len(current)):
                self._add_node(pool, dedicated)
            surplus = len(current) - pool.data[target_key]
            if surplus > 0:
                # Idle nodes go first, as on Azure.
                ordered = sorted(current, key=lambda n: (n.data["state"] == "running", -n.index))
                for node in ordered[:surplus]:
                    self._remove_node(pool, node, deallocation)
        self._save_pool(pool)
        self._finish_allocation_later(pool)

    def _finish_allocation_later(self, pool: Pool) -> None:
        asyncio.get_running_loop().call_later(self.timings.node_creating, self._finish_allocation, pool)

    def _finish_allocation(self, pool: Pool, poll: bool = True) -> None:
        """resizing -> steady once no node is still being created or leaving the pool.

        Called when a node is allocated or gone (poll=False), and from a timer that re-arms itself
        until the pool is steady (poll=True), which also covers nodes that wait for their tasks.
        """
        if self.pools.get(pool.id.lower()) is not pool or pool.data["allocationState"] != "resizing":
            return
        if any(n.data["state"] in ("creating", "leavingpool") or n.after_tasks == "remove"
               for n in pool.nodes.values()):
            if poll:
                self._finish_allocation_later(pool)
            return
        pool.set_allocation_state("steady")
        pool.touch()
        self._save_pool(pool)

    def _add_node(self, pool: Pool, dedicated: bool) -> Node:
        index = pool.next_node_index
        pool.next_node_index += 1
        digest = hashlib.sha256(f"{self.location}/{pool.id}/{pool.data['creationTime']}/{index}".encode()).hexdigest()
        node_id = f"tvmps_{digest}_{'d' if dedicated else 'p'}"
        now = wire.now_iso()
        data = {
            "id": node_id, "state": "creating", "schedulingState": "enabled", "stateTransitionTime": now,
            "allocationTime": now, "ipAddress": f"10.0.{(index + 4) // 256}.{(index + 4) % 256}",
            "affinityId": f"TVM:{node_id}", "vmSize": pool.data["vmSize"], "totalTasksRun": 0,
            "totalTasksSucceeded": 0, "runningTasksCount": 0, "runningTaskSlotsCount": 0,
            "isDedicated": dedicated,
            "endpointConfiguration": {"inboundEndpoints": []},
            "virtualMachineInfo": {"imageReference": {
                **pool.data["virtualMachineConfiguration"]["imageReference"], "exactVersion": "22.04.202411010"}},
        }
        node = Node(pool.id, data, index)
        pool.nodes[node_id] = node
        self._count_current(pool)
        self._save_node(node)
        self._spawn(self._boot_node(pool, node))
        return node

    def _count_current(self, pool: Pool) -> None:
        pool.data["currentDedicatedNodes"] = _count_nodes(pool, dedicated=True)
        pool.data["currentLowPriorityNodes"] = _count_nodes(pool, dedicated=False)

    def _remove_node(self, pool: Pool, node: Node, deallocation: str) -> None:
        if node.data["state"] == "leavingpool":
            return
        if self._wait_for_tasks(node, deallocation, "remove"):
            return
        self._evict_tasks(node, "terminate" if deallocation == "terminate" else "requeue")
        node.boot_generation += 1
        self.agent.stop(_start_task_key(node), "shutdown")
        node.set_state("leavingpool")
        self._save_node(node)
        self._spawn(self._finish_node_removal(pool, node))

    async def _finish_node_removal(self, pool: Pool, node: Node) -> None:
        await asyncio.sleep(self.timings.node_leaving)
        pool.nodes.pop(node.id, None)
        self.store.delete("node", node.key)
        self._count_current(pool)
        self._save_pool(pool)
        self._finish_allocation(pool, poll=False)
        await asyncio.get_running_loop().run_in_executor(
            None, self.agent.remove_node_directories, pool.id, node.id)

    async def _boot_node(self, pool: Pool, node: Node, skip_creating: bool = False, wipe: bool = False) -> None:
        """creating -> starting -> (waitingforstarttask) -> idle, running the start task on the way.

        `wipe` (a reimage) removes the node's directories first, as a fresh OS disk would.
        """
        generation = node.boot_generation
        if wipe:
            await asyncio.get_running_loop().run_in_executor(
                None, self.agent.remove_node_directories, pool.id, node.id)
        if not skip_creating:
            await asyncio.sleep(self.timings.node_creating)
            if generation != node.boot_generation or node.id not in pool.nodes:
                return
            node.set_state("starting")
            self._save_node(node)
            self._finish_allocation(pool, poll=False)  # allocated: steady once no node is still being created
        restarting = node.data["state"] in ("rebooting", "reimaging")
        await asyncio.sleep(self.timings.node_rebooting if restarting else self.timings.node_starting)
        if generation != node.boot_generation or node.id not in pool.nodes:
            return
        self.agent.prepare_node_directories(node)
        node.data["lastBootTime"] = wire.now_iso()
        node.data["nodeAgentInfo"] = {"version": NODE_AGENT_VERSION, "lastUpdateTime": node.data["lastBootTime"]}
        start_task = pool.data.get("startTask")
        if not start_task:
            self._node_ready(pool, node)
            return
        node.data["startTask"] = start_task
        if start_task.get("waitForSuccess", True):
            node.set_state("waitingforstarttask")
            self._save_node(node)
            succeeded = await self._run_start_task(pool, node, start_task, generation)
            if generation != node.boot_generation or node.id not in pool.nodes:
                return
            if succeeded:
                self._node_ready(pool, node)
            else:
                node.set_state("starttaskfailed")
                self._save_node(node)
        else:
            self._node_ready(pool, node)
            await self._run_start_task(pool, node, start_task, generation)

    def _node_ready(self, pool: Pool, node: Node) -> None:
        node.set_state("running" if node.running else "idle")
        self._save_node(node)
        self.scheduler.kick(pool.id)

    async def _run_start_task(self, pool: Pool, node: Node, start_task: dict, generation: int) -> bool:
        max_retries = start_task.get("maxTaskRetryCount", 0)
        info = {"state": "running", "startTime": wire.now_iso(), "retryCount": 0}
        startup_dir = os.path.join(self.agent.node_root(node), "startup")
        env = self.agent.environment(node, startup_dir, start_task.get("environmentSettings") or [])
        while True:
            node.data["startTaskInfo"] = info
            self._save_node(node)
            try:
                outcome = await self.agent.run_program(_start_task_key(node), start_task["commandLine"],
                                                       start_task.get("resourceFiles") or [], startup_dir, env,
                                                       None, on_start=lambda pid: self._start_task_started(node, pid))
            except EmulatorFault as exc:
                outcome = _emulator_fault(str(exc))
            except Exception:  # an emulator bug must not leave the node waiting for ever
                logger.exception("the start task of node %s failed inside the emulator", node.key)
                outcome = _emulator_fault("The node agent failed while running the start task; see the emulator's log.")
            node.start_task_pid = None
            if generation != node.boot_generation:
                return False
            execution_times(info, outcome)
            if info["result"] == "success" or (max_retries != -1 and info["retryCount"] >= max_retries):
                info["state"] = "completed"
                node.data["startTaskInfo"] = info
                self._save_node(node)
                return info["result"] == "success"
            info["retryCount"] += 1
            info["lastRetryTime"] = wire.now_iso()
            info["startTime"] = info["lastRetryTime"]

    def _start_task_started(self, node: Node, pid: int) -> None:
        """Keep the start task's pid, so a start after a crash can kill a process left behind."""
        node.start_task_pid = pid
        self._save_node(node)

    # ================================================================== nodes ==============
    def reboot_node(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        return self._restart_node(pool_id, node_id, option, "reboot")

    def reimage_node(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        return self._restart_node(pool_id, node_id, option, "reimage")

    def _restart_node(self, pool_id: str, node_id: str, option: str, action: str) -> Node:
        """Reboot (keep the disk) or reimage (a fresh disk); the start task runs again either way."""
        pool = self.get_pool(pool_id)
        node = self.get_node(pool_id, node_id)
        if node.data["state"] not in ("idle", "running", "starttaskfailed", "unusable", "offline"):
            raise BatchServiceError("NodeNotReady", f"The node is {node.data['state']} and cannot be "
                                                    f"{action}ed now.")
        if self._wait_for_tasks(node, option, action):
            return node
        self._evict_tasks(node, "terminate" if option == "terminate" else "requeue")
        node.boot_generation += 1
        self.agent.stop(_start_task_key(node), "shutdown")
        node.set_state("rebooting" if action == "reboot" else "reimaging")
        self._save_node(node)
        self._spawn(self._boot_node(pool, node, skip_creating=True, wipe=action == "reimage"))
        return node

    def _wait_for_tasks(self, node: Node, option: str, action: str) -> bool:
        """For taskcompletion/retaineddata: defer `action` until the node's tasks end. True when deferred."""
        if option not in ("taskcompletion", "retaineddata") or not node.running:
            return False
        node.after_tasks = action  # the scheduler gives the node nothing new meanwhile
        self._save_node(node)
        return True

    def _run_deferred_action(self, node: Node) -> None:
        """The node's last task ended: do what was deferred until then."""
        action, node.after_tasks = node.after_tasks, None
        pool = self.pools.get(node.pool_id.lower())
        if pool is None or pool.nodes.get(node.id) is not node:
            return
        if action == "remove":
            self._remove_node(pool, node, "requeue")
        elif action in ("reboot", "reimage"):
            self._restart_node(pool.id, node.id, "requeue", action)

    def set_node_scheduling(self, pool_id: str, node_id: str, enabled: bool, option: str = "requeue") -> Node:
        node = self.get_node(pool_id, node_id)
        if not enabled and option in ("requeue", "terminate"):
            self._evict_tasks(node, option)
        node.data["schedulingState"] = "enabled" if enabled else "disabled"
        self._save_node(node)
        self.scheduler.kick(pool_id)
        return node

    def _evict_tasks(self, node: Node, option: str) -> None:
        """Take running tasks off a node: requeue them, or end them (terminate)."""
        for task_key in list(node.running):
            job_key, _, task_id = task_key.partition("/")
            job = self.jobs.get(job_key)
            task = job.tasks.get(task_id) if job else None
            if task is None:
                node.running.pop(task_key, None)
                continue
            if not self.agent.stop(task.key, option):
                # Still downloading inputs or just assigned: the runner sees the state change.
                self._release_slot(node, task)
                if option == "requeue":
                    self._requeue(job, task)
                else:
                    self._complete_task(job, task, {"failureInfo": {
                        "category": "usererror", "code": "TaskEnded", "message": "The task was terminated."}})

    def add_user(self, pool_id: str, node_id: str, body: dict) -> None:
        node = self.get_node(pool_id, node_id)
        name = body["name"]
        if name in node.users:
            raise BatchServiceError("NodeUserExists")
        node.users[name] = _user_record(body)
        self._save_node(node)

    def replace_user(self, pool_id: str, node_id: str, name: str, body: dict) -> None:
        node = self.get_node(pool_id, node_id)
        if name not in node.users:
            raise BatchServiceError("NodeUserNotFound")
        node.users[name] = _user_record({**body, "name": name, "isAdmin": node.users[name]["isAdmin"]})
        self._save_node(node)

    def remote_login_port(self, node: Node) -> int:
        """The port a node's SSH endpoint is published on (an inbound NAT pool starts at 50000)."""
        return 50000 + node.index

    def delete_user(self, pool_id: str, node_id: str, name: str) -> None:
        node = self.get_node(pool_id, node_id)
        if node.users.pop(name, None) is None:
            raise BatchServiceError("NodeUserNotFound")
        self._save_node(node)

    # ================================================================== jobs ===============
    def create_job(self, body: dict) -> Job:
        _check_id("id", body["id"])
        existing = self.jobs.get(body["id"].lower())
        if existing is not None:
            raise BatchServiceError("JobBeingDeleted" if existing.state == "deleting" else "JobExists")
        for unsupported in ("jobManagerTask", "jobPreparationTask", "jobReleaseTask"):
            if body.get(unsupported):
                raise _not_emulated(unsupported)
        pool_info = body["poolInfo"]
        if not pool_info.get("poolId") and not pool_info.get("autoPoolSpecification"):
            raise invalid_property("poolInfo", "{}", "Specify either poolId or autoPoolSpecification.")
        now = wire.now_iso()
        constraints = {"maxWallClockTime": wire.MAX_DURATION, "maxTaskRetryCount": 0,
                       **(body.get("constraints") or {})}
        _check_durations("constraints", constraints, ("maxWallClockTime",))
        data = {
            "id": body["id"], "usesTaskDependencies": bool(body.get("usesTaskDependencies")),
            "creationTime": now, "state": "active", "stateTransitionTime": now,
            "priority": body.get("priority") or 0,
            "maxParallelTasks": body["maxParallelTasks"] if body.get("maxParallelTasks") is not None else -1,
            "allowTaskPreemption": bool(body.get("allowTaskPreemption")),
            "constraints": constraints, "poolInfo": _pool_info_without_secrets(pool_info),
            "onAllTasksComplete": body.get("onAllTasksComplete") or "noaction",
            "onTaskFailure": body.get("onTaskFailure") or "noaction",
        }
        for optional in ("displayName", "commonEnvironmentSettings", "metadata", "networkConfiguration"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        if data["usesTaskDependencies"]:
            raise _not_emulated("usesTaskDependencies")
        pool_id = pool_info.get("poolId")
        job = Job(data)
        if not pool_id:
            pool_id = self._create_auto_pool(job, pool_info["autoPoolSpecification"])
        data["executionInfo"] = {"startTime": now, "poolId": pool_id}
        job.touch()
        self.jobs[job.id.lower()] = job
        self._index_job(job)
        self._save_job(job)
        self._arm_job_wall_clock(job)
        self._check_job_complete(job)  # terminatejob with no tasks yet: complete at once
        return job

    def _arm_job_wall_clock(self, job: Job) -> None:
        """Terminate the job (reason MaxWallClockTimeExpiry) once it has existed for its maxWallClockTime."""
        old_timer = self._job_timers.pop(job.id.lower(), None)
        if old_timer is not None:
            old_timer.cancel()
        limit = wire.parse_duration(job.data["constraints"].get("maxWallClockTime") or wire.MAX_DURATION)
        if limit >= 10 ** 8 or job.state in ("completed", "terminating", "deleting"):
            return
        elapsed = (wire.utcnow() - wire.parse_iso(job.data["creationTime"])).total_seconds()
        self._job_timers[job.id.lower()] = asyncio.get_running_loop().call_later(
            max(0.0, limit - elapsed), self._job_wall_clock_expired, job)

    def _job_wall_clock_expired(self, job: Job) -> None:
        self._job_timers.pop(job.id.lower(), None)
        if self.jobs.get(job.id.lower()) is job and job.state in ("active", "disabling", "disabled", "enabling"):
            self.terminate_job(job.id, "MaxWallClockTimeExpiry")

    def _create_auto_pool(self, job: Job, spec: dict) -> str:
        if spec.get("poolLifetimeOption", "").lower() not in ("job",):
            raise invalid_property("poolInfo.autoPoolSpecification.poolLifetimeOption",
                                   spec.get("poolLifetimeOption"), "Use 'job' for a job's auto-pool.")
        guid = str(uuid.uuid4()).upper()
        pool_id = f"{spec['autoPoolIdPrefix']}_{guid}" if spec.get("autoPoolIdPrefix") else guid
        pool_body = {**(spec.get("pool") or {}), "id": pool_id}
        try:
            self.create_pool(pool_body, auto_pool_job_id=job.id)
        except BatchServiceError as exc:
            if "PropertyName" in exc.values:
                exc.values["PropertyName"] = "poolInfo.autoPoolSpecification.pool." + exc.values["PropertyName"]
            raise
        return pool_id

    def update_job(self, job_id: str, body: dict, replace: bool = False) -> Job:
        job = self.get_job(job_id)
        if job.state in ("deleting", "terminating", "completed"):
            raise BatchServiceError("JobCompleted" if job.state == "completed" else
                                    "JobBeingDeleted" if job.state == "deleting" else "JobBeingTerminated")
        requested = body.get("onAllTasksComplete") or ("noaction" if replace else None)  # PUT: absent = noaction
        current = (job.data.get("onAllTasksComplete") or "").lower()
        if requested and requested.lower() != "terminatejob" and current == "terminatejob":
            raise invalid_property("onAllTasksComplete", requested,
                                   "Once a job's onAllTasksComplete is terminatejob it cannot be changed back.")
        if replace:
            body = {**body, "onAllTasksComplete": requested}
        for name in ("priority", "maxParallelTasks", "allowTaskPreemption", "constraints", "metadata",
                     "onAllTasksComplete", "poolInfo", "networkConfiguration"):
            if body.get(name) is not None:
                job.data[name] = _pool_info_without_secrets(body[name]) if name == "poolInfo" else body[name]
            elif replace and name == "metadata":
                job.data.pop(name, None)
        if body.get("constraints") is not None:
            # A new constraints object replaces the old one; what it leaves out takes the defaults.
            job.data["constraints"] = {"maxWallClockTime": wire.MAX_DURATION, "maxTaskRetryCount": 0,
                                       **body["constraints"]}
            _check_durations("constraints", job.data["constraints"], ("maxWallClockTime",))
            self._arm_job_wall_clock(job)
        if body.get("poolInfo", {}).get("poolId"):
            self._jobs_by_pool.get((job.pool_id or "").lower(), set()).discard(job.id.lower())
            job.data["executionInfo"]["poolId"] = body["poolInfo"]["poolId"]
            self._index_job(job)
        job.touch()
        self._save_job(job)
        self._check_job_complete(job)
        self.scheduler.kick(job.pool_id)
        return job

    def disable_job(self, job_id: str, option: str) -> Job:
        """active -> disabling -> disabled once no task of the job runs any more (requeue and
        terminate stop them; wait lets them finish). Disabling a disabled job changes nothing."""
        job = self.get_job(job_id)
        if job.state in ("disabling", "disabled"):
            return job
        if job.state != "active":
            raise BatchServiceError("JobNotActive")
        job.set_state("disabling")
        self._save_job(job)
        for task in list(job.tasks.values()):
            if task.state in ("running", "preparing") and option in ("requeue", "terminate"):
                self._stop_task(job, task, option)
        self._spawn(self._finish_job_disable(job))
        return job

    async def _finish_job_disable(self, job: Job) -> None:
        await self._until_no_task_runs(job, "disabling")
        if job.state == "disabling":
            job.set_state("disabled")
            self._save_job(job)

    async def _until_no_task_runs(self, job: Job, while_state: str, limit: Optional[float] = None) -> None:
        """Wait until none of the job's tasks runs, the job leaves `while_state`, or `limit` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while job.running_count > 0 and job.state == while_state and self.jobs.get(job.id.lower()) is job:
            if deadline is not None and loop.time() > deadline:
                logger.warning("tasks of job %s still run %.0f s after they were stopped", job.id, limit)
                return
            await asyncio.sleep(0.02)

    def enable_job(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        if job.state not in ("disabled", "disabling"):
            raise BatchServiceError("OperationInvalidForCurrentState", "The job is not disabled.")
        job.set_state("active")
        self._save_job(job)
        self.scheduler.kick(job.pool_id)
        return job

    def terminate_job(self, job_id: str, reason: Optional[str]) -> Job:
        job = self.get_job(job_id)
        if job.state == "completed":
            raise BatchServiceError("JobCompleted")
        if job.state == "deleting":
            raise BatchServiceError("JobBeingDeleted")
        if job.state != "terminating":
            job.set_state("terminating")
            # Kept with the job, so a restart while it is terminating finishes with the same reason.
            job.data["executionInfo"]["terminateReason"] = reason or "UserTerminate"
            self._save_job(job)
            self._spawn(self._finish_job_terminate(job, reason or "UserTerminate"))
        return job

    async def _finish_job_terminate(self, job: Job, reason: str) -> None:
        await asyncio.sleep(self.timings.job_terminating)
        for task in list(job.tasks.values()):
            if task.state in UNFINISHED_TASK_STATES:
                self._stop_task(job, task, "terminate")
        job.pending.clear()
        # The job stays terminating until its killed tasks are seen to end (they report completed).
        await self._until_no_task_runs(job, "terminating", limit=30)
        if job.state == "terminating":
            self._mark_job_completed(job, reason)

    def _mark_job_completed(self, job: Job, reason: str) -> None:
        if job.state == "completed":
            return
        job.set_state("completed")
        job.data["executionInfo"]["endTime"] = wire.now_iso()
        job.data["executionInfo"]["terminateReason"] = reason
        self._save_job(job)
        self._release_auto_pool(job)

    def _release_auto_pool(self, job: Job) -> None:
        spec = (job.data["poolInfo"].get("autoPoolSpecification") or {})
        pool = self.pools.get((job.pool_id or "").lower())
        if spec and not spec.get("keepAlive") and pool is not None and pool.auto_pool_job_id == job.id:
            self.delete_pool(pool.id)

    def delete_job(self, job_id: str) -> None:
        job = self.get_job(job_id)
        if job.state == "deleting":
            return
        job.set_state("deleting")
        self._save_job(job)
        self._spawn(self._finish_job_delete(job))

    async def _finish_job_delete(self, job: Job) -> None:
        await asyncio.sleep(self.timings.job_deleting)
        for task in list(job.tasks.values()):
            if task.state in ("running", "preparing"):
                self._stop_task(job, task, "terminate")
        job.pending.clear()
        pool = self.pools.get((job.pool_id or "").lower())
        if pool is not None:
            directories = self.agent.job_directories(pool, job.id)
            await asyncio.get_running_loop().run_in_executor(None, self.agent.remove_directories, directories)
        self._release_auto_pool(job)
        self.jobs.pop(job.id.lower(), None)
        self._jobs_by_pool.get((job.pool_id or "").lower(), set()).discard(job.id.lower())
        self.store.delete("job", job.id.lower())
        self.store.delete_prefix("task", job.id.lower() + "/")

    def task_counts(self, job_id: str) -> dict:
        job = self.get_job(job_id)
        counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
        slots = dict(counts)
        for task in job.tasks.values():
            state = "running" if task.state == "preparing" else task.state
            required = task.required_slots
            counts[state] += 1
            slots[state] += required
            if state == "completed":
                outcome = "failed" if task.data["executionInfo"].get("result") == "failure" else "succeeded"
                counts[outcome] += 1
                slots[outcome] += required
        return {"taskCounts": counts, "taskSlotCounts": slots}

    # ================================================================== tasks ==============
    def add_tasks(self, job_id: str, bodies: list[dict]) -> list[tuple[Optional[Task], Optional[BatchServiceError]]]:
        """Add several tasks; each gets its own result, as in addtaskcollection."""
        job = self.get_job(job_id)
        if job.state in ("completed", "terminating", "deleting"):
            raise BatchServiceError("JobCompleted" if job.state == "completed" else
                                    "JobBeingDeleted" if job.state == "deleting" else "JobBeingTerminated")
        results: list[tuple[Optional[Task], Optional[BatchServiceError]]] = []
        for body in bodies:
            try:
                results.append((self._add_task(job, body), None))
            except BatchServiceError as exc:
                results.append((None, exc))
        self.scheduler.kick(job.pool_id)
        return results

    def _add_task(self, job: Job, body: dict) -> Task:
        _check_id("id", body["id"])
        if body["id"].lower() in job.tasks:
            raise BatchServiceError("TaskExists")
        for unsupported in ("dependsOn", "multiInstanceSettings", "exitConditions", "outputFiles",
                            "applicationPackageReferences", "containerSettings", "authenticationTokenSettings"):
            if body.get(unsupported):
                raise _not_emulated(unsupported)
        for index, resource_file in enumerate(body.get("resourceFiles") or []):
            _check_resource_file(f"resourceFiles[{index}]", resource_file)
        # The job's maxWallClockTime limits the job as a whole (see _arm_job_wall_clock), not each task.
        constraints = {"maxWallClockTime": wire.MAX_DURATION,
                       "retentionTime": "P7D",
                       "maxTaskRetryCount": job.data["constraints"].get("maxTaskRetryCount", 0),
                       **(body.get("constraints") or {})}
        _check_durations("constraints", constraints, ("maxWallClockTime", "retentionTime"))
        now = wire.now_iso()
        data = {"id": body["id"], "creationTime": now, "state": "active", "stateTransitionTime": now,
                "commandLine": body["commandLine"],
                "userIdentity": body.get("userIdentity") or {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
                "constraints": constraints, "requiredSlots": body.get("requiredSlots") or 1,
                "executionInfo": {"retryCount": 0, "requeueCount": 0}}
        for optional in ("displayName", "resourceFiles", "environmentSettings", "affinityInfo"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        task = Task(job.id, data)
        task.touch()
        job.tasks[task.id.lower()] = task
        job.pending[task.id.lower()] = None
        self._save_task(task)
        return task

    def replace_task(self, job_id: str, task_id: str, body: dict) -> Task:
        task = self.get_task(job_id, task_id)
        if task.state == "completed":
            raise BatchServiceError("TaskCompleted")
        if body.get("constraints"):
            task.data["constraints"].update(body["constraints"])
        task.touch()
        self._save_task(task)
        return task

    def terminate_task(self, job_id: str, task_id: str) -> None:
        job = self.get_job(job_id)
        task = self.get_task(job_id, task_id)
        if task.state != "completed":
            self._stop_task(job, task, "terminate")

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        job = self.get_job(job_id)
        task = self.get_task(job_id, task_id)
        if task.state != "completed" or task.data["executionInfo"].get("result") != "failure":
            raise BatchServiceError("OperationInvalidForCurrentState",
                                    "Only a task that completed with a failure can be reactivated.")
        if job.state != "active":
            raise BatchServiceError("JobNotActive")
        task.data["executionInfo"] = {"retryCount": 0, "requeueCount": task.data["executionInfo"].get("requeueCount", 0)}
        task.data.pop("nodeInfo", None)
        task.set_state("active")
        job.pending[task.id.lower()] = None
        self._save_task(task)
        self.scheduler.kick(job.pool_id)

    def delete_task(self, job_id: str, task_id: str) -> None:
        job = self.get_job(job_id)
        task = self.get_task(job_id, task_id)
        if task.state in ("running", "preparing"):
            self._stop_task(job, task, "terminate")
        job.pending.pop(task.id.lower(), None)
        del job.tasks[task.id.lower()]
        self.store.delete("task", task.key)

    def task_directory(self, job_id: str, task_id: str) -> tuple[Task, str]:
        """The task and its directory on the node where it last ran; FileNotFound before it ran."""
        task = self.get_task(job_id, task_id)
        node_info = task.data.get("nodeInfo")
        if not node_info:
            raise BatchServiceError("FileNotFound", "The task has not been assigned to a compute node yet.")
        pool = self.pools.get(node_info["poolId"].lower())
        node = pool.nodes.get(node_info["nodeId"]) if pool else None
        if node is None:
            raise BatchServiceError("NodeNotFound", "The compute node the task ran on no longer exists.")
        return task, self.agent.task_dir(node, self.get_job(job_id).id, task.id)

    def _stop_task(self, job: Job, task: Task, option: str) -> None:
        """End (terminate) or requeue a task, whether it waits, downloads or runs."""
        if task.state == "active":
            job.pending.pop(task.id.lower(), None)
            if option == "terminate":
                self._complete_task(job, task, {"failureInfo": {
                    "category": "usererror", "code": "TaskEnded", "message": "The task was terminated."}})
            return
        if self.agent.stop(task.key, option):
            return  # the runner finishes the bookkeeping when the process exits
        node = self._node_of(task)
        if node is not None:
            self._release_slot(node, task)
        if option == "requeue":
            self._requeue(job, task)
        else:
            self._complete_task(job, task, {"failureInfo": {
                "category": "usererror", "code": "TaskEnded", "message": "The task was terminated."}})

    def _node_of(self, task: Task) -> Optional[Node]:
        if not task.node_key:
            return None
        pool_key, _, node_id = task.node_key.partition("/")
        pool = self.pools.get(pool_key)
        return pool.nodes.get(node_id) if pool else None

    # ---- running a task ------------------------------------------------------------------
    def _begin_task(self, node: Node, job: Job, task: Task) -> None:
        """Called by the scheduler: claim the slots and start the runner."""
        if self._closing:
            job.pending[task.id.lower()] = None  # still active; the next start schedules it
            return
        pool = self.pools[node.pool_id.lower()]
        task_key = f"{job.id.lower()}/{task.id.lower()}"
        node.running[task_key] = task.required_slots
        node.data["runningTasksCount"] = len(node.running)
        node.data["runningTaskSlotsCount"] = sum(node.running.values())
        node.data["totalTasksRun"] += 1
        if node.data["state"] == "idle":
            node.set_state("running")
        self._save_node(node)
        task_dir = self.agent.task_dir(node, job.id, task.id)
        task.node_key = node.key
        task.working_dir = os.path.join(task_dir, "wd")
        task.data["nodeInfo"] = {
            "affinityId": node.data["affinityId"], "poolId": pool.id, "nodeId": node.id,
            "taskRootDirectory": f"workitems/{job.id}/job-1/{task.id}"}
        task.data["executionInfo"]["startTime"] = wire.now_iso()
        for name in ("endTime", "exitCode", "failureInfo", "result"):
            task.data["executionInfo"].pop(name, None)
        task.set_state("preparing" if task.data.get("resourceFiles") else "running")
        job.running_count += 1
        self._save_task(task)
        self._spawn(self._run_task(node, job, task, task_dir))

    async def _run_task(self, node: Node, job: Job, task: Task, task_dir: str) -> None:
        env = self.agent.environment(node, task_dir, task.data.get("environmentSettings") or [], job, task)
        timeout = wire.parse_duration(task.data["constraints"]["maxWallClockTime"])
        try:
            outcome = await self.agent.run_program(
                task.key, task.data["commandLine"], task.data.get("resourceFiles") or [], task_dir, env, timeout,
                on_start=lambda pid: self._task_process_started(node, task, pid))
        except EmulatorFault as exc:
            outcome = _emulator_fault(str(exc))
        except Exception:  # an emulator bug must not leave the task holding its slot for ever
            logger.exception("running task %s failed inside the emulator", task.key)
            outcome = _emulator_fault("The node agent failed while running the task; see the emulator's log.")
        if task.node_key != node.key or task.state not in ("running", "preparing"):
            return  # evicted or ended while it ran; bookkeeping already done
        if not self._still_exists(job, task):
            self._release_slot(node, task)  # deleted (or its job) while it ran: free the slot, keep nothing
            return
        self._release_slot(node, task)
        if outcome.get("stopReason") in ("requeue", "shutdown"):
            if outcome["stopReason"] == "requeue":
                self._requeue(job, task)
            return
        if "exitCode" in outcome and outcome["exitCode"] == 0 and "failureInfo" not in outcome:
            node.data["totalTasksSucceeded"] += 1
        retries = task.data["constraints"].get("maxTaskRetryCount", 0)
        info = task.data["executionInfo"]
        retriable = outcome.get("failureInfo", {}).get("code") == "FailureExitCode"
        if retriable and (retries == -1 or info["retryCount"] < retries):
            info["retryCount"] += 1
            info["lastRetryTime"] = wire.now_iso()
            execution_times(info, outcome)
            task.set_state("active")
            job.pending[task.id.lower()] = None
            self._save_task(task)
            self.scheduler.kick(job.pool_id)
            return
        self._complete_task(job, task, outcome)

    def _task_process_started(self, node: Node, task: Task, pid: int) -> None:
        """The program runs: a task with resource files leaves `preparing`, and the pid is kept so
        that a start after a crash can kill a process this run left behind."""
        if task.node_key != node.key or task.state not in ("preparing", "running") \
                or not self._still_exists(self.jobs.get(task.job_id.lower()), task):
            return
        if task.state == "preparing":
            task.set_state("running")
        task.pid = pid
        self._save_task(task)

    def _still_exists(self, job: Optional[Job], task: Task) -> bool:
        """False once the task or its job was deleted: nothing about it may be saved again."""
        return job is not None and self.jobs.get(job.id.lower()) is job and job.tasks.get(task.id.lower()) is task

    def _release_slot(self, node: Node, task: Task) -> None:
        task_key = f"{task.job_id.lower()}/{task.id.lower()}"
        if node.running.pop(task_key, None) is not None:
            job = self.jobs.get(task.job_id.lower())
            if job is not None:
                job.running_count = max(0, job.running_count - 1)
        node.data["runningTasksCount"] = len(node.running)
        node.data["runningTaskSlotsCount"] = sum(node.running.values())
        if node.data["state"] == "running" and not node.running:
            node.set_state("idle")
        self._save_node(node)
        task.node_key = None
        task.pid = None
        if node.after_tasks and not node.running:
            self._run_deferred_action(node)
        self.scheduler.kick(node.pool_id)

    def _requeue(self, job: Job, task: Task, save: bool = True) -> None:
        info = task.data["executionInfo"]
        info["requeueCount"] = info.get("requeueCount", 0) + 1
        info["lastRequeueTime"] = wire.now_iso()
        task.node_key = None
        task.pid = None
        task.set_state("active")
        job.pending[task.id.lower()] = None
        if save:
            self._save_task(task)
        if _loop_running():  # during recovery at start-up the loop is not running yet
            self.scheduler.kick(job.pool_id)

    def _complete_task(self, job: Job, task: Task, outcome: dict) -> None:
        execution_times(task.data["executionInfo"], outcome)
        task.node_key = None
        task.pid = None
        task.set_state("completed")
        self._save_task(task)
        self._check_job_complete(job)

    def _check_job_complete(self, job: Job) -> None:
        # A job without tasks counts as having all its tasks complete (as documented for terminatejob).
        if job.state != "active" or (job.data.get("onAllTasksComplete") or "").lower() != "terminatejob":
            return
        if job.pending or job.running_count:
            return
        if all(task.state == "completed" for task in job.tasks.values()):
            self._mark_job_completed(job, "AllTasksComplete")

    # ================================================================== counts =============
    def node_counts(self) -> list[dict]:
        names = ("creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
                 "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask",
                 "deallocated", "deallocating", "upgradingOS", "total")
        result = []
        for pool in sorted(self.pools.values(), key=lambda p: p.id):
            dedicated = dict.fromkeys(names, 0)
            low_priority = dict.fromkeys(names, 0)
            for node in pool.nodes.values():
                counters = dedicated if node.data.get("isDedicated", True) else low_priority
                state = node.data["state"]
                name = next((n for n in names if n.lower() == state), "unknown")
                counters[name] += 1
                counters["total"] += 1
            result.append({"poolId": pool.id, "dedicated": dedicated, "lowPriority": low_priority})
        return result

    def all_tasks(self) -> Iterable[Task]:
        for job in self.jobs.values():
            yield from job.tasks.values()


# ---------------------------------------------------------------------- validation helpers --
_ID_ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _check_id(name: str, value: str) -> None:
    if not value or len(value) > 64 or not set(value) <= _ID_ALLOWED:
        raise invalid_property(name, value, "An id may contain up to 64 letters, digits, hyphens and underscores.")


def _check_durations(prefix: str, values: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if values.get(name) is not None:
            try:
                wire.parse_duration(values[name])
            except ValueError:
                raise invalid_property(f"{prefix}.{name}", values[name], "Expected an ISO-8601 duration.") from None


def _check_resource_file(path: str, resource_file: dict) -> None:
    sources = [k for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if resource_file.get(k)]
    if len(sources) != 1:
        raise invalid_property(path, ",".join(sources) or "none",
                               "Specify exactly one of httpUrl, storageContainerUrl and autoStorageContainerName.")
    if sources[0] == "httpUrl" and not resource_file.get("filePath"):
        raise invalid_property(f"{path}.filePath", "", "filePath is required with httpUrl.")
    if resource_file.get("blobPrefix") and sources[0] == "httpUrl":
        raise invalid_property(f"{path}.blobPrefix", resource_file["blobPrefix"],
                               "blobPrefix applies to container sources only.")
    reason = check_relative_path(resource_file.get("filePath") or "")
    if reason:
        raise invalid_property(f"{path}.filePath", resource_file["filePath"], reason)
    if resource_file.get("fileMode"):
        try:
            int(resource_file["fileMode"], 8)
        except ValueError:
            raise invalid_property(f"{path}.fileMode", resource_file["fileMode"], "Expected an octal mode such as 0755.") from None


def _check_pool_body(body: dict) -> None:
    vm_config = body.get("virtualMachineConfiguration")
    if not vm_config:
        raise BatchServiceError("MissingRequiredProperty", values={"PropertyName": "virtualMachineConfiguration"})
    images.check_virtual_machine_configuration(vm_config)
    if vm_config.get("containerConfiguration"):
        raise _not_emulated("virtualMachineConfiguration.containerConfiguration")
    if body.get("enableAutoScale"):
        raise _not_emulated("enableAutoScale")
    for name in ("mountConfiguration", "applicationPackageReferences"):
        if body.get(name):
            raise _not_emulated(name)
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if (body.get(name) or 0) < 0:
            raise invalid_property(name, body[name], "The value must be zero or more.")
    if (body.get("taskSlotsPerNode") or 1) < 1:
        raise invalid_property("taskSlotsPerNode", body["taskSlotsPerNode"], "The value must be at least 1.")
    start_task = body.get("startTask")
    if start_task:
        for index, resource_file in enumerate(start_task.get("resourceFiles") or []):
            _check_resource_file(f"startTask.resourceFiles[{index}]", resource_file)
        if start_task.get("containerSettings"):
            raise _not_emulated("startTask.containerSettings")


def _without_secrets(user_accounts: list[dict]) -> list[dict]:
    """User accounts as they are kept and shown: passwords and private keys are never stored or echoed.
    (Tasks run as the emulator's own user, so nothing needs them.)"""
    kept = []
    for account in user_accounts:
        account = {key: value for key, value in account.items() if key != "password"}
        if isinstance(account.get("linuxUserConfiguration"), dict):
            account["linuxUserConfiguration"] = {key: value for key, value in account["linuxUserConfiguration"].items()
                                                 if key != "sshPrivateKey"}
        kept.append(account)
    return kept


def _pool_info_without_secrets(pool_info: dict) -> dict:
    pool = ((pool_info or {}).get("autoPoolSpecification") or {}).get("pool") or {}
    if not pool.get("userAccounts"):
        return pool_info
    return {**pool_info, "autoPoolSpecification": {**pool_info["autoPoolSpecification"],
                                                   "pool": {**pool, "userAccounts": _without_secrets(pool["userAccounts"])}}}


def _emulator_fault(message: str) -> dict:
    """The outcome of a program the emulator itself failed to run: a server error, not the user's."""
    return {"failureInfo": {"category": "servererror", "code": "NodeAgentFailure", "message": message}}


def _not_emulated(feature: str) -> BatchServiceError:
    return BatchServiceError("FeatureNotEmulated", values={
        "Feature": feature, "Reason": "localbatch does not emulate this feature; see LIMITATIONS in README.md."})


def _count_nodes(pool: Pool, dedicated: bool) -> int:
    return sum(1 for n in pool.nodes.values()
               if n.data.get("isDedicated", True) == dedicated and n.data["state"] != "leavingpool")


def _start_task_key(node: Node) -> str:
    return f"start:{node.key}"


def _user_record(body: dict) -> dict:
    return {"name": body["name"], "isAdmin": bool(body.get("isAdmin")), "expiryTime": body.get("expiryTime"),
            "sshPublicKey": body.get("sshPublicKey"), "hasPassword": bool(body.get("password"))}


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
