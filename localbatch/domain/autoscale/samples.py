"""The sampled metrics a local pool can honestly give its autoscale formula.

Every SAMPLE_PERIOD_SECONDS of the domain's clock, each pool with autoscale enabled records the
task counts of the jobs that run on it: $ActiveTasks (waiting to run), $RunningTasks, $PendingTasks
(both), $SucceededTasks and $FailedTasks (tasks that ended since the previous sample). Resource
metrics ($CPUPercent, $MemoryBytes, ...) are not measured per node here, so a formula that reads
them gets an error naming them. Samples are kept for HISTORY_SECONDS (at most 360 per pool), in
the account's store like its entities: a pool's history is one row, written with the next commit
after each sample, so a restart carries on with it.
"""
from __future__ import annotations

import collections
import datetime as dt
from typing import Deque, Optional

from ... import wire
from ..entities import Job, Pool, Tracker
from .formula import Sampled

SAMPLE_PERIOD_SECONDS = 30.0
HISTORY_SECONDS = 3 * 3600.0
TASK_METRICS = ("$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks", "$FailedTasks")
NOT_PROVIDED = frozenset({
    "$CPUPercent", "$WallClockSeconds", "$MemoryBytes", "$DiskBytes", "$DiskReadBytes", "$DiskWriteBytes",
    "$DiskReadOps", "$DiskWriteOps", "$NetworkInBytes", "$NetworkOutBytes", "$SampleNodeCount",
})


class PoolSamples:
    """The sample history of one pool; once attached to a tracker (the store), it is written after
    every sample it takes."""
    kind = "autoscalesamples"

    def __init__(self, pool_key: str, history: Optional[list[tuple[dt.datetime, dict[str, float]]]] = None):
        self.pool_key = pool_key
        self.history: Deque[tuple[dt.datetime, dict[str, float]]] = collections.deque(history or ())
        self._tracker: Optional[Tracker] = None

    @property
    def key(self) -> str:
        return self.pool_key

    @property
    def attached(self) -> bool:
        return self._tracker is not None

    def attach(self, tracker: Optional[Tracker]) -> None:
        """Start (a tracker) or stop (None) writing this history."""
        self._tracker = tracker

    def record(self) -> dict:
        """What the store keeps: each sample as [time, [the TASK_METRICS values in order]]."""
        return {"poolKey": self.pool_key,
                "history": [[wire.iso(moment), [values[name] for name in TASK_METRICS]] for moment, values in self.history]}

    @classmethod
    def from_record(cls, record: dict) -> "PoolSamples":
        return cls(record["poolKey"], [(wire.parse_iso(moment), dict(zip(TASK_METRICS, values)))
                                       for moment, values in record["history"]])

    def take(self, now: dt.datetime, jobs: list[Job]) -> None:
        """Take the samples due up to `now` (none when less than a period passed since the last). When the clock jumped (a test moved it) the steps it
        skipped are filled with the counts of now: nothing ran in time that did not pass."""
        previous = self.history[-1][0] if self.history else None
        values = _counts(jobs, previous)
        moments = [now]
        if previous is not None:
            steps = int((now - previous).total_seconds() // SAMPLE_PERIOD_SECONDS)
            steps = min(steps, int(HISTORY_SECONDS // SAMPLE_PERIOD_SECONDS))
            moments = [previous + dt.timedelta(seconds=SAMPLE_PERIOD_SECONDS * k) for k in range(1, steps + 1)]
        self.history.extend((moment, values) for moment in moments)
        while self.history and (now - self.history[0][0]).total_seconds() > HISTORY_SECONDS:
            self.history.popleft()
        if self._tracker is not None:
            self._tracker.mark(self)

    def sampled(self, now: dt.datetime) -> dict[str, Sampled]:
        return {name: Sampled(name, [(moment, values[name]) for moment, values in self.history], now,
                              SAMPLE_PERIOD_SECONDS) for name in TASK_METRICS}


def _counts(jobs: list[Job], since: "dt.datetime | None") -> dict[str, float]:
    active = float(sum(len(job.pending) for job in jobs if job.state != "completed"))
    running = float(sum(job.running_count for job in jobs))
    succeeded = failed = 0.0
    for job in jobs:
        for task in job.tasks.values():
            end = task.data.get("executionInfo", {}).get("endTime") if task.state == "completed" else None
            if end and (since is None or wire.parse_iso(end) > since):
                if task.data["executionInfo"].get("result") == "failure":
                    failed += 1
                else:
                    succeeded += 1
    return {"$ActiveTasks": active, "$RunningTasks": running, "$PendingTasks": active + running,
            "$SucceededTasks": succeeded, "$FailedTasks": failed}


def plain_variables(pool: Pool) -> dict[str, float]:
    """The service variables a formula reads directly."""
    nodes = list(pool.nodes.values())
    usable = [n for n in nodes if n.state in ("idle", "running")]
    return {
        "$CurrentDedicatedNodes": float(sum(1 for n in nodes if n.is_dedicated and n.state != "leavingpool")),
        "$CurrentLowPriorityNodes": float(sum(1 for n in nodes if not n.is_dedicated and n.state != "leavingpool")),
        "$UsableNodeCount": float(len(usable)),
        "$PreemptedNodeCount": 0.0,  # nothing preempts a local node
        "$TaskSlotsPerNode": float(pool.data.get("taskSlotsPerNode", 1)),
    }

