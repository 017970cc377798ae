"""Job schedules: create, update, replace, disable, enable, terminate, delete, and the recurrence
that creates their jobs.

States (states.JOB_SCHEDULE): active <-> disabled; active or disabled -> terminating -> completed;
active -> completed once no job will ever be created again and none is active; any -> deleting.

The recurrence, as the service documents it: opportunities start at `doNotRunUntil` (or at once)
and repeat every `recurrenceInterval` (or happen once). A job may be created for an opportunity
within its `startWindow` (and, when the schedule recurs, before the next opportunity), never
after `doNotRunAfter`, and only while no other job of the schedule is active: a job still
running when an opportunity comes delays the new job until it finishes, and the opportunity is
lost if its window closes first. Jobs are named `<scheduleId>:job-<n>`. The evaluation runs on
the domain's clock (runtime.Clock): at each opportunity, whenever a job of the schedule
finishes, and at start-up, so a restart resumes the schedule where its clock says it is.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Optional

from .. import wire
from ..errors import BatchServiceError, invalid_property
from .context import DomainContext
from .entities import Job, JobSchedule
from .jobs import Jobs
from .runtime import Clock
from .mounts import auto_pool_mount_secrets, with_mount_secrets
from .validation import check_durations, check_id, pool_info_without_secrets

logger = logging.getLogger(__name__)

MINIMUM_INTERVAL_SECONDS = 60  # recurrenceInterval and startWindow, as on the service
AUTO_POOL_LIFETIMES = ("job", "jobschedule")


class JobSchedules:
    def __init__(self, context: DomainContext, jobs: Jobs, clock: Clock):
        self.context = context
        self.repo = context.repo
        self.jobs = jobs
        self.clock = clock
        jobs.on_job_finished = self._job_finished

    # ---- operations ---------------------------------------------------------------------------------
    def create_job_schedule(self, body: dict) -> JobSchedule:
        check_id("id", body["id"])
        existing = self.repo.job_schedules.get(body["id"].lower())
        if existing is not None:
            raise BatchServiceError("JobScheduleBeingDeleted" if existing.state == "deleting" else "JobScheduleExists")
        schedule_config = _checked_schedule(body["schedule"])
        self._check_job_specification(body["jobSpecification"])
        now = wire.iso(self.clock.now())
        data = {"id": body["id"], "creationTime": now, "state": "active", "stateTransitionTime": now,
                "schedule": schedule_config, "jobSpecification": _without_secrets(body["jobSpecification"]),
                "executionInfo": {}}
        for optional in ("displayName", "metadata"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        schedule = JobSchedule(data, mount_secrets=auto_pool_mount_secrets(body["jobSpecification"]["poolInfo"]))
        schedule.touch()
        self.repo.add_job_schedule(schedule)
        self._evaluate(schedule)
        return schedule

    def update_job_schedule(self, schedule_id: str, body: dict) -> JobSchedule:
        return self._update(schedule_id, body, replace=False)

    def replace_job_schedule(self, schedule_id: str, body: dict) -> JobSchedule:
        return self._update(schedule_id, body, replace=True)

    def _update(self, schedule_id: str, body: dict, replace: bool) -> JobSchedule:
        """New schedule, job specification and metadata; jobs already created keep theirs. A
        replace clears what it leaves out (a missing schedule means: run once, at once)."""
        schedule = self._open_schedule(schedule_id)
        if body.get("schedule") is not None or replace:
            schedule.data["schedule"] = _checked_schedule(body.get("schedule") or {})
        if body.get("jobSpecification") is not None:
            self._check_job_specification(body["jobSpecification"])
            schedule.data["jobSpecification"] = _without_secrets(body["jobSpecification"])
            schedule.mount_secrets = auto_pool_mount_secrets(body["jobSpecification"]["poolInfo"])
        if body.get("metadata") is not None:
            schedule.data["metadata"] = body["metadata"]
        elif replace:
            schedule.data.pop("metadata", None)
        schedule.touch()
        self._evaluate(schedule)
        return schedule

    def disable_job_schedule(self, schedule_id: str) -> JobSchedule:
        """No new job until it is enabled again; an active job carries on."""
        schedule = self._open_schedule(schedule_id)
        if schedule.state == "active":
            schedule.set_state("disabled")
            self.clock.cancel(_alarm(schedule))
        return schedule

    def enable_job_schedule(self, schedule_id: str) -> JobSchedule:
        schedule = self._open_schedule(schedule_id)
        if schedule.state == "disabled":
            schedule.set_state("active")
            self._evaluate(schedule)
        return schedule

    def terminate_job_schedule(self, schedule_id: str) -> JobSchedule:
        """terminating, then completed once its active job (terminated too) has been told to stop."""
        schedule = self.repo.get_job_schedule(schedule_id)
        if schedule.state == "deleting":
            raise BatchServiceError("JobScheduleBeingDeleted")
        if schedule.state == "completed":
            raise BatchServiceError("JobScheduleCompleted")
        if schedule.state != "terminating":
            schedule.set_state("terminating")
            self.clock.cancel(_alarm(schedule))
            self.context.background.spawn(self._finish_terminate(schedule))
        return schedule

    async def _finish_terminate(self, schedule: JobSchedule) -> None:
        await self.context.transitions.step("job_schedule_terminating")
        if not schedule.attached or schedule.state != "terminating":
            return
        job = self._active_job(schedule)
        if job is not None and job.state not in ("terminating", "deleting"):
            self.jobs.terminate_job(job.id, "UserTerminate")
        self._complete(schedule)

    def delete_job_schedule(self, schedule_id: str) -> None:
        """deleting; its jobs (and their tasks) are deleted with it, then it is gone."""
        schedule = self.repo.get_job_schedule(schedule_id)
        if schedule.state == "deleting":
            raise BatchServiceError("JobScheduleBeingDeleted")
        schedule.set_state("deleting")
        self.clock.cancel(_alarm(schedule))
        self.context.background.spawn(self._finish_delete(schedule))

    async def _finish_delete(self, schedule: JobSchedule) -> None:
        await self.context.transitions.step("job_schedule_deleting")
        for job in self.jobs_of(schedule):
            if job.state != "deleting":
                self.jobs.delete_job(job.id)
        self._release_pool(schedule)
        self.repo.remove_job_schedule(schedule)

    def jobs_of(self, schedule: JobSchedule) -> list[Job]:
        """The jobs the schedule created that still exist."""
        return [job for job in (self.repo.find_job(job_id) for job_id in schedule.job_ids) if job is not None]

    # ---- the recurrence -------------------------------------------------------------------------------
    def _evaluate(self, schedule: JobSchedule) -> None:
        """Create the job that is due (if any may be), then set the alarm for the next opportunity,
        or complete the schedule when there will be none and no job of it is active."""
        if not schedule.attached or schedule.state != "active":
            return
        now = self.clock.now()
        if self._active_job(schedule) is None:
            due = self._due_opportunity(schedule, now)
            if due is not None:
                self._create_job(schedule, due)
        upcoming = self._next_opportunity(schedule, now)
        execution = schedule.data["executionInfo"]
        if upcoming is not None:
            execution["nextRunTime"] = wire.iso(upcoming)
            self.clock.alarm(_alarm(schedule), upcoming, lambda: self._evaluate(schedule))
            return
        execution.pop("nextRunTime", None)
        self.clock.cancel(_alarm(schedule))
        if self._active_job(schedule) is None:  # otherwise completion waits for the active job
            self._complete(schedule)

    def _opportunities_from(self, schedule: JobSchedule) -> tuple[dt.datetime, Optional[float]]:
        config = schedule.data["schedule"]
        start = _moment(config.get("doNotRunUntil")) or wire.parse_iso(schedule.data["creationTime"])
        interval = wire.parse_duration(config["recurrenceInterval"]) if config.get("recurrenceInterval") else None
        return start, interval

    def _due_opportunity(self, schedule: JobSchedule, now: dt.datetime) -> Optional[dt.datetime]:
        """The latest opportunity at or before `now` that has no job yet and whose window is open."""
        try:
            return self._due_opportunity_of(schedule, now)
        except OverflowError:  # a window or interval that reaches past the year 9999
            return None

    def _due_opportunity_of(self, schedule: JobSchedule, now: dt.datetime) -> Optional[dt.datetime]:
        config = schedule.data["schedule"]
        start, interval = self._opportunities_from(schedule)
        if now < start:
            return None
        latest = start if interval is None else start + dt.timedelta(seconds=((now - start).total_seconds() // interval) * interval)
        if schedule.last_run is not None and latest <= wire.parse_iso(schedule.last_run):
            return None
        window = wire.parse_duration(config["startWindow"]) if config.get("startWindow") else None
        if window is not None and (now - latest).total_seconds() > window:
            return None  # the opportunity is lost
        not_after = _moment(config.get("doNotRunAfter"))
        if not_after is not None and now > not_after:
            return None
        return latest

    def _next_opportunity(self, schedule: JobSchedule, now: dt.datetime) -> Optional[dt.datetime]:
        """The first opportunity after `now`, before doNotRunAfter (none past the year 9999)."""
        try:
            return self._next_opportunity_of(schedule, now)
        except OverflowError:
            return None

    def _next_opportunity_of(self, schedule: JobSchedule, now: dt.datetime) -> Optional[dt.datetime]:
        config = schedule.data["schedule"]
        start, interval = self._opportunities_from(schedule)
        if start > now:
            upcoming = start
        elif interval is None:
            return None
        else:
            upcoming = start + dt.timedelta(seconds=((now - start).total_seconds() // interval + 1) * interval)
        not_after = _moment(config.get("doNotRunAfter"))
        if not_after is not None and upcoming > not_after:
            return None
        return upcoming

    def _create_job(self, schedule: JobSchedule, opportunity: dt.datetime) -> None:
        spec = schedule.data["jobSpecification"]
        spec = {**spec, "poolInfo": with_mount_secrets(spec["poolInfo"], schedule.mount_secrets)}
        job_id = f"{schedule.id}:job-{len(schedule.job_ids) + 1}"
        auto_pool = (spec["poolInfo"].get("autoPoolSpecification") or {})
        pool_id = None
        if auto_pool.get("poolLifetimeOption", "").lower() == "jobschedule":
            existing = self.repo.find_pool(schedule.pool_id)
            if existing is None or existing.state == "deleting":
                schedule.pool_id = self.jobs.create_auto_pool(auto_pool)
            pool_id = schedule.pool_id
        schedule.last_run = wire.iso(opportunity)
        try:
            job = self.jobs.create_job({**spec, "id": job_id}, scheduled=True, auto_pool_id=pool_id)
        except BatchServiceError as exc:
            # Checked when the schedule was created; what can still fail (a pool that went away)
            # loses this opportunity, as a job the service could not create would.
            logger.warning("job schedule %s could not create job %s: %s", schedule.id, job_id, exc)
            return
        schedule.job_ids = [*schedule.job_ids, job.id]
        schedule.data["executionInfo"]["recentJob"] = {"id": job.id}

    def _active_job(self, schedule: JobSchedule) -> Optional[Job]:
        if not schedule.job_ids:
            return None
        job = self.repo.find_job(schedule.job_ids[-1])
        return job if job is not None and job.state not in ("completed", "deleting") else None

    def _job_finished(self, job: Job) -> None:
        name, _, suffix = job.id.rpartition(":job-")
        schedule = self.repo.job_schedules.get(name.lower()) if name and suffix.isdigit() else None
        if schedule is not None and job.id in schedule.job_ids:
            self._evaluate(schedule)

    def _complete(self, schedule: JobSchedule) -> None:
        schedule.set_state("completed")
        schedule.data["executionInfo"].pop("nextRunTime", None)
        schedule.data["executionInfo"]["endTime"] = wire.iso(self.clock.now())
        self.clock.cancel(_alarm(schedule))
        self._release_pool(schedule)

    def _release_pool(self, schedule: JobSchedule) -> None:
        """The auto-pool that lives as long as the schedule goes with it, unless kept alive."""
        spec = schedule.data["jobSpecification"]["poolInfo"].get("autoPoolSpecification") or {}
        pool = self.repo.find_pool(schedule.pool_id)
        if pool is not None and pool.state != "deleting" and not spec.get("keepAlive"):
            self.jobs.pools.delete_pool(pool.id)

    # ---- checks -------------------------------------------------------------------------------------------
    def _open_schedule(self, schedule_id: str) -> JobSchedule:
        """The schedule, when it may still be changed."""
        schedule = self.repo.get_job_schedule(schedule_id)
        error = {"completed": "JobScheduleCompleted", "deleting": "JobScheduleBeingDeleted",
                 "terminating": "JobScheduleBeingTerminated"}.get(schedule.state)
        if error:
            raise BatchServiceError(error)
        return schedule

    def _check_job_specification(self, spec: dict) -> None:
        try:
            self.jobs.check_job_specification(spec)
        except BatchServiceError as exc:
            if "PropertyName" in exc.values:
                exc.values["PropertyName"] = "jobSpecification." + exc.values["PropertyName"]
            raise
        lifetime = ((spec["poolInfo"].get("autoPoolSpecification") or {}).get("poolLifetimeOption") or "")
        if spec["poolInfo"].get("autoPoolSpecification") and lifetime.lower() not in AUTO_POOL_LIFETIMES:
            raise invalid_property("jobSpecification.poolInfo.autoPoolSpecification.poolLifetimeOption",
                                   lifetime, "Use 'jobschedule' or 'job'.")

    # ---- start-up ------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Once the loop runs: finish what was in flight, and evaluate every active schedule."""
        for schedule in list(self.repo.job_schedules.values()):
            if schedule.state == "deleting":
                self.context.background.spawn(self._finish_delete(schedule))
            elif schedule.state == "terminating":
                self.context.background.spawn(self._finish_terminate(schedule))
            else:
                self._evaluate(schedule)


def _without_secrets(spec: dict) -> dict:
    """The job specification as kept and shown (its auto-pool's secrets are neither)."""
    return {**spec, "poolInfo": pool_info_without_secrets(spec["poolInfo"])}


def _alarm(schedule: JobSchedule) -> str:
    return f"job-schedule:{schedule.key}"


def _moment(text: Optional[str]) -> Optional[dt.datetime]:
    """A request's date-time (the SDK sends UTC with a Z; a time without a zone is taken as UTC)."""
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _checked_schedule(config: dict) -> dict:
    """The schedule as kept: times readable, intervals ISO-8601 durations of at least a minute."""
    for name in ("doNotRunUntil", "doNotRunAfter"):
        if config.get(name):
            try:
                _moment(config[name])
            except ValueError:
                raise invalid_property(f"schedule.{name}", config[name], "Expected an ISO-8601 date and time.") from None
    check_durations("schedule", config, ("recurrenceInterval", "startWindow"))
    for name in ("recurrenceInterval", "startWindow"):
        if config.get(name) and wire.parse_duration(config[name]) < MINIMUM_INTERVAL_SECONDS:
            raise invalid_property(f"schedule.{name}", config[name], "The minimum value is 1 minute.")
    return dict(config)
