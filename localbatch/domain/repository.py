"""Every pool, node, job and task the account has, found by id, and tracked by the store.

Adding an entity here attaches it to the store, so its changes are written from then on;
removing it forgets its row and detaches it, so work that finishes later (a process being
killed, a start task ending) can never bring it back.
"""
from __future__ import annotations

from typing import Optional

from ..errors import BatchServiceError
from ..store import Store
from .entities import Job, JobSchedule, Node, Pool, Task, TransitionObserver


class Repository:
    def __init__(self, store: Store, observer: Optional[TransitionObserver] = None):
        self.store = store
        self.observer = observer  # told of every state transition (the nodes' agent log)
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self.job_schedules: dict[str, JobSchedule] = {}
        self._jobs_by_pool: dict[str, set[str]] = {}

    # ---- start-up --------------------------------------------------------------------------
    def load(self) -> None:
        """Read every entity the store holds (nothing is marked changed by reading)."""
        for record in self.store.load("pool"):
            pool = Pool.from_record(record)
            self.pools[pool.key] = pool
            pool.attach(self.store, changed=False, observer=self.observer)
        for record in self.store.load("node"):
            node = Node.from_record(record)
            pool = self.pools.get(node.pool_id.lower())
            if pool is not None:
                pool.nodes[node.id] = node
                node.attach(self.store, changed=False, observer=self.observer)
        for record in self.store.load("job"):
            job = Job.from_record(record)
            self.jobs[job.key] = job
            self._index(job)
            job.attach(self.store, changed=False, observer=self.observer)
        for record in self.store.load("jobschedule"):
            schedule = JobSchedule.from_record(record)
            self.job_schedules[schedule.key] = schedule
            schedule.attach(self.store, changed=False, observer=self.observer)
        for record in self.store.load("task"):
            task = Task.from_record(record)
            job = self.jobs.get(task.job_id.lower())
            if job is not None:
                job.tasks[task.id.lower()] = task
                task.attach(self.store, changed=False, observer=self.observer)

    # ---- lookups that answer the service's NotFound errors ---------------------------------
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

    def get_job_schedule(self, schedule_id: str) -> JobSchedule:
        schedule = self.job_schedules.get(schedule_id.lower())
        if schedule is None:
            raise BatchServiceError("JobScheduleNotFound")
        return schedule

    # ---- lookups inside the domain -----------------------------------------------------------
    def find_pool(self, pool_id: Optional[str]) -> Optional[Pool]:
        return self.pools.get(pool_id.lower()) if pool_id else None

    def find_job(self, job_id: str) -> Optional[Job]:
        return self.jobs.get(job_id.lower())

    def node_of(self, task: Task) -> Optional[Node]:
        """The node on which the task holds a slot, if any."""
        if not task.node_key:
            return None
        pool_key, _, node_id = task.node_key.partition("/")
        pool = self.pools.get(pool_key)
        return pool.nodes.get(node_id) if pool else None

    def pool_of(self, node: Node) -> Optional[Pool]:
        pool = self.pools.get(node.pool_id.lower())
        return pool if pool is not None and pool.nodes.get(node.id) is node else None

    def task_by_key(self, task_key: str) -> tuple[Optional[Job], Optional[Task]]:
        job_key, _, task_id = task_key.partition("/")
        job = self.jobs.get(job_key)
        return job, (job.tasks.get(task_id) if job else None)

    def jobs_on_pool(self, pool_key: str) -> list[Job]:
        return [self.jobs[key] for key in self._jobs_by_pool.get(pool_key.lower(), ()) if key in self.jobs]

    # ---- membership ----------------------------------------------------------------------------
    def add_pool(self, pool: Pool) -> None:
        self.pools[pool.key] = pool
        pool.attach(self.store, observer=self.observer)

    def remove_pool(self, pool: Pool) -> None:
        for node in list(pool.nodes.values()):
            self.remove_node(pool, node)
        if self.pools.get(pool.key) is pool:
            del self.pools[pool.key]
        pool.attach(None)
        self.store.forget("pool", pool.key)

    def add_node(self, pool: Pool, node: Node) -> None:
        pool.nodes[node.id] = node
        node.attach(self.store, observer=self.observer)

    def remove_node(self, pool: Pool, node: Node) -> None:
        if pool.nodes.get(node.id) is node:
            del pool.nodes[node.id]
        node.attach(None)
        self.store.forget("node", node.key)

    def add_job(self, job: Job) -> None:
        self.jobs[job.key] = job
        self._index(job)
        job.attach(self.store, observer=self.observer)

    def move_job(self, job: Job, pool_id: str) -> None:
        """The job now runs on another pool."""
        self._jobs_by_pool.get((job.pool_id or "").lower(), set()).discard(job.key)
        job.data["executionInfo"]["poolId"] = pool_id
        self._index(job)

    def remove_job(self, job: Job) -> None:
        for task in job.tasks.values():
            task.attach(None)
        if self.jobs.get(job.key) is job:
            del self.jobs[job.key]
        self._jobs_by_pool.get((job.pool_id or "").lower(), set()).discard(job.key)
        job.attach(None)
        self.store.forget("job", job.key)
        self.store.forget_prefix("task", job.key + "/")

    def add_job_schedule(self, schedule: JobSchedule) -> None:
        self.job_schedules[schedule.key] = schedule
        schedule.attach(self.store, observer=self.observer)

    def remove_job_schedule(self, schedule: JobSchedule) -> None:
        if self.job_schedules.get(schedule.key) is schedule:
            del self.job_schedules[schedule.key]
        schedule.attach(None)
        self.store.forget("jobschedule", schedule.key)

    def add_task(self, job: Job, task: Task) -> None:
        job.tasks[task.id.lower()] = task
        task.attach(self.store, observer=self.observer)

    def remove_task(self, job: Job, task: Task) -> None:
        if job.tasks.get(task.id.lower()) is task:
            del job.tasks[task.id.lower()]
        job.pending.pop(task.id.lower(), None)
        task.attach(None)
        self.store.forget("task", task.key)

    def _index(self, job: Job) -> None:
        if job.pool_id:
            self._jobs_by_pool.setdefault(job.pool_id.lower(), set()).add(job.key)

