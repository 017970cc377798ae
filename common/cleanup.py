"""Delete what a sample created, as its configuration decides, even after an error or Ctrl-C.

A sample records each job, pool and container in ``CreatedResources`` *before* asking Batch or
Storage to create it, so a run that fails (or is interrupted) half-way still knows what it may
have left behind. ``clean_up_resources`` then sends every delete request first, with one Ctrl-C
held back until they are all sent (a second one stops it at once), and only afterwards waits
(bounded) for them to finish. Its ``CleanupReport`` says what was deleted and, truthfully, what
is still there: kept on purpose (with a kept job's auto-pool), not deleted and why, or not
reached because cleanup was stopped.

Copy this module with ``common/helpers.py`` (for ``describe_batch_error``), ``common/storage.py``
and ``common/redaction.py``; it needs nothing else from this project.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterator, Optional

from azure.batch import BatchClient
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.polling import LROPoller
from azure.storage.blob import BlobServiceClient

from common.helpers import describe_batch_error, enum_value
from common.storage import delete_container_if_exists

logger = logging.getLogger(__name__)


@dataclass
class CreatedResources:
    """The ids of what a sample run created, or was about to create when it stopped.

    ``clean_up_resources`` leaves its report in ``cleanup_report``, so whoever reports the end
    of the run can say what is still there, even when cleanup itself was interrupted.
    """

    job_ids: list[str] = field(default_factory=list)
    pool_ids: list[str] = field(default_factory=list)
    container_names: list[str] = field(default_factory=list)
    cleanup_report: Optional["CleanupReport"] = field(default=None, repr=False, compare=False)

    def names(self) -> list[str]:
        """Every resource as ``"job <id>"``, ``"pool <id>"`` or ``"container <name>"``, in deletion order."""
        return (
            [f"job {job_id}" for job_id in self.job_ids]
            + [f"pool {pool_id}" for pool_id in self.pool_ids]
            + [f"container {name}" for name in self.container_names]
        )


@dataclass
class CleanupReport:
    """What ``clean_up_resources`` did with each resource, and what is still there because of it."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    kept_details: dict[str, str] = field(default_factory=dict)
    still_deleting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)
    interrupted: bool = False
    stopped_at_once: bool = False

    def lines(self) -> list[str]:
        """Return one printable line per resource."""
        return (
            [f"Deleted {name}" for name in self.deleted]
            + [f"Kept {name}{self.kept_details.get(name, '')}" for name in self.kept]
            + [f"Deletion requested, still in progress: {name}" for name in self.still_deleting]
            + [f"Could not delete {reason}" for reason in self.failed]
            + [f"Not deleted (cleanup was stopped): {name}" for name in self.not_reached]
        )

    def left_behind(self) -> list[str]:
        """The resources that are still there: kept, not deleted, or not reached."""
        return self.kept + [reason.split(":", 1)[0] for reason in self.failed] + self.not_reached

    def summary(self) -> str:
        """One line saying what is still there (or that nothing is), for the sample's last message."""
        parts = []
        if self.failed:
            parts.append("could not delete " + "; ".join(self.failed))
        if self.not_reached:
            parts.append("cleanup was stopped before deleting " + ", ".join(self.not_reached))
        if self.kept:
            parts.append("kept " + ", ".join(self.kept))
        if self.still_deleting:
            parts.append("deletion requested but not yet finished for " + ", ".join(self.still_deleting))
        if not parts:
            return "everything it created was deleted" if self.deleted else "it had created nothing yet"
        return "; ".join(parts)

    def raise_if_incomplete(self) -> None:
        """Raise if a delete failed (``RuntimeError``) or the wait for it was interrupted (``KeyboardInterrupt``)."""
        if self.failed:
            raise RuntimeError("cleanup failed: could not delete " + "; ".join(self.failed))
        if self.interrupted:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred(report: CleanupReport, stop_at_first: bool = False) -> Iterator[None]:
    """Hold back the first SIGINT/SIGTERM while the block runs (noting it in ``report``); the next one stops it.

    With ``stop_at_first`` (the run was already interrupted once) any signal stops the block at
    once with ``KeyboardInterrupt``. Only the main thread can install signal handlers; elsewhere
    the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signal_number: int, _frame: object) -> None:
        if report.interrupted or stop_at_first:
            report.interrupted = report.stopped_at_once = True
            raise KeyboardInterrupt
        report.interrupted = True
        logger.warning("Signal %d received: sending the remaining delete requests first "
                       "(press Ctrl-C again to stop at once and leave them)", signal_number)

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _request_deletion(
    name: str, delete: Callable[[], LROPoller], report: CleanupReport, pollers: dict[str, LROPoller]
) -> None:
    """Send one delete request; file the outcome in ``report``, or its poller in ``pollers``."""
    try:
        pollers[name] = delete()
    except ResourceNotFoundError:
        logger.info("%s does not exist; nothing to delete", name)
    except ResourceExistsError as error:  # e.g. PoolBeingDeleted, JobBeingDeleted
        logger.info("%s is already being deleted (%s)", name, describe_batch_error(error))
        report.still_deleting.append(name)
    except Exception as error:  # keep going: one failure must not stop the other deletions
        report.failed.append(f"{name}: {describe_batch_error(error)}")


def describe_kept_job(batch_client: BatchClient, job_id: str) -> str:
    """Return what a kept job still holds that costs money: its auto-pool's id and nodes ("" if none).

    A job created with an auto-pool keeps that pool (and its nodes) until the job is deleted.
    """
    try:
        job = batch_client.get_job(job_id, select=["id", "poolInfo", "executionInfo"])
        auto_pool = job.pool_info.auto_pool_specification if job.pool_info else None
        pool_id = job.execution_info.pool_id if job.execution_info else None
        if auto_pool is None:
            return ""
        if not pool_id:
            return " (its auto-pool has not been created)"
        pool = batch_client.get_pool(pool_id, select=[
            "id", "vmSize", "currentDedicatedNodes", "currentLowPriorityNodes",
            "targetDedicatedNodes", "targetLowPriorityNodes", "state",
        ])
    except ResourceNotFoundError:
        return " (its auto-pool is gone)"
    except Exception as error:
        return f" (its auto-pool could not be looked up: {describe_batch_error(error)})"
    nodes = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
    target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
    return (f" and its auto-pool {pool_id} ({nodes} of {target} node(s) of {pool.vm_size}, "
            f"{enum_value(pool.state)}): the nodes stay, and on Azure are billed, until the job is deleted")


def describe_kept_pool(batch_client: BatchClient, pool_id: str) -> str:
    """Return a kept pool's nodes, which stay (and on Azure are billed) until it is deleted or resized to 0."""
    try:
        pool = batch_client.get_pool(pool_id, select=["id", "vmSize", "currentDedicatedNodes", "currentLowPriorityNodes"])
    except ResourceNotFoundError:
        return " (it no longer exists)"
    except Exception as error:
        return f" (it could not be looked up: {describe_batch_error(error)})"
    nodes = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
    return f" ({nodes} node(s) of {pool.vm_size}): they stay, and on Azure are billed, until the pool is deleted"


