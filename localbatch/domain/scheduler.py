"""Assign active tasks to free task slots on a pool's nodes.

Dispatch is event driven: anything that can free a slot or add work calls `kick(pool_id)`,
and one coalesced pass per pool runs on the next turn of the event loop.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Callable, Optional

from . import jobmanager
from .multiinstance import choose_nodes
from .states import SCHEDULABLE_NODE_STATES

if TYPE_CHECKING:
    from .entities import Job, Node, Pool, Task

LOOKAHEAD = 64


class Scheduler:
    def __init__(self, find_pool: Callable[[str], Optional["Pool"]],
                 jobs_for_pool: Callable[[str], list["Job"]],
                 start_task: Callable[["Node", "Job", "Task"], None], launch: Callable[[], None],
                 start_multi_instance_task: Callable[[list["Node"], "Job", "Task"], None]):
        """`start_task` assigns a task to a node, `start_multi_instance_task` one to several nodes
        (its master first); `launch` runs after each pass (once for all the tasks it assigned, so
        they share one commit of the store before their programs start)."""
        self._find_pool = find_pool
        self._jobs_for_pool = jobs_for_pool
        self._start_task = start_task
        self._start_multi_instance_task = start_multi_instance_task
        self._launch = launch
        self._kicked: set[str] = set()

    def kick(self, pool_id: Optional[str]) -> None:
        if not pool_id:
            return
        key = pool_id.lower()
        if key in self._kicked:
            return
        self._kicked.add(key)
        asyncio.get_running_loop().call_soon(self._dispatch, key)

    def _dispatch(self, pool_key: str) -> None:
        self._kicked.discard(pool_key)
        self._assign(pool_key)
        self._launch()

    def _assign(self, pool_key: str) -> None:
        pool = self._find_pool(pool_key)
        if pool is None or pool.data["state"] != "active":
            return
        slots_per_node = pool.data.get("taskSlotsPerNode", 1)
        pool_jobs = self._jobs_for_pool(pool_key)
        # A node running an exclusive job manager takes no other task while it runs.
        exclusive = {key for key in map(jobmanager.exclusive_job_manager_key, pool_jobs) if key is not None}
        free = {node.id: slots_per_node - sum(node.running.values())
                for node in pool.nodes.values()
                if node.data["state"] in SCHEDULABLE_NODE_STATES and node.data["schedulingState"] == "enabled"
                and not node.after_tasks and not exclusive.intersection(node.running)}
        free = {node_id: slots for node_id, slots in free.items() if slots > 0}
        if not free:
            return
        pack = (pool.data.get("taskSchedulingPolicy") or {}).get("nodeFillType", "spread").lower() == "pack"
        jobs = sorted((job for job in pool_jobs if job.state == "active" and job.pending),
                      key=lambda job: (-job.data.get("priority", 0), job.data["creationTime"]))
        for job in jobs:
            limit = job.data.get("maxParallelTasks", -1)
            running = job.running_count
            # Look a little past the free slots only, so a long queue costs nothing per pass.
            candidates = list(itertools.islice(job.pending, sum(free.values()) + LOOKAHEAD))
            manager_key = jobmanager.job_manager_id(job)
            if manager_key in job.pending:  # the job manager goes first, retries included
                candidates = [manager_key, *(key for key in candidates if key != manager_key)]
            for task_key in candidates:
                if not free or (limit != -1 and running >= limit):
                    break
                task = job.tasks[task_key]
                if task.multi_instance:
                    node_ids = choose_nodes(pool, free, task, job.barred_nodes)
                    if node_ids is None:
                        continue  # it waits until enough nodes are free at once
                    del job.pending[task_key]
                    for node_id in node_ids:
                        free[node_id] -= 1
                        if free[node_id] <= 0:
                            del free[node_id]
                    running += 1
                    self._start_multi_instance_task([pool.nodes[node_id] for node_id in node_ids], job, task)
                    continue
                barred = job.barred_nodes | self._nodes_refused_by(job, task, pool, free, slots_per_node)
                node_id = self._choose_node(free, task, pack, barred)
                if node_id is None and task_key == manager_key:
                    break  # the job manager starts before the job's other tasks
                if node_id is None:
                    continue
                del job.pending[task_key]
                free[node_id] -= task.required_slots
                if free[node_id] <= 0 or jobmanager.runs_exclusive(job, task):
                    del free[node_id]
                running += 1
                self._start_task(pool.nodes[node_id], job, task)
            if not free:
                return

    @staticmethod
    def _nodes_refused_by(job: "Job", task: "Task", pool: "Pool", free: dict[str, int], slots_per_node: int) -> set[str]:
        """Free nodes a job manager may not use: busy ones when it runs exclusive, low-priority ones
        when it does not allow them."""
        refused: set[str] = set()
        if jobmanager.runs_exclusive(job, task):
            refused |= {node_id for node_id, slots in free.items() if slots < slots_per_node}
        if not jobmanager.allows_low_priority_node(job, task):
            refused |= {node_id for node_id in free if not pool.nodes[node_id].is_dedicated}
        return refused

    @staticmethod
    def _choose_node(free: dict[str, int], task: "Task", pack: bool, barred: set[str]) -> Optional[str]:
        """`barred`: nodes where the job's preparation task failed, which take none of its tasks."""
        needed = task.required_slots
        affinity = (task.data.get("affinityInfo") or {}).get("affinityId", "")
        if affinity:
            # Affinity is a preference, as on Azure: use the node when it has room, any node otherwise.
            node_id = affinity.split(":", 1)[-1]
            if free.get(node_id, 0) >= needed and node_id not in barred:
                return node_id
        fitting = [node_id for node_id, slots in free.items() if slots >= needed and node_id not in barred]
        if not fitting:
            return None
        return (min if pack else max)(fitting, key=lambda node_id: (free[node_id], node_id))
