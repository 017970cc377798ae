"""A job's preparation and release tasks, per node.

The preparation task runs on a node before the first task of the job that lands there (that task
waits in `preparing`); with waitForSuccess (default true) the job's tasks wait for it to succeed,
and if it fails past its retries the node takes no more tasks of the job (until reimaged) and the
waiting task goes back to active. A reboot runs it again before the next task of the job when
rerunOnNodeRebootAfterSuccess (default true) or when it had not completed; a reimage always does.
The release task runs when the job ends (terminate, delete, or onAllTasksComplete) on every node
where the preparation task ran, and the job stays terminating or deleting until it is done.

What each node reports (`list_job_preparation_and_release_task_status`) is kept in
`Job.preparation`, keyed by "pool/node", in its wire form plus `runAgain` (not shown).
"""
from __future__ import annotations

import asyncio
from typing import Optional

from .. import wire
from ..errors import invalid_property
from ..node.agent import ProgramOutcome
from ..node.layout import JOB_PREPARATION, JOB_RELEASE, TaskPaths
from .context import DomainContext
from .entities import Job, Node
from .validation import check_durations, check_id, check_resource_file, not_emulated

PREPARATION_INFO = "jobPreparationTaskExecutionInfo"
RELEASE_INFO = "jobReleaseTaskExecutionInfo"
RELEASE_MAX_WALL_CLOCK = "PT15M"  # the service's default, and its maximum, for a release task


def job_tasks(body: dict) -> dict:
    """The preparation and release tasks of a job being created, checked and with the service's defaults."""
    preparation, release = body.get("jobPreparationTask"), body.get("jobReleaseTask")
    if release and not preparation:
        raise invalid_property("jobReleaseTask", "(given)",
                               "A job release task cannot be specified without a job preparation task.")
    kept: dict = {}
    if preparation:
        _check_task("jobPreparationTask", preparation)
        constraints = {"maxWallClockTime": wire.MAX_DURATION, "retentionTime": "P7D", "maxTaskRetryCount": 0,
                       **(preparation.get("constraints") or {})}
        check_durations("jobPreparationTask.constraints", constraints, ("maxWallClockTime", "retentionTime"))
        kept["jobPreparationTask"] = {
            **preparation, "id": preparation.get("id") or JOB_PREPARATION, "constraints": constraints,
            "waitForSuccess": preparation.get("waitForSuccess", True) is not False,
            "rerunOnNodeRebootAfterSuccess": preparation.get("rerunOnNodeRebootAfterSuccess", True) is not False}
    if release:
        _check_task("jobReleaseTask", release)
        release = {"maxWallClockTime": RELEASE_MAX_WALL_CLOCK, "retentionTime": "P7D",
                   **release, "id": release.get("id") or JOB_RELEASE}
        check_durations("jobReleaseTask", release, ("maxWallClockTime", "retentionTime"))
        if wire.parse_duration(release["maxWallClockTime"]) > wire.parse_duration(RELEASE_MAX_WALL_CLOCK):
            raise invalid_property("jobReleaseTask.maxWallClockTime", release["maxWallClockTime"],
                                   "A job release task may run for at most 15 minutes.")
        if release["id"].lower() == kept["jobPreparationTask"]["id"].lower():
            raise invalid_property("jobReleaseTask.id", release["id"],
                                   "The job release task's id must differ from the job preparation task's.")
        kept["jobReleaseTask"] = release
    return kept


def _check_task(name: str, spec: dict) -> None:
    if spec.get("id") is not None:
        check_id(f"{name}.id", spec["id"])
    if spec.get("containerSettings"):
        raise not_emulated(f"{name}.containerSettings")
    for index, resource_file in enumerate(spec.get("resourceFiles") or []):
        check_resource_file(f"{name}.resourceFiles[{index}]", resource_file)


