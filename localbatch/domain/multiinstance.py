"""Multi-instance tasks (multiInstanceSettings): one task run on several nodes at once, as MPI needs.

The scheduler gives such a task `numberOfInstances` nodes together, once that many nodes of its
pool have a free slot; on a pool without enableInterNodeCommunication, or with more than one
task slot per node, it stays active, as on Azure. The first node is the master, where the
primary (instance 0) runs; every other node runs one subtask (instances 1 to n-1). Each instance
downloads the commonResourceFiles into the task's directory (AZ_BATCH_TASK_SHARED_DIR, the same
path on every node) and runs the coordination command line; the primary also downloads the
task's own resourceFiles into its working directory, and once every coordination command has
exited 0 it runs the task's command line. When the primary ends the subtasks end with it: each
reports its coordination command's exit code. An instance that fails (a non-zero exit, a resource
file it cannot download) fails the whole task, whose other instances are stopped; the task is
then retried within its maxTaskRetryCount like any task. Terminating, requeueing (node reboot,
removal, job disable) and maxWallClockTime stop every instance.

`Task.instances` keeps each instance of the latest run by id ("0" is the primary): its wire form
as list_sub_tasks shows it, plus keys starting with "_" that are never shown (the node it holds,
its coordination command's process, to kill after a crash).
"""
from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from .. import wire
from ..errors import invalid_property
from ..node import processes
from ..node.agent import ContainerRun, Failure, ProgramOutcome
from .context import DomainContext
from .entities import Job, Node, Pool, Task
from .recenttasks import note_task
from .validation import check_resource_file

if TYPE_CHECKING:
    from .tasks import Tasks

# AZ_BATCH_MASTER_NODE is the master's address and this port (on Azure the Batch service reserves it).
MASTER_PORT = 6000
PRIMARY = 0


def check_multi_instance_settings(body: dict) -> Optional[dict]:
    """The multiInstanceSettings of a task being added, checked and with the default count; None
    for a task that has none."""
    settings = body.get("multiInstanceSettings")
    if settings is None:
        return None
    count = settings.get("numberOfInstances")
    count = 1 if count is None else count
    if count < 1:
        raise invalid_property("multiInstanceSettings.numberOfInstances", count,
                               "A multi-instance task needs at least 1 instance.")
    if body.get("requiredSlots") not in (None, 1):
        raise invalid_property("requiredSlots", body["requiredSlots"],
                               "A multi-instance task must require exactly 1 slot.")
    for index, resource_file in enumerate(settings.get("commonResourceFiles") or []):
        check_resource_file(f"multiInstanceSettings.commonResourceFiles[{index}]", resource_file)
    kept = {"numberOfInstances": count, "coordinationCommandLine": settings["coordinationCommandLine"]}
    if settings.get("commonResourceFiles"):
        kept["commonResourceFiles"] = settings["commonResourceFiles"]
    return kept


def takes_multi_instance_tasks(pool: Pool) -> bool:
    """Whether the pool's nodes can run multi-instance tasks (otherwise such a task waits for ever)."""
    return bool(pool.data.get("enableInterNodeCommunication")) and pool.data.get("taskSlotsPerNode", 1) == 1


def choose_nodes(pool: Pool, free: dict[str, int], task: Task, barred: set[str]) -> Optional[list[str]]:
    """The nodes a multi-instance task runs on, its master first (the node its affinity names,
    when that one is free); None until enough nodes are free at once."""
    if not takes_multi_instance_tasks(pool):
        return None
    count = task.multi_instance["numberOfInstances"]
    candidates = [node_id for node_id, slots in free.items() if slots >= 1 and node_id not in barred]
    if len(candidates) < count:
        return None
    preferred = (task.data.get("affinityInfo") or {}).get("affinityId", "").split(":", 1)[-1]
    if preferred in candidates:
        candidates.remove(preferred)
        candidates.insert(0, preferred)
    return candidates[:count]


def subtasks(task: Task) -> list[dict]:
    """The subtasks of the task's latest run (the primary is not one), in wire form without URLs."""
    return [{name: value for name, value in record.items() if not name.startswith("_")}
            for key, record in sorted(task.instances.items(), key=lambda item: int(item[0]))
            if int(key) != PRIMARY]


