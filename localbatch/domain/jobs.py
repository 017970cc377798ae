"""Jobs: create (with an auto-pool), update, disable/enable, terminate, delete, task counts.

active -> disabling -> disabled -> active; active -> terminating -> completed; any -> deleting.
A job stays disabling/terminating until the tasks it stopped have ended.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Callable, Optional

from .. import wire
from ..errors import BatchServiceError, invalid_property
from . import exitconditions, jobmanager
from .context import DomainContext
from .entities import Job, Task
from .networking import check_subnet
from .pools import Pools
from .preparation import Preparations, job_tasks
from .states import RUNNING_TASK_STATES, UNFINISHED_TASK_STATES
from .tasks import Tasks
from .validation import check_durations, check_id, job_closed, pool_info_without_secrets

logger = logging.getLogger(__name__)

UPDATABLE_PROPERTIES = ("priority", "maxParallelTasks", "allowTaskPreemption", "constraints", "metadata",
                        "onAllTasksComplete", "poolInfo", "networkConfiguration")
STOPPED_TASKS_GRACE_SECONDS = 30


class Jobs:
    def __init__(self, context: DomainContext, pools: Pools, tasks: Tasks, preparations: Preparations):
        self.context = context
        self.repo = context.repo
        self.pools = pools
        self.tasks = tasks
        self.preparations = preparations
        tasks.on_task_ended = self._task_completed
        # Told when a job completes or is gone (job schedules wait for their jobs).
        self.on_job_finished: Callable[[Job], None] = lambda job: None

    def create_job(self, body: dict, scheduled: bool = False, auto_pool_id: Optional[str] = None) -> Job:
        """Create a job. `scheduled`: a job schedule creates it, with an id of its own making
        (`<schedule>:job-<n>`) and perhaps its auto-pool (`auto_pool_id`, lifetime `jobschedule`)."""
        if not scheduled:
            check_id("id", body["id"])
        existing = self.repo.find_job(body["id"])
        if existing is not None:
            raise BatchServiceError("JobBeingDeleted" if existing.state == "deleting" else "JobExists")
        self.check_job_specification(body)
        pool_info = body["poolInfo"]
        constraints = _constraints(body.get("constraints"))
        preparation_and_release = job_tasks(body)
        now = wire.now_iso()
        data = {
            "id": body["id"], "usesTaskDependencies": bool(body.get("usesTaskDependencies")),
            "creationTime": now, "state": "active", "stateTransitionTime": now,
            "priority": body.get("priority") or 0,
            "maxParallelTasks": body["maxParallelTasks"] if body.get("maxParallelTasks") is not None else -1,
            "allowTaskPreemption": bool(body.get("allowTaskPreemption")),
            "constraints": constraints, "poolInfo": pool_info_without_secrets(pool_info),
            "onAllTasksComplete": body.get("onAllTasksComplete") or "noaction",
            "onTaskFailure": body.get("onTaskFailure") or "noaction",
            **preparation_and_release,
        }
        manager = jobmanager.job_manager_spec(body)
        if manager is not None:
            data[jobmanager.JOB_MANAGER] = manager
        for optional in ("displayName", "commonEnvironmentSettings", "metadata", "networkConfiguration"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        pool_id = (pool_info.get("poolId") or auto_pool_id
                   or self._create_auto_pool(body["id"], pool_info["autoPoolSpecification"]))
        data["executionInfo"] = {"startTime": now, "poolId": pool_id}
        job = Job(data)
        job.touch()
        self.repo.add_job(job)
        if manager is not None:  # created with the job, and first in its queue
            [(_, error)] = self.tasks.create_tasks(job.id, [jobmanager.task_body(manager)])
            if error is not None:
                raise jobmanager.with_property_prefix(error)
        self._arm_wall_clock(job)
        self._complete_if_all_tasks_done(job)  # terminatejob with no tasks yet: complete at once
        return job

    def check_job_specification(self, body: dict) -> None:
        """What a job (or a job schedule's jobSpecification) must satisfy before anything is created."""
        pool_info = body["poolInfo"]
        if not pool_info.get("poolId") and not pool_info.get("autoPoolSpecification"):
            raise invalid_property("poolInfo", "{}", "Specify either poolId or autoPoolSpecification.")
        preparation_and_release = job_tasks(body)  # the preparation and release tasks are checked too
        check_subnet("networkConfiguration", body.get("networkConfiguration"))
        manager = jobmanager.job_manager_spec(body)
        if manager is not None:
            # Checked as add_task checks a task of the job (the job does not exist yet).
            job = Job({"id": body.get("id") or "job", "poolInfo": pool_info,
                       "constraints": _constraints(body.get("constraints")),
                       "onTaskFailure": body.get("onTaskFailure") or "noaction",
                       "executionInfo": {"poolId": pool_info.get("poolId")}, **preparation_and_release})
            try:
                self.tasks.new_task(job, jobmanager.task_body(manager))
            except BatchServiceError as error:
                raise jobmanager.with_property_prefix(error) from None

    def _create_auto_pool(self, job_id: str, spec: dict) -> str:
        if spec.get("poolLifetimeOption", "").lower() != "job":
            raise invalid_property("poolInfo.autoPoolSpecification.poolLifetimeOption",
                                   spec.get("poolLifetimeOption"), "Use 'job' for a job's auto-pool.")
        return self.create_auto_pool(spec, job_id)

    def create_auto_pool(self, spec: dict, job_id: Optional[str] = None) -> str:
        """An auto-pool of `spec`, with the service's id (prefix, underscore, upper-case GUID)."""
        guid = str(uuid.uuid4()).upper()
        pool_id = f"{spec['autoPoolIdPrefix']}_{guid}" if spec.get("autoPoolIdPrefix") else guid
        try:
            self.pools.create_pool({**(spec.get("pool") or {}), "id": pool_id}, auto_pool_job_id=job_id)
        except BatchServiceError as exc:
            if "PropertyName" in exc.values:
                exc.values["PropertyName"] = "poolInfo.autoPoolSpecification.pool." + exc.values["PropertyName"]
            raise
        return pool_id

    def update_job(self, job_id: str, body: dict) -> Job:
        return self._update(job_id, body, replace=False)

    def replace_job(self, job_id: str, body: dict) -> Job:
        return self._update(job_id, body, replace=True)

    def _update(self, job_id: str, body: dict, replace: bool) -> Job:
        job = self.repo.get_job(job_id)
        if job.state in ("deleting", "terminating", "completed"):
            raise job_closed(job)
        check_subnet("networkConfiguration", body.get("networkConfiguration"))
        requested = body.get("onAllTasksComplete") or ("noaction" if replace else None)  # PUT: absent = noaction
        if requested and requested.lower() != "terminatejob" and job.data["onAllTasksComplete"].lower() == "terminatejob":
            raise invalid_property("onAllTasksComplete", requested,
                                   "Once a job's onAllTasksComplete is terminatejob it cannot be changed back.")
        if replace:
            body = {**body, "onAllTasksComplete": requested}
        if body.get("constraints") is not None:
            # A new constraints object replaces the old one; what it leaves out takes the defaults.
            body = {**body, "constraints": _constraints(body["constraints"])}
        for name in UPDATABLE_PROPERTIES:
            if body.get(name) is not None:
                job.data[name] = pool_info_without_secrets(body[name]) if name == "poolInfo" else body[name]
            elif replace and name == "metadata":
                job.data.pop(name, None)
        if body.get("constraints") is not None:
            self._arm_wall_clock(job)
        if body.get("poolInfo", {}).get("poolId"):
            self.repo.move_job(job, body["poolInfo"]["poolId"])
        job.touch()
        self._complete_if_all_tasks_done(job)
        self.context.kick(job.pool_id)
        return job

    def disable_job(self, job_id: str, option: str) -> Job:
        """active -> disabling -> disabled once no task of the job runs any more (requeue and
        terminate stop them; wait lets them finish). Disabling a disabled job changes nothing."""
        job = self.repo.get_job(job_id)
        if job.state in ("disabling", "disabled"):
            return job
        if job.state != "active":
            raise BatchServiceError("JobNotActive")
        job.set_state("disabling")
        if option in ("requeue", "terminate"):
            for task in list(job.tasks.values()):
                if task.state in RUNNING_TASK_STATES:
                    self.tasks.stop(job, task, option)
        self.context.background.spawn(self._finish_disable(job))
        return job

    async def _finish_disable(self, job: Job) -> None:
        await self._until_no_task_runs(job, "disabling")
        if job.state == "disabling":
            job.set_state("disabled")

    def enable_job(self, job_id: str) -> Job:
        job = self.repo.get_job(job_id)
        if job.state not in ("disabled", "disabling"):
            raise BatchServiceError("OperationInvalidForCurrentState", "The job is not disabled.")
        job.set_state("active")
        self.context.kick(job.pool_id)
        return job

    def terminate_job(self, job_id: str, reason: Optional[str]) -> Job:
        job = self.repo.get_job(job_id)
        if job.state in ("completed", "deleting"):
            raise job_closed(job)
        if job.state != "terminating":
            job.set_state("terminating")
            # Kept with the job, so a restart while it is terminating finishes with the same reason.
            job.data["executionInfo"]["terminateReason"] = reason or "UserTerminate"
            self.context.background.spawn(self._finish_terminate(job))
        return job

    async def _finish_terminate(self, job: Job) -> None:
        await self.context.transitions.step("job_terminating")
        for task in list(job.tasks.values()):
            if task.state in UNFINISHED_TASK_STATES:
                self.tasks.stop(job, task, "terminate")
        job.pending.clear()
        job.blocked.clear()
        # The job stays terminating until its killed tasks are seen to end (they report completed)
        # and its release task has run on every node where its preparation task ran.
        await self._until_no_task_runs(job, "terminating", limit=STOPPED_TASKS_GRACE_SECONDS)
        if job.state == "terminating":
            await self.preparations.release(job)
        if job.state == "terminating":
            self._mark_completed(job, job.data["executionInfo"].get("terminateReason") or "UserTerminate")

    def delete_job(self, job_id: str) -> None:
        job = self.repo.get_job(job_id)
        if job.state == "deleting":
            raise BatchServiceError("JobBeingDeleted")
        job.set_state("deleting")
        self.context.background.cancel_timer(f"job-wall-clock:{job.key}")
        self.context.background.spawn(self._finish_delete(job))

    async def _finish_delete(self, job: Job) -> None:
        await self.context.transitions.step("job_deleting")
        for task in list(job.tasks.values()):
            if task.state in RUNNING_TASK_STATES:
                self.tasks.stop(job, task, "terminate")
        job.pending.clear()
        job.blocked.clear()
        await self.preparations.release(job)
        pool = self.repo.find_pool(job.pool_id)
        self._release_auto_pool(job)
        self.repo.remove_job(job)
        self.on_job_finished(job)
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, self.context.agent.layout.remove_job, pool.id, list(pool.nodes), job.id)

    def get_job_task_counts(self, job_id: str) -> dict:
        job = self.repo.get_job(job_id)
        counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
        slots = dict(counts)
        for task in job.tasks.values():
            state = "running" if task.state == "preparing" else task.state
            counts[state] += 1
            slots[state] += task.required_slots
            if state == "completed":
                outcome = "failed" if task.execution_info.get("result") == "failure" else "succeeded"
                counts[outcome] += 1
                slots[outcome] += task.required_slots
        return {"taskCounts": counts, "taskSlotCounts": slots}

    # ---- completion -------------------------------------------------------------------------------------
    def _task_completed(self, job: Job, task: Task) -> None:
        """A task completed: take the job action of its exit options (on jobs that ask for that), or
        end the job when its job manager completed with killJobOnCompletion."""
        if job.state == "active" and job.data["onTaskFailure"].lower() == exitconditions.PERFORM_EXIT_OPTIONS:
            info = task.execution_info
            options = exitconditions.resolve(task.data.get("exitConditions"), info.get("exitCode"),
                                             (info.get("failureInfo") or {}).get("code"))
            if options.job_action == "terminate":
                self.terminate_job(job.id, "TaskFailed")
                return
            if options.job_action == "disable":
                self.disable_job(job.id, "requeue")
                return
        if job.state == "active" and jobmanager.kills_job_on_completion(job, task):
            self.terminate_job(job.id, jobmanager.TERMINATE_REASON)
            return
        self._complete_if_all_tasks_done(job)

    def _complete_if_all_tasks_done(self, job: Job) -> None:
        # A job without tasks counts as having all its tasks complete (as documented for terminatejob).
        if job.state != "active" or job.data["onAllTasksComplete"].lower() != "terminatejob":
            return
        if job.pending or job.running_count:
            return
        if all(task.state == "completed" for task in job.tasks.values()):
            if job.data.get("jobReleaseTask") and job.preparation:
                self.terminate_job(job.id, "AllTasksComplete")  # terminating while the release tasks run
            else:
                self._mark_completed(job, "AllTasksComplete")

    def _mark_completed(self, job: Job, reason: str) -> None:
        if job.state == "completed":
            return
        job.set_state("completed")
        job.data["executionInfo"]["endTime"] = wire.now_iso()
        job.data["executionInfo"]["terminateReason"] = reason
        self.context.background.cancel_timer(f"job-wall-clock:{job.key}")
        self._release_auto_pool(job)
        self.on_job_finished(job)

    def _release_auto_pool(self, job: Job) -> None:
        spec = job.data["poolInfo"].get("autoPoolSpecification") or {}
        pool = self.repo.find_pool(job.pool_id)
        if (spec and not spec.get("keepAlive") and pool is not None and pool.auto_pool_job_id == job.id
                and pool.state != "deleting"):
            self.pools.delete_pool(pool.id)

    async def _until_no_task_runs(self, job: Job, while_state: str, limit: Optional[float] = None) -> None:
        """Wait until none of the job's tasks runs, the job leaves `while_state`, or `limit` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while job.running_count > 0 and job.state == while_state and job.attached:
            if deadline is not None and loop.time() > deadline:
                logger.warning("tasks of job %s still run %.0f s after they were stopped", job.id, limit)
                return
            await asyncio.sleep(0.02)

    # ---- wall clock ---------------------------------------------------------------------------------------
    def _arm_wall_clock(self, job: Job) -> None:
        """Terminate the job (reason MaxWallClockTimeExpiry) once it has existed for its maxWallClockTime."""
        name = f"job-wall-clock:{job.key}"
        self.context.background.cancel_timer(name)
        limit = wire.parse_duration(job.data["constraints"].get("maxWallClockTime") or wire.MAX_DURATION)
        if limit >= 10 ** 8 or job.state in ("completed", "terminating", "deleting"):
            return
        elapsed = (wire.utcnow() - wire.parse_iso(job.data["creationTime"])).total_seconds()
        self.context.background.set_timer(name, max(0.0, limit - elapsed), lambda: self._wall_clock_expired(job))

    def _wall_clock_expired(self, job: Job) -> None:
        if job.attached and job.state in ("active", "disabling", "disabled", "enabling"):
            self.terminate_job(job.id, "MaxWallClockTimeExpiry")

    # ---- start-up ------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Once the loop runs: finish what was in flight, and arm the wall-clock timers."""
        for job in list(self.repo.jobs.values()):
            if job.state == "deleting":
                self.context.background.spawn(self._finish_delete(job))
            elif job.state == "terminating":
                self.context.background.spawn(self._finish_terminate(job))
            elif job.state == "disabling":
                self.context.background.spawn(self._finish_disable(job))
            self._arm_wall_clock(job)


def _constraints(given: Optional[dict]) -> dict:
    constraints = {"maxWallClockTime": wire.MAX_DURATION, "maxTaskRetryCount": 0, **(given or {})}
    check_durations("constraints", constraints, ("maxWallClockTime",))
    return constraints