class Preparations:
    def __init__(self, context: DomainContext):
        self.context = context
        self.agent = context.agent
        self._running: dict[str, asyncio.Future] = {}  # program key -> whether the job's tasks may run

    # ---- before a task of the job runs on a node -----------------------------------------------
    def prepared(self, node: Node, job: Job) -> bool:
        """True when a task of the job may run on the node now, without waiting for anything."""
        spec = job.data.get("jobPreparationTask")
        if not spec:
            return True
        status = self._status(node, job)
        return status == "succeeded" or (status == "failed" and not spec["waitForSuccess"])

    async def prepare(self, node: Node, job: Job) -> bool:
        """Run the preparation task on the node if it must run; with waitForSuccess wait for it.
        True when the job's tasks may run on the node."""
        spec = job.data["jobPreparationTask"]
        key = _program_key(JOB_PREPARATION, job, node)
        future = self._running.get(key)
        if future is None:
            status = self._status(node, job)
            if status in ("succeeded", "failed"):
                return status == "succeeded" or not spec["waitForSuccess"]
            future = asyncio.get_running_loop().create_future()
            self._running[key] = future
            self.context.background.spawn(self._run_preparation(node, job, key, future))
        if not spec["waitForSuccess"]:
            return True
        return await asyncio.shield(future)

    def _status(self, node: Node, job: Job) -> str:
        entry = job.preparation.get(node.key) or {}
        info = entry.get(PREPARATION_INFO)
        if not info or entry.get("runAgain"):
            return "none"
        if info["state"] != "completed":
            return "running"
        return "succeeded" if info.get("result") == "success" else "failed"

    async def _run_preparation(self, node: Node, job: Job, key: str, future: asyncio.Future) -> None:
        spec = job.data["jobPreparationTask"]
        may_run = False
        try:
            paths = self.agent.layout.job_preparation(node.pool_id, node.id, job.id)
            entry = job.preparation.setdefault(node.key, {"poolId": node.pool_id, "nodeId": node.id})
            entry.pop("runAgain", None)
            entry[PREPARATION_INFO] = {"state": "running", "startTime": wire.now_iso(), "retryCount": 0,
                                       "taskRootDirectory": self.agent.layout.task_root_relative(job.id, JOB_PREPARATION)}
            constraints = spec["constraints"]
            max_retries = constraints.get("maxTaskRetryCount", 0)
            while True:
                outcome = await self._run(node, job, spec, paths, key, wire.parse_duration(constraints["maxWallClockTime"]))
                if outcome is None:
                    return  # the job or the node went away
                info = entry[PREPARATION_INFO]
                if outcome.stop_reason in ("requeue", "shutdown"):  # the node restarts: run it again later
                    entry["runAgain"] = True
                    return
                outcome.apply_to(info)
                if outcome.succeeded or outcome.stop_reason == "terminate" or (
                        max_retries != -1 and info["retryCount"] >= max_retries):
                    info["state"] = "completed"
                    break
                info["retryCount"] += 1
                info["lastRetryTime"] = info["startTime"] = wire.now_iso()
                for name in ("endTime", "exitCode", "failureInfo", "result"):
                    info.pop(name, None)
            may_run = outcome.succeeded or not spec["waitForSuccess"]
            if not may_run:
                job.barred_nodes.add(node.id)
        finally:
            self._running.pop(key, None)
            if not future.done():
                future.set_result(may_run)

    # ---- when the job ends -----------------------------------------------------------------------
    async def release(self, job: Job) -> None:
        """Stop preparation tasks still running, then run the release task on every node where the
        preparation task ran, and wait for them all."""
        if not job.data.get("jobPreparationTask"):
            return
        prefix = _program_key(JOB_PREPARATION, job, None)
        for key in [key for key in self._running if key.startswith(prefix)]:
            self.agent.stop(key, "terminate")
        spec = job.data.get("jobReleaseTask")
        if not spec:
            return
        runs = []
        for node_key, entry in list(job.preparation.items()):
            node = self._node(node_key)
            if node is None or PREPARATION_INFO not in entry or node.state in ("leavingpool",):
                continue
            runs.append(self._run_release(node, job, entry, spec))
        await asyncio.gather(*runs)

    async def _run_release(self, node: Node, job: Job, entry: dict, spec: dict) -> None:
        paths = self.agent.layout.job_release(node.pool_id, node.id, job.id)
        entry[RELEASE_INFO] = {"state": "running", "startTime": wire.now_iso(),
                               "taskRootDirectory": self.agent.layout.task_root_relative(job.id, JOB_RELEASE)}
        key = _program_key(JOB_RELEASE, job, node)
        outcome = await self._run(node, job, spec, paths, key, wire.parse_duration(spec["maxWallClockTime"]))
        if outcome is None or outcome.stop_reason == "shutdown":
            return
        info = entry[RELEASE_INFO]
        outcome.apply_to(info)
        info["state"] = "completed"

    async def _run(self, node: Node, job: Job, spec: dict, paths: TaskPaths, key: str,
                   timeout: float) -> Optional[ProgramOutcome]:
        """One run of a preparation or release task's program; None when its job or node is gone."""
        await self.context.store.durable()  # on record as running before it runs
        settings = [*(job.data.get("commonEnvironmentSettings") or []), *(spec.get("environmentSettings") or [])]
        env = self.agent.environment(self.context.identity(node), paths, settings, job.id, spec["id"])
        outcome = await self.agent.run_program(key, spec["commandLine"], spec.get("resourceFiles") or [], paths, env,
                                               timeout, storage=self.context.identity(node).storage)
        if not job.attached or self.context.repo.pool_of(node) is None:
            return None
        return outcome

    # ---- nodes restarting or leaving, and start-up --------------------------------------------------
    def stop_on_node(self, node: Node) -> None:
        """The node restarts or leaves: preparation tasks running there stop (and run again later)."""
        suffix = ":" + node.key
        for key in [key for key in self._running if key.endswith(suffix)]:
            self.agent.stop(key, "requeue")
    def node_restarted(self, node: Node, action: str) -> None:
        """A reboot or reimage: which jobs run their preparation task again on this node."""
        for job in self.context.repo.jobs_on_pool(node.pool_id):
            spec = job.data.get("jobPreparationTask")
            entry = job.preparation.get(node.key)
            if not spec or entry is None or PREPARATION_INFO not in entry:
                continue
            completed = entry[PREPARATION_INFO]["state"] == "completed"
            if action == "reimage" or not completed or spec["rerunOnNodeRebootAfterSuccess"]:
                if action == "reimage" or entry[PREPARATION_INFO].get("result") == "success" or not completed:
                    entry["runAgain"] = True
            if action == "reimage":
                job.barred_nodes.discard(node.id)

    def recover(self, job: Job) -> None:
        """At start-up: a preparation task that was running runs again; failed ones keep their node barred."""
        spec = job.data.get("jobPreparationTask")
        for node_key, entry in job.preparation.items():
            info = entry.get(PREPARATION_INFO) or {}
            if info.get("state") == "running":
                entry["runAgain"] = True
            elif spec and spec["waitForSuccess"] and info.get("result") == "failure" and not entry.get("runAgain"):
                job.barred_nodes.add(entry["nodeId"])

    def _node(self, node_key: str) -> Optional[Node]:
        pool_key, _, node_id = node_key.partition("/")
        pool = self.context.repo.pools.get(pool_key)
        return pool.nodes.get(node_id) if pool else None


def status_list(job: Job) -> list[dict]:
    """What each node reports, in wire form (without URLs), sorted by node id."""
    return [{name: value for name, value in entry.items() if name != "runAgain"}
            for _, entry in sorted(job.preparation.items())]


def _program_key(kind: str, job: Job, node: Optional[Node]) -> str:
    return f"{kind}:{job.key}:" + (node.key if node is not None else "")