class _Run:
    """One run of a multi-instance task on its nodes, and what its instances tell each other."""

    def __init__(self, job: Job, task: Task, nodes: list[Node], stop_program: Callable[[str, str], bool]):
        self.job, self.task, self.nodes = job, task, nodes
        self.assignment = task.assignment
        self.stop_reason: Optional[str] = None   # terminate, requeue, timeout, agent_restart, shutdown
        self.failed: Optional[tuple[int, ProgramOutcome]] = None   # the first instance that failed
        self.coordinated = 0                     # instances whose coordination command exited 0
        self.application: Optional[ProgramOutcome] = None   # the primary's command line, once it ended
        self.stopped_application: Optional[ProgramOutcome] = None  # ... when the run stopped it
        self.outcomes: dict[int, ProgramOutcome] = {}   # each instance's coordination command
        self.programs: set[str] = set()          # program keys running now
        self.groups: list[int] = []              # process groups of coordination commands (their daemons)
        self._stop_program = stop_program
        self._changed = asyncio.Event()

    @property
    def over(self) -> bool:
        return self.stop_reason is not None or self.failed is not None or self.application is not None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop_programs(reason)
            self.changed()

    def fail(self, index: int, outcome: ProgramOutcome) -> None:
        if self.failed is None and self.stop_reason is None and self.application is None:
            self.failed = (index, outcome)
            self._stop_programs("terminate")
            self.changed()

    def changed(self) -> None:
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def _stop_programs(self, reason: str) -> None:
        for key in list(self.programs):
            self._stop_program(key, reason)