def clean_up_resources(
    batch_client: BatchClient,
    blob_service_client: Optional[BlobServiceClient],
    resources: CreatedResources,
    *,
    delete_jobs: bool = True,
    delete_pools: bool = True,
    delete_containers: bool = True,
    timeout: timedelta = timedelta(minutes=10),
    poll_interval_seconds: float = 5.0,
    keep_everything: bool = False,
) -> CleanupReport:
    """Delete the jobs, pools and containers in ``resources``, except the kinds the flags say to keep.

    Jobs go first (deleting a job also deletes its auto-pool), then pools, then containers.
    Returns a report (also left in ``resources.cleanup_report``); waits at most ``timeout`` for
    Batch to finish deleting, after which a resource is reported as still being deleted (the
    request was accepted: nothing leaks). ``keep_everything`` (the samples' ``--keep-resources``)
    keeps them all, and the report then names a kept job's auto-pool and a kept pool's nodes.

    Ctrl-C: the first one is held back until every delete request is sent; a second one, or
    the first one when this runs while a ``KeyboardInterrupt`` is already propagating (in a
    ``finally`` after Ctrl-C), stops at once: the report then lists what was not reached, and
    ``KeyboardInterrupt`` is raised.
    """
    report = CleanupReport(not_reached=resources.names())
    resources.cleanup_report = report
    already_interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
    pollers: dict[str, LROPoller] = {}

    def settle(name: str) -> None:
        if name in report.not_reached:
            report.not_reached.remove(name)

    try:
        with interrupts_deferred(report, stop_at_first=already_interrupted):
            batch_deletions = (
                ("job", resources.job_ids, delete_jobs, batch_client.begin_delete_job, describe_kept_job),
                ("pool", resources.pool_ids, delete_pools, batch_client.begin_delete_pool, describe_kept_pool),
            )
            for kind, resource_ids, configured_to_delete, begin_delete, describe_kept in batch_deletions:
                for resource_id in resource_ids:
                    name = f"{kind} {resource_id}"
                    if keep_everything or not configured_to_delete:
                        report.kept_details[name] = describe_kept(batch_client, resource_id)
                        report.kept.append(name)
                    else:
                        _request_deletion(
                            name,
                            functools.partial(begin_delete, resource_id, polling_interval=poll_interval_seconds),
                            report, pollers,
                        )
                    if name not in pollers:
                        settle(name)
            for container_name in resources.container_names:
                name = f"container {container_name}"
                if keep_everything or not delete_containers or blob_service_client is None:
                    report.kept.append(name)
                else:
                    try:
                        if delete_container_if_exists(blob_service_client, container_name):
                            report.deleted.append(name)
                    except Exception as error:
                        report.failed.append(f"{name}: {describe_batch_error(error)}")
                settle(name)
        deadline = time.monotonic() + timeout.total_seconds()
        for name, poller in pollers.items():
            if not report.interrupted:
                try:
                    poller.result(timeout=max(0.0, deadline - time.monotonic()))
                except KeyboardInterrupt:  # the requests are sent: stop waiting, Batch carries on
                    report.interrupted = True
                except ResourceNotFoundError:
                    pass
                except Exception as error:
                    report.failed.append(f"{name}: {describe_batch_error(error)}")
                    settle(name)
                    continue
            if report.interrupted or not poller.done():
                report.still_deleting.append(name)
            else:
                report.deleted.append(name)
            settle(name)
    except KeyboardInterrupt:
        report.interrupted = report.stopped_at_once = True
        # Requests already sent carry on at the service; those never sent leave their resource.
        for name in [name for name in report.not_reached if name in pollers]:
            report.not_reached.remove(name)
            report.still_deleting.append(name)
        if report.not_reached:
            logger.warning("Cleanup stopped at once; not deleted: %s", ", ".join(report.not_reached))
        raise
    return report
