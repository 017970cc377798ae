"""An acknowledged change survives a crash: SIGKILL `python -m localbatch` (and its launchers) the
moment a call returns, start it again on the same location, and everything that call created is
there; a task that was seen completed before the crash is not run again.

Each case drives the emulator through the real SDK up to one acknowledgement, then crashes it at
once (no wait, no shutdown): the store must have committed the change before the answer went out.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import pytest
from azure.batch import BatchClient, models
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from .support import (RunningEmulator, batch_client, crash_with_launchers, pool_options, read_task_file,
                      wait_for_all_tasks, wait_for_nodes, wait_for_task)

NODE_STARTUP = ("--node-startup-seconds", "0.05")
POOL, JOB = "durable-pool", "durable-job"
BATCH_SIZE = 100  # one addtaskcollection request: the most a single call can add
T = TypeVar("T")


@dataclass
class Acknowledged:
    """What the emulator acknowledged before the crash, to look for after the restart."""
    pools: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)                # in JOB
    node_users: list[tuple[str, str]] = field(default_factory=list)  # (node id, user name) in POOL
    completed: dict[str, models.BatchTask] = field(default_factory=dict)  # task id -> as read before the crash


@pytest.fixture
def location(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """Where task command lines leave a line per run, outside the emulator's location."""
    directory = tmp_path / "marks"
    directory.mkdir()
    return directory


@pytest.fixture
def started() -> Iterator[Callable[[Path], RunningEmulator]]:
    """Starts `python -m localbatch` on a location; every one started is killed at the end."""
    running: list[RunningEmulator] = []

    def start(location: Path) -> RunningEmulator:
        running.append(RunningEmulator(location, *NODE_STARTUP))
        return running[-1]

    yield start
    for emulator in running:
        emulator.kill()


# ---- the moments: a setup (made durable by a clean stop), then the call the crash follows --------
def _appending_task(task_id: str, marks: Path) -> models.BatchTaskCreateOptions:
    """A task that appends a line to its own mark file per run and prints one line."""
    return models.BatchTaskCreateOptions(
        id=task_id, command_line=f"/bin/bash -c 'echo run >> {marks / task_id}; echo output of {task_id}'")


def create_the_pool(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    client.create_pool(pool_options(POOL, nodes=1))
    seen.pools.append(POOL)


def create_the_job(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    seen.jobs.append(JOB)


def create_the_pool_and_job(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    create_the_pool(client, seen, marks)
    create_the_job(client, seen, marks)


def add_one_task(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    client.create_task(JOB, _appending_task("single", marks))
    seen.tasks.append("single")


def add_a_collection_of_tasks(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    ids = [f"bulk-{n:03d}" for n in range(BATCH_SIZE)]
    result = client.create_tasks(JOB, [_appending_task(task_id, marks) for task_id in ids])
    assert sorted(r.task_id for r in result.result_values if r.status == "success") == ids, "precondition"
    seen.tasks.extend(ids)


def create_a_node_user(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    [node] = wait_for_nodes(client, POOL, 1)
    client.create_node_user(POOL, node.id, models.BatchNodeUserCreateOptions(name="kept-user", password="K3pt-pass!"))
    seen.node_users.append((node.id, "kept-user"))


def run_a_task_until_seen_completed(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    wait_for_nodes(client, POOL, 1)
    client.create_task(JOB, _appending_task("finished", marks))
    seen.tasks.append("finished")
    seen.completed["finished"] = wait_for_task(client, JOB, "finished")  # this read is the last call


def nothing(client: BatchClient, seen: Acknowledged, marks: Path) -> None:
    """No setup."""


Step = Callable[[BatchClient, Acknowledged, Path], None]


@dataclass
class Moment:
    name: str
    setup: Step  # acknowledged and then made durable by a clean stop and start
    act: Step    # acknowledged just before the crash


MOMENTS = [
    Moment("after_create_pool", nothing, create_the_pool),
    Moment("after_create_job", create_the_pool, create_the_job),
    Moment("after_add_task", create_the_pool_and_job, add_one_task),
    Moment("after_create_tasks_of_100", create_the_pool_and_job, add_a_collection_of_tasks),
    Moment("after_create_node_user", create_the_pool, create_a_node_user),
    Moment("after_a_task_was_read_as_completed", create_the_pool_and_job, run_a_task_until_seen_completed),
]


# ---- the test -------------------------------------------------------------------------------------
@pytest.mark.parametrize("moment", MOMENTS, ids=[m.name for m in MOMENTS])
def test_what_was_acknowledged_before_a_crash_is_there_after_a_restart(moment, location, marks, started):
    seen = Acknowledged()
    if moment.setup is not nothing:
        prepared = started(location)
        with batch_client(prepared.url()) as client:
            moment.setup(client, seen, marks)
        assert prepared.finish(signal.SIGTERM) == 0, prepared.stderr  # a clean stop keeps the setup

    crashed = started(location)
    with batch_client(crashed.url()) as client:
        moment.act(client, seen, marks)
    crash_with_launchers(crashed)  # at once: the call above has just returned

    restarted = started(location)
    with batch_client(restarted.url()) as client:
        for pool_id in seen.pools:
            pool = _found(lambda: client.get_pool(pool_id))
            assert pool is not None, f"pool {pool_id} was acknowledged before the crash and is gone after it"
            assert (pool.state, pool.target_dedicated_nodes) == ("active", 1)
        for job_id in seen.jobs:
            job = _found(lambda: client.get_job(job_id))
            assert job is not None, f"job {job_id} was acknowledged before the crash and is gone after it"
            assert job.pool_info.pool_id == POOL
        if seen.tasks:
            kept = {t.id for t in client.list_tasks(JOB, select=["id"])}
            lost = sorted(set(seen.tasks) - kept)
            assert not lost, f"{len(lost)} of {len(seen.tasks)} acknowledged tasks are gone after the crash: {lost[:5]}"
        for node_id, name in seen.node_users:
            same_user = models.BatchNodeUserCreateOptions(name=name, password="An0ther!")
            try:
                client.create_node_user(POOL, node_id, same_user)
            except ResourceExistsError as error:
                assert error.error.code == "NodeUserExists"
            else:
                pytest.fail(f"node user {name} was acknowledged before the crash and is gone after it")
        if seen.completed:
            _assert_not_run_again(client, seen.completed, marks)
    assert restarted.finish(signal.SIGTERM) == 0, restarted.stderr


def _found(get: Callable[[], T]) -> Optional[T]:
    """What `get` returns, or None when the emulator answers 404."""
    try:
        return get()
    except ResourceNotFoundError:
        return None


def _assert_not_run_again(client: BatchClient, completed: dict[str, models.BatchTask], marks: Path) -> None:
    """Every task of JOB settles first (a task the restart wrongly requeued runs again meanwhile),
    then each task read as completed before the crash is exactly as it was read then."""
    wait_for_all_tasks(client, JOB)
    for task_id, before in completed.items():
        after = client.get_task(JOB, task_id)
        assert (marks / task_id).read_text() == "run\n", f"task {task_id} ran again after the restart"
        assert after.state == "completed"
        assert (after.execution_info.end_time, after.execution_info.exit_code) == \
            (before.execution_info.end_time, before.execution_info.exit_code)
        assert after.execution_info.requeue_count == before.execution_info.requeue_count
        assert read_task_file(client, JOB, task_id) == f"output of {task_id}\n"