class MultiInstanceRuns:
    """Runs multi-instance tasks: claims their nodes, runs every instance, ends them together."""

    def __init__(self, context: DomainContext, tasks: "Tasks"):
        self.context = context
        self.agent = context.agent
        self.tasks = tasks
        self._runs: dict[str, _Run] = {}   # task key -> its run, while it has one

    # ---- what the task runner asks -------------------------------------------------------------
    def begin(self, nodes: list[Node], job: Job, task: Task) -> Callable[[bool], Awaitable[None]]:
        """Claim the nodes (the master first) and record the instances; the returned function runs
        them once told whether that record is durable."""
        now = wire.now_iso()
        for node in nodes:
            node.running[task.key] = 1
            node.record_slots()
            node.data["totalTasksRun"] += 1
            node.set_state("running")
        master = nodes[0]
        layout = self.agent.layout
        task.node_key = master.key
        task.assignment += 1
        task.working_dir = layout.task(master.pool_id, master.id, job.id, task.id).working_dir
        task.data["nodeInfo"] = self._node_info(master, job, task)
        info = task.execution_info
        info["startTime"] = now
        for name in ("endTime", "exitCode", "failureInfo", "result", "containerInfo"):
            info.pop(name, None)
        settings = task.multi_instance
        prepared = [self.tasks.prepared(node, job) for node in nodes]
        downloads = bool(settings.get("commonResourceFiles"))
        task.set_state("preparing" if downloads or task.data.get("resourceFiles") or not all(prepared) else "running")
        task.instances = {str(index): {
            "id": index, "nodeInfo": self._node_info(node, job, task), "startTime": now,
            "state": "preparing" if downloads or not prepared[index] else "running", "stateTransitionTime": now,
            "_nodeKey": node.key} for index, node in enumerate(nodes)}
        run = _Run(job, task, nodes, self.agent.stop)
        self._runs[task.key] = run
        _note_on_nodes(run)
        return lambda durable: self._run(run, durable)

    def stop(self, task: Task, option: str) -> bool:
        """Stop every instance of a running multi-instance task ("terminate", "requeue"); its run
        then does the bookkeeping. False for a task that has no run."""
        run = self._runs.get(task.key)
        if run is None or run.task is not task:
            return False
        run.stop(option)
        return True

    def recover(self, task: Task) -> None:
        """At start-up: kill the coordination commands an interrupted run left behind, and what they started."""
        layout = self.agent.layout
        for record in task.instances.values():
            pid, node_key = record.get("_pid"), record.get("_nodeKey")
            if pid and node_key:
                pool_key, _, node_id = node_key.partition("/")
                working_dir = layout.task(pool_key, node_id, task.job_id, task.id).working_dir
                processes.kill_leftover_process_group(pid, working_dir)
        groups = [record["_group"] for record in task.instances.values() if record.get("_group")]
        if groups:  # only processes of this task: the numbers may have been reused while it was down
            processes.kill_orphaned_groups(groups, {"AZ_BATCH_JOB_ID": task.job_id, "AZ_BATCH_TASK_ID": task.id})

    # ---- one run -------------------------------------------------------------------------------
    async def _run(self, run: _Run, durable: bool) -> None:
        job, task = run.job, run.task
        timer = None
        try:
            if not durable:  # the store could not commit: wait until it can
                await self._unless_stopped(run, self.context.store.durable())
            if run.stop_reason is None and not await self._prepared_everywhere(run):
                return
            if run.stop_reason is None:
                limit = wire.parse_duration(task.data["constraints"]["maxWallClockTime"])
                if limit < 10 ** 8:
                    timer = asyncio.get_running_loop().call_later(limit, run.stop, "timeout")
                await asyncio.gather(*(self._instance(run, index, node) for index, node in enumerate(run.nodes)))
        except asyncio.CancelledError:  # the emulator stops: so does what the instances started
            processes.kill_orphaned_groups(list(run.groups))
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if self._runs.get(task.key) is run:
                del self._runs[task.key]
        await self._kill_daemons(run)
        self.tasks.release_nodes(run.nodes, task)
        self._end_instances(run)
        self.tasks.finish(job, task, self._outcome(run), run.nodes[0])
        _note_on_nodes(run)

    async def _prepared_everywhere(self, run: _Run) -> bool:
        """Wait for the job's preparation task on every node that still needs it. False when it
        failed on one of them: the task is active again (for other nodes), its run is over."""
        job, task = run.job, run.task
        waiting = [node for node in run.nodes if not self.tasks.prepared(node, job)]
        if not waiting:
            return True
        ready = await self._unless_stopped(run, asyncio.gather(*(self.tasks.prepare(node, job) for node in waiting)))
        if ready is None or all(ready):
            return True
        self.tasks.release_nodes(run.nodes, task)
        if task.attached:
            task.data.pop("nodeInfo", None)
            task.set_state("active")
            _note_on_nodes(run)
            task.instances = {}
            job.pending[task.id.lower()] = None
            self.context.kick(job.pool_id)
        return False

    async def _unless_stopped(self, run: _Run, awaitable: Awaitable[Any]) -> Any:
        """The result of `awaitable`, or None as soon as the run is stopped (it then goes on alone)."""
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(run.until(lambda: run.stop_reason is not None))
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if work.done():
            return work.result()
        work.add_done_callback(lambda done: done.cancelled() or done.exception())
        return None

    async def _instance(self, run: _Run, index: int, node: Node) -> None:
        """One instance: its downloads, its coordination command, and on the primary the task's
        command line once every instance is coordinated; a subtask then waits for the primary."""
        job, task = run.job, run.task
        settings = task.multi_instance
        paths = self.agent.layout.task(node.pool_id, node.id, job.id, task.id)
        variables = [*(job.data.get("commonEnvironmentSettings") or []), *(task.data.get("environmentSettings") or [])]
        identity = self.context.identity(node)
        env = self._environment(run, index, paths.directory,
                                self.agent.environment(identity, paths, variables, job.id, task.id))
        container = None
        if task.data.get("containerSettings"):
            container = ContainerRun.from_settings(self.agent.layout.engine(node.pool_id, node.id),
                                                   task.data["containerSettings"])
        downloads = [(settings.get("commonResourceFiles") or [], paths.directory)]
        if index == PRIMARY:
            downloads.append((task.data.get("resourceFiles") or [], paths.working_dir))
        for resource_files, directory in downloads:
            if resource_files and not run.over:
                failed = await self.agent.download_inputs(resource_files, directory, paths.stderr, identity.storage)
                if failed is not None:
                    run.outcomes[index] = failed
                    run.fail(index, failed)
        if run.over:
            return
        key = f"coordination:{task.key}:{index}"
        run.programs.add(key)
        try:
            outcome = await self.agent.run_program(
                key, settings["coordinationCommandLine"], [], paths, env, None,
                on_start=lambda pid: self._coordination_started(run, index, pid), container=container)
        finally:
            run.programs.discard(key)
        record = task.instances.get(str(index))
        if record is not None:
            record.pop("_pid", None)
        run.outcomes[index] = outcome
        if outcome.stop_reason in ("agent_restart", "shutdown"):
            run.stop(outcome.stop_reason)
            return
        if outcome.stop_reason is not None:
            return  # the run stopped it
        if not outcome.succeeded:
            run.fail(index, outcome)
            return
        run.coordinated += 1
        run.changed()
        if index != PRIMARY:
            await run.until(lambda: run.over)
            return
        await run.until(lambda: run.over or run.coordinated == len(run.nodes))
        if run.over:
            return
        run.programs.add(task.key)
        try:
            outcome = await self.agent.run_program(task.key, task.data["commandLine"], [], paths, env, None,
                                                   on_start=lambda pid: setattr(task, "pid", pid),
                                                   container=container)
        finally:
            run.programs.discard(task.key)
        if outcome.stop_reason in ("agent_restart", "shutdown"):
            run.stop(outcome.stop_reason)
            return
        if outcome.stop_reason is not None:
            run.stopped_application = outcome
            return
        if task.data.get("outputFiles") and task.attached:
            await self.context.transitions.step("output_files_uploading")  # still running meanwhile
            outcome = await self.agent.upload_output_files(task.data["outputFiles"], outcome, paths, identity.storage)
        run.application = outcome
        run.changed()

    def _coordination_started(self, run: _Run, index: int, pid: int) -> None:
        """An instance's coordination command runs: it (and, on the primary, the task) is running."""
        run.groups.append(pid)  # the launcher made it the leader of its own process group
        task = run.task
        record = task.instances.get(str(index))
        if task.assignment != run.assignment or record is None or not task.attached:
            return
        record["_pid"] = pid
        record["_group"] = pid  # kept after it exits: what it left running is ended with the task
        _set_instance_state(record, "running")
        if index == PRIMARY and task.state == "preparing":
            task.set_state("running")
        note_task(run.nodes[index], task, None if index == PRIMARY else record)

    @staticmethod
    def _environment(run: _Run, index: int, shared_dir: str, base: dict[str, str]) -> dict[str, str]:
        """A task's environment on an instance's node, plus what every instance of a multi-instance task gets."""
        env = dict(base)
        addresses = [member.data["ipAddress"] for member in run.nodes]
        cores = os.cpu_count() or 1  # a node has as many cores as this machine
        env.update({
            "AZ_BATCH_HOST_LIST": ",".join(addresses),
            "AZ_BATCH_NODE_LIST": ";".join(addresses),
            "AZ_BATCH_MASTER_NODE": f"{addresses[0]}:{MASTER_PORT}",
            "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if index == PRIMARY else "false",
            "AZ_BATCH_TASK_SHARED_DIR": shared_dir,
            "CCP_NODES": " ".join([str(len(addresses)), *(f"{address} {cores}" for address in addresses)]),
        })
        return env

    # ---- the end of a run ------------------------------------------------------------------------
    async def _kill_daemons(self, run: _Run) -> None:
        """End what the coordination commands left running (the services they started for the
        task): they belong to the task, whose run is over."""
        if run.groups:
            await asyncio.get_running_loop().run_in_executor(None, processes.kill_orphaned_groups, list(run.groups))

    def _end_instances(self, run: _Run) -> None:
        """Every instance still running completes, with its coordination command's outcome."""
        task = run.task
        if task.assignment != run.assignment:
            return
        for index in range(len(run.nodes)):
            record = task.instances.get(str(index))
            if record is None or record["state"] == "completed":
                continue
            record.pop("_pid", None)
            record.pop("_group", None)  # ended by _kill_daemons
            _set_instance_state(record, "completed")
            (run.outcomes.get(index) or ProgramOutcome.terminated()).apply_to(record)

    def _outcome(self, run: _Run) -> ProgramOutcome:
        """How the task's run ended, as its executionInfo reports it."""
        reason = run.stop_reason
        if reason in ("requeue", "agent_restart", "shutdown"):
            return ProgramOutcome(stop_reason=reason)
        if reason == "terminate":
            return ProgramOutcome.terminated()
        if reason == "timeout":
            if run.stopped_application is not None:
                return run.stopped_application
            return ProgramOutcome(failure=Failure(
                "usererror", "MaxWallClockTimeExpiry",
                "The task exceeded its maximum wall clock time and was terminated."), stop_reason="timeout")
        if run.failed is not None:
            index, outcome = run.failed
            failure = outcome.failure
            who = "The primary task" if index == PRIMARY else f"Subtask {index}"
            return ProgramOutcome(outcome.exit_code, Failure(
                failure.category, failure.code,
                f"{who} of the multi-instance task failed before the command line ran: {failure.message}",
                failure.details), outcome.stop_reason)
        return run.application or ProgramOutcome.terminated()

    def _node_info(self, node: Node, job: Job, task: Task) -> dict:
        return {"affinityId": node.data["affinityId"], "poolId": node.pool_id, "nodeId": node.id,
                "taskRootDirectory": self.agent.layout.task_root_relative(job.id, task.id)}


def _note_on_nodes(run: _Run) -> None:
    """Each node of the run records the task (the master) or its subtask (the others) in its recentTasks."""
    task = run.task
    if task.assignment != run.assignment:
        return
    for index, node in enumerate(run.nodes):
        record = task.instances.get(str(index))
        if index == PRIMARY:
            note_task(node, task)
        elif record is not None:  # a requeued run has no subtasks any more
            note_task(node, task, record)


def _set_instance_state(record: dict, state: str) -> None:
    if record["state"] == state:
        return
    record["previousState"] = record["state"]
    record["previousStateTransitionTime"] = record["stateTransitionTime"]
    record["state"] = state
    record["stateTransitionTime"] = wire.now_iso()
