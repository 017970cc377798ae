"""Tasks: adding, changing and ending them, and running each one on the node the scheduler chose.

active -> (preparing) -> running -> completed; a failure within maxTaskRetryCount, a requeue
(node reboot, removal, scheduling disabled, a restarted node agent) goes back to active.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, Optional

from .. import wire
from ..errors import BatchServiceError, invalid_property
from ..node import processes
from ..node.agent import ContainerRun, ProgramOutcome
from . import exitconditions
from .context import DomainContext, container_configuration
from .dependencies import Dependencies, check_depends_on
from .entities import Job, Node, Task
from .multiinstance import MultiInstanceRuns, check_multi_instance_settings
from .recenttasks import note_task
from .runtime import loop_running
from .states import RUNNING_TASK_STATES
from .validation import (check_container_settings, check_durations, check_id, check_output_file,
                         check_resource_file, job_closed, not_emulated)

logger = logging.getLogger(__name__)

NOT_EMULATED_TASK_PROPERTIES = ("applicationPackageReferences",)


class Tasks:
    def __init__(self, context: DomainContext):
        self.context = context
        self.repo = context.repo
        self.agent = context.agent
        # Wired by the service: a task of the job completed; a node has no running task any more;
        # a task is about to run on a node (the job's preparation task: may it run there?).
        self.on_task_ended: Callable[[Job, Task], None] = lambda job, task: None
        self.on_node_drained: Callable[[Node], None] = lambda node: None
        self.on_node_evicted: Callable[[Node], None] = lambda node: None  # its tasks were taken off it
        self.prepared: Callable[[Node, Job], bool] = lambda node, job: True
        self.prepare: Callable[[Node, Job], Awaitable[bool]] = _always_ready
        self.dependencies = Dependencies(self._make_pending)
        self.multi_instance = MultiInstanceRuns(context, self)
        # What the scheduler's current pass assigned: each starts its programs once given whether
        # the record of the assignment is durable.
        self._assigned: list[Callable[[bool], Awaitable[None]]] = []

    # ---- operations ----------------------------------------------------------------------------
    def create_tasks(self, job_id: str, bodies: list[dict]) -> list[tuple[Optional[Task], Optional[BatchServiceError]]]:
        """Add several tasks; each gets its own result, as in addtaskcollection."""
        job = self.repo.get_job(job_id)
        if job.state in ("completed", "terminating", "deleting"):
            raise job_closed(job)
        results: list[tuple[Optional[Task], Optional[BatchServiceError]]] = []
        for body in bodies:
            try:
                results.append((self._create_task(job, body), None))
            except BatchServiceError as exc:
                results.append((None, exc))
        # Once all exist: a task may depend on one added after it in the same collection.
        for task, _ in results:
            if task is not None:
                self.dependencies.admit(job, task)
        self.context.kick(job.pool_id)
        return results

    def _create_task(self, job: Job, body: dict) -> Task:
        task = self.new_task(job, body)
        self.repo.add_task(job, task)
        return task

    def new_task(self, job: Job, body: dict) -> Task:
        """A task of `job` made from an add_task body, checked as the service checks it; not added yet."""
        check_id("id", body["id"])
        if body["id"].lower() in job.tasks:
            raise BatchServiceError("TaskExists")
        for reserved, code in (("jobPreparationTask", "TaskIdSameAsJobPreparationTask"),
                               ("jobReleaseTask", "TaskIdSameAsJobReleaseTask")):
            if (job.data.get(reserved) or {}).get("id", "").lower() == body["id"].lower():
                raise BatchServiceError(code)
        for unsupported in NOT_EMULATED_TASK_PROPERTIES:
            if body.get(unsupported):
                raise not_emulated(unsupported)
        for index, resource_file in enumerate(body.get("resourceFiles") or []):
            check_resource_file(f"resourceFiles[{index}]", resource_file)
        if body.get("containerSettings"):
            self._check_container_settings(job, body["containerSettings"])
        for index, output_file in enumerate(body.get("outputFiles") or []):
            check_output_file(f"outputFiles[{index}]", output_file)
        multi_instance = check_multi_instance_settings(body)
        check_depends_on(job, body["id"], body.get("dependsOn"))
        exitconditions.check_exit_conditions(body.get("exitConditions"), job.data.get("onTaskFailure") or "noaction")
        # The job's maxWallClockTime limits the job as a whole (see Jobs), not each task.
        constraints = {"maxWallClockTime": wire.MAX_DURATION, "retentionTime": "P7D",
                       "maxTaskRetryCount": job.data["constraints"].get("maxTaskRetryCount", 0),
                       **(body.get("constraints") or {})}
        check_durations("constraints", constraints, ("maxWallClockTime", "retentionTime"))
        now = wire.now_iso()
        data = {"id": body["id"], "creationTime": now, "state": "active", "stateTransitionTime": now,
                "commandLine": body["commandLine"],
                "userIdentity": body.get("userIdentity") or {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
                "constraints": constraints, "requiredSlots": body.get("requiredSlots") or 1,
                "executionInfo": {"retryCount": 0, "requeueCount": 0}}
        for optional in ("displayName", "resourceFiles", "environmentSettings", "affinityInfo", "containerSettings"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        for optional in ("outputFiles", "dependsOn", "exitConditions"):
            if body.get(optional):
                data[optional] = body[optional]
        if multi_instance is not None:
            data["multiInstanceSettings"] = multi_instance
        task = Task(job.id, data)
        task.touch()
        return task

    def _check_container_settings(self, job: Job, settings: dict) -> None:
        """containerSettings need a pool with a containerConfiguration (checked here when the pool
        or the auto-pool specification is known; a node without an engine fails the task)."""
        pool = self.repo.find_pool(job.pool_id) if job.pool_id else None
        auto_pool = ((job.data.get("poolInfo") or {}).get("autoPoolSpecification") or {}).get("pool")
        if pool is not None:
            pool_has_containers = container_configuration(pool) is not None
        elif auto_pool is not None:
            vm_config = auto_pool.get("virtualMachineConfiguration") or {}
            pool_has_containers = bool(vm_config.get("containerConfiguration"))
        else:
            pool_has_containers = True  # a pool not created yet: its nodes decide
        if not pool_has_containers:
            raise invalid_property("containerSettings", settings.get("imageName"),
                                   "The task has containerSettings but its pool has no "
                                   "virtualMachineConfiguration.containerConfiguration.")
        check_container_settings("containerSettings", settings)

    def _make_pending(self, job: Job, task: Task) -> None:
        """The task may be scheduled (it waits for nothing)."""
        job.pending[task.id.lower()] = None
        if loop_running():  # during recovery at start-up the loop is not running yet
            self.context.kick(job.pool_id)

    def replace_task(self, job_id: str, task_id: str, body: dict) -> Task:
        task = self.repo.get_task(job_id, task_id)
        if task.state == "completed":
            raise BatchServiceError("TaskCompleted")
        if body.get("constraints"):
            task.data["constraints"].update(body["constraints"])
        task.touch()
        return task

    def terminate_task(self, job_id: str, task_id: str) -> None:
        job = self.repo.get_job(job_id)
        task = self.repo.get_task(job_id, task_id)
        if task.state == "completed":
            raise BatchServiceError("TaskCompleted")
        self.stop(job, task, "terminate")

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        job = self.repo.get_job(job_id)
        task = self.repo.get_task(job_id, task_id)
        if task.state != "completed":
            raise BatchServiceError("TaskNotCompleted", "Only a task that completed with a failure can be reactivated.")
        if task.execution_info.get("result") != "failure":
            raise BatchServiceError("TaskSucceeded", "Only a task that completed with a failure can be reactivated.")
        if job.state != "active":
            raise BatchServiceError("JobNotActive")
        task.data["executionInfo"] = {"retryCount": 0, "requeueCount": task.execution_info.get("requeueCount", 0)}
        task.data.pop("nodeInfo", None)
        task.set_state("active")
        self.dependencies.admit(job, task)

    def delete_task(self, job_id: str, task_id: str) -> None:
        job = self.repo.get_job(job_id)
        task = self.repo.get_task(job_id, task_id)
        if task.state in RUNNING_TASK_STATES:
            self.stop(job, task, "terminate")
        self.dependencies.forget(job, task)
        self.repo.remove_task(job, task)

    def task_files_root(self, job_id: str, task_id: str) -> str:
        """The task's directory on the node where it last ran; FileNotFound before it ran."""
        task = self.repo.get_task(job_id, task_id)
        node_info = task.data.get("nodeInfo")
        if not node_info:
            raise BatchServiceError("FileNotFound", "The task has not been assigned to a compute node yet.")
        pool = self.repo.find_pool(node_info["poolId"])
        if pool is None or node_info["nodeId"] not in pool.nodes:
            raise BatchServiceError("NodeNotFound", "The compute node the task ran on no longer exists.")
        return self.agent.layout.task(pool.id, node_info["nodeId"], job_id, task.id).directory

    # ---- ending or moving tasks ---------------------------------------------------------------------
    def stop(self, job: Job, task: Task, option: str) -> None:
        """End (terminate) or requeue a task, whether it waits, downloads or runs."""
        if task.state == "active":
            job.pending.pop(task.id.lower(), None)
            self.dependencies.forget(job, task)
            if option == "terminate":
                self._complete(job, task, ProgramOutcome.terminated())
            return
        if self.multi_instance.stop(task, option):
            return  # its run stops every instance and finishes the bookkeeping
        if self.agent.stop(task.key, option):
            return  # the runner finishes the bookkeeping when the process exits
        node = self.repo.node_of(task)
        if node is not None:
            self._release_slot(node, task)
        if option == "requeue":
            self._requeue(job, task)
        else:
            self._complete(job, task, ProgramOutcome.terminated())
        note_task(node, task)

    def evict(self, node: Node, option: str, node_stops: bool = True) -> None:
        """Take running tasks off a node: requeue them, or end them (terminate). `node_stops`: the
        node restarts or leaves, so its other programs (preparation tasks) stop too."""
        for task_key in list(node.running):
            job, task = self.repo.task_by_key(task_key)
            if job is None or task is None:
                node.running.pop(task_key, None)
                continue
            self.stop(job, task, "terminate" if option == "terminate" else "requeue")
        if node_stops:
            self.on_node_evicted(node)

    def recover(self) -> None:
        """At start-up: tasks that ran when the emulator stopped run again (their processes killed)."""
        for job in self.repo.jobs.values():
            for key, task in job.tasks.items():
                if task.state in RUNNING_TASK_STATES:
                    if task.pid and task.working_dir:
                        processes.kill_leftover_process_group(task.pid, task.working_dir)
                    self.multi_instance.recover(task)
                    self._requeue(job, task)
                elif task.state == "active":
                    self.dependencies.admit(job, task)

    # ---- running a task ------------------------------------------------------------------
    def begin(self, node: Node, job: Job, task: Task) -> None:
        """Called by the scheduler: claim the slots; `launch` starts the program after the pass."""
        if self.context.background.closing:
            job.pending[task.id.lower()] = None  # still active; the next start schedules it
            return
        node.running[task.key] = task.required_slots
        node.record_slots()
        node.data["totalTasksRun"] += 1
        node.set_state("running")
        paths = self.agent.layout.task(node.pool_id, node.id, job.id, task.id)
        task.node_key = node.key
        task.assignment += 1
        task.working_dir = paths.working_dir
        task.data["nodeInfo"] = {
            "affinityId": node.data["affinityId"], "poolId": node.pool_id, "nodeId": node.id,
            "taskRootDirectory": self.agent.layout.task_root_relative(job.id, task.id)}
        info = task.execution_info
        info["startTime"] = wire.now_iso()
        for name in ("endTime", "exitCode", "failureInfo", "result", "containerInfo"):
            info.pop(name, None)
        waits = task.data.get("resourceFiles") or not self.prepared(node, job)
        task.set_state("preparing" if waits else "running")
        note_task(node, task)
        job.running_count += 1
        self._assigned.append(lambda durable: self._run(node, job, task, durable))

    def begin_multi_instance(self, nodes: list[Node], job: Job, task: Task) -> None:
        """Called by the scheduler: a multi-instance task takes every node it needs (the master first)."""
        if self.context.background.closing:
            job.pending[task.id.lower()] = None
            return
        job.running_count += 1
        self._assigned.append(self.multi_instance.begin(nodes, job, task))

    def launch(self) -> None:
        """Start the programs of the tasks just assigned, once the record that they run is durable:
        a crash from then on requeues them (counted), never runs one silently a second time."""
        if not self._assigned:
            return
        assigned, self._assigned = self._assigned, []
        durable = self.context.store.flush()  # one commit for the whole pass, in this turn
        for run in assigned:
            self.context.background.spawn(run(durable))

    async def _run(self, node: Node, job: Job, task: Task, durable: bool) -> None:
        if not durable:  # the store could not commit: wait until it can
            await self.context.store.durable()
            if task.node_key != node.key or task.state not in RUNNING_TASK_STATES or not task.attached:
                return  # ended, requeued or deleted meanwhile; bookkeeping already done
        if not self.prepared(node, job):
            assignment = task.assignment
            ready = await self.prepare(node, job)
            if (task.assignment != assignment or task.node_key != node.key or task.state not in RUNNING_TASK_STATES
                    or not task.attached):
                return  # ended, requeued (perhaps to this node again) or deleted meanwhile
            if not ready:  # the job's preparation task failed here: back to active, for another node
                self._release_slot(node, task)
                task.data.pop("nodeInfo", None)
                task.set_state("active")
                note_task(node, task)
                job.pending[task.id.lower()] = None
                self.context.kick(job.pool_id)
                return
        paths = self.agent.layout.task(node.pool_id, node.id, job.id, task.id)
        settings = [*(job.data.get("commonEnvironmentSettings") or []), *(task.data.get("environmentSettings") or [])]
        identity = self.context.identity(node)
        env = self.agent.environment(identity, paths, settings, job.id, task.id)
        timeout = wire.parse_duration(task.data["constraints"]["maxWallClockTime"])
        container = None
        if task.data.get("containerSettings"):
            container = ContainerRun.from_settings(self.agent.layout.engine(node.pool_id, node.id),
                                                   task.data["containerSettings"])
        outcome = await self.agent.run_program(
            task.key, task.data["commandLine"], task.data.get("resourceFiles") or [], paths, env, timeout,
            on_start=lambda pid: self._process_started(node, task, pid), container=container,
            storage=identity.storage, on_container=lambda info: self._container_started(node, task, info))
        if task.data.get("outputFiles") and task.node_key == node.key and task.state in RUNNING_TASK_STATES:
            await self.context.transitions.step("output_files_uploading")  # still running meanwhile
            outcome = await self.agent.upload_output_files(task.data["outputFiles"], outcome, paths, identity.storage)
        if task.node_key != node.key or task.state not in RUNNING_TASK_STATES:
            return  # evicted or ended while it ran; bookkeeping already done
        self._release_slot(node, task)
        self.finish(job, task, outcome, node)
        note_task(node, task)

    def finish(self, job: Job, task: Task, outcome: ProgramOutcome, node: Node) -> None:
        """A run of the task ended (its slots are free again): requeue it, retry it within its
        maxTaskRetryCount, or complete it. `node` is where it ran (a multi-instance task's master)."""
        if not task.attached:
            return  # deleted (or its job) while it ran: keep nothing
        if outcome.stop_reason in ("requeue", "agent_restart"):
            self._requeue(job, task)
            return
        if outcome.stop_reason == "shutdown":
            return  # still running on record: the next start requeues it
        if outcome.succeeded:
            node.data["totalTasksSucceeded"] += 1
        retries = task.data["constraints"].get("maxTaskRetryCount", 0)
        info = task.execution_info
        if outcome.retriable and (retries == -1 or info["retryCount"] < retries):
            info["retryCount"] += 1
            info["lastRetryTime"] = wire.now_iso()
            outcome.apply_to(info)
            task.set_state("active")
            job.pending[task.id.lower()] = None
            self.context.kick(job.pool_id)
            return
        self._complete(job, task, outcome)

    def _process_started(self, node: Node, task: Task, pid: int) -> None:
        """The program runs: a task with resource files leaves `preparing`, and the pid is kept so
        that a start after a crash can kill a process this run left behind."""
        if task.node_key != node.key or task.state not in RUNNING_TASK_STATES or not task.attached:
            return
        task.set_state("running")
        task.pid = pid
        note_task(node, task)

    def _container_started(self, node: Node, task: Task, container_info: dict) -> None:
        """Docker runs the task's container: its executionInfo shows it (containerInfo)."""
        if task.node_key != node.key or task.state not in RUNNING_TASK_STATES or not task.attached:
            return
        task.execution_info["containerInfo"] = container_info
        note_task(node, task)

    def _release_slot(self, node: Node, task: Task) -> None:
        self.release_nodes([node], task)

    def release_nodes(self, nodes: list[Node], task: Task) -> None:
        """The task no longer holds slots on these nodes (all of a multi-instance task's at once)."""
        held = False
        for node in nodes:
            if node.running.pop(task.key, None) is not None:
                held = True
            node.record_slots()
            if node.state == "running" and not node.running:
                node.set_state("idle")
        if held:
            job = self.repo.find_job(task.job_id)
            if job is not None:
                job.running_count = max(0, job.running_count - 1)
        task.node_key = None
        task.pid = None
        for node in nodes:
            if not node.running:
                self.on_node_drained(node)
            self.context.kick(node.pool_id)

    def _requeue(self, job: Job, task: Task) -> None:
        info = task.execution_info
        info["requeueCount"] = info.get("requeueCount", 0) + 1
        info["lastRequeueTime"] = wire.now_iso()
        task.node_key = None
        task.pid = None
        if task.instances:
            task.instances = {}  # a multi-instance task's interrupted instances start afresh on its next run
        task.set_state("active")
        job.pending[task.id.lower()] = None
        if loop_running():  # during recovery at start-up the loop is not running yet
            self.context.kick(job.pool_id)

    def _complete(self, job: Job, task: Task, outcome: ProgramOutcome) -> None:
        outcome.apply_to(task.execution_info)
        task.node_key = None
        task.pid = None
        task.set_state("completed")
        self.dependencies.task_completed(job)
        self.on_task_ended(job, task)


async def _always_ready(node: Node, job: Job) -> bool:
    return True
