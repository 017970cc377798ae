"""Delete what a sample created, as its configuration decides, even after an error or Ctrl-C.

A sample records each job, pool and container in ``CreatedResources`` *before* asking Batch or
Storage to create it, so a run that fails (or is interrupted) half-way still knows what it may
have left behind. ``clean_up_resources`` then sends every delete request first, with Ctrl-C
held back until they are all sent, and only afterwards waits (bounded) for them to finish.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterator, Optional

from azure.batch import BatchClient
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.polling import LROPoller
from azure.storage.blob import BlobServiceClient

from common.config import CleanupSettings
from common.helpers import describe_batch_error
from common.storage import delete_container_if_exists

logger = logging.getLogger(__name__)


@dataclass
class CreatedResources:
    """The ids of what a sample run created, or was about to create when it stopped."""

    job_ids: list[str] = field(default_factory=list)
    pool_ids: list[str] = field(default_factory=list)
    container_names: list[str] = field(default_factory=list)


@dataclass
class CleanupReport:
    """What ``clean_up_resources`` did with each resource."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    still_deleting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False

    def lines(self) -> list[str]:
        """Return one printable line per resource."""
        return (
            [f"Deleted {name}" for name in self.deleted]
            + [f"Kept {name}" for name in self.kept]
            + [f"Deletion requested, still in progress: {name}" for name in self.still_deleting]
            + [f"Could not delete {reason}" for reason in self.failed]
        )

    def raise_if_incomplete(self) -> None:
        """Raise if a delete failed (``RuntimeError``) or the wait for it was interrupted (``KeyboardInterrupt``)."""
        if self.failed:
            raise RuntimeError("cleanup failed: could not delete " + "; ".join(self.failed))
        if self.interrupted:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred(report: CleanupReport) -> Iterator[None]:
    """Hold back SIGINT/SIGTERM while the block runs; note in ``report`` whether one arrived.

    Only the main thread can install signal handlers; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def remember(signal_number: int, _frame: object) -> None:
        report.interrupted = True
        logger.warning("Signal %d received: sending the remaining delete requests first", signal_number)

    previous = {number: signal.signal(number, remember) for number in (signal.SIGINT, signal.SIGTERM)}
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


def clean_up_resources(
    batch_client: BatchClient,
    blob_service_client: Optional[BlobServiceClient],
    resources: CreatedResources,
    cleanup: CleanupSettings,
    timeout: timedelta,
    poll_interval_seconds: float = 5.0,
    keep_everything: bool = False,
) -> CleanupReport:
    """Delete the jobs, pools and containers in ``resources`` that ``cleanup`` says to delete.

    Jobs go first (deleting a job also deletes its auto-pool), then pools, then containers.
    Returns a report; waits at most ``timeout`` for Batch to finish deleting, after which a
    resource is reported as still being deleted (the request was accepted: nothing leaks).
    ``keep_everything`` (the samples' ``--keep-resources``) keeps them all.
    """
    report = CleanupReport()
    pollers: dict[str, LROPoller] = {}
    batch_deletions = (
        ("job", resources.job_ids, cleanup.delete_job, batch_client.begin_delete_job),
        ("pool", resources.pool_ids, cleanup.delete_pool, batch_client.begin_delete_pool),
    )
    with interrupts_deferred(report):
        for kind, resource_ids, configured_to_delete, begin_delete in batch_deletions:
            for resource_id in resource_ids:
                name = f"{kind} {resource_id}"
                if keep_everything or not configured_to_delete:
                    report.kept.append(name)
                    continue
                _request_deletion(
                    name,
                    functools.partial(begin_delete, resource_id, polling_interval=poll_interval_seconds),
                    report, pollers,
                )
        for container_name in resources.container_names:
            name = f"container {container_name}"
            if keep_everything or not cleanup.delete_container or blob_service_client is None:
                report.kept.append(name)
                continue
            try:
                if delete_container_if_exists(blob_service_client, container_name):
                    report.deleted.append(name)
            except Exception as error:
                report.failed.append(f"{name}: {describe_batch_error(error)}")
    deadline = time.monotonic() + timeout.total_seconds()
    for name, poller in pollers.items():
        if not report.interrupted:
            try:
                poller.result(timeout=max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                report.interrupted = True
            except ResourceNotFoundError:
                pass
            except Exception as error:
                report.failed.append(f"{name}: {describe_batch_error(error)}")
                continue
        if report.interrupted or not poller.done():
            report.still_deleting.append(name)
        else:
            report.deleted.append(name)
    return report
