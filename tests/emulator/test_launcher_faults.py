"""What happens to task programs when a launcher process (localbatch/node/launcher.py) dies.

The launcher starts each program with setsid, so a program outlives a launcher that is
SIGKILLed. The emulator's side (localbatch/node/processes.py) must then kill those programs,
fail every pending `started` / `exit_code` future with LauncherGone (none may hang), and start
a new launcher for the next program.

These tests drive ProcessLauncher directly and SIGKILL its launcher processes, found through
its private `_connections` (acceptable at this unit level). Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional, Union

import pytest
from azure.batch import models

from localbatch import LocalBatchServer
from localbatch.node.layout import TaskPaths
from localbatch.node.processes import LaunchedProcess, LauncherGone, ProcessLauncher

from .conftest import fast_timings
from .support import batch_client, create_job, create_pool_and_wait, wait_for, wait_for_all_tasks

WAIT = 30.0  # upper bound of any wait; reached only when something is broken
ENV = {"PATH": "/usr/bin:/bin"}
LONG_RUNNING = ["sleep", "300"]


async def eventually(check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll `check` (without blocking the event loop) until it is truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def _stat(pid: int) -> Optional[list[str]]:
    """The fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie may linger unreaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _parent(pid: int) -> int:
    fields = _stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return int(fields[1])


def programs_under(root: Path) -> set[int]:
    """The live processes working in a directory under `root`: the test's programs (launchers,
    which pass through a program's directory while starting it, excepted)."""
    prefix = os.path.realpath(root) + os.sep
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                is_launcher = b"launcher.py" in cmdline.read()
        except OSError:
            continue
        if cwd.startswith(prefix) and not is_launcher and _alive(int(name)):
            found.add(int(name))
    return found


def launcher_pid(launcher: ProcessLauncher, slot: int) -> Optional[int]:
    process = launcher._connections[slot]._process
    return process.pid if process is not None else None


def kill_launcher(launcher: ProcessLauncher, slot: int) -> Optional[int]:
    pid = launcher_pid(launcher, slot)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid


def runs_on(parent: Optional[int], starts: list[asyncio.Future]) -> bool:
    """Whether one of the programs started so far is a child of that launcher."""
    return any(s.done() and isinstance(s.result(), LaunchedProcess) and _alive(s.result().pid)
               and _parent(s.result().pid) == parent for s in starts)


async def bounded(awaitable: Awaitable, what: str):
    try:
        return await asyncio.wait_for(awaitable, WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} did not end within {WAIT} s") from None


async def gone_or_exit(process: LaunchedProcess) -> Union[int, LauncherGone]:
    try:
        return await bounded(asyncio.shield(process.exit_code), f"the exit of program {process.pid}")
    except LauncherGone as exc:
        return exc


async def start_or_gone(launcher: ProcessLauncher, task_dir: Path,
                        argv: list[str] = LONG_RUNNING) -> Union[LaunchedProcess, LauncherGone]:
    try:
        return await bounded(launcher.start(argv, TaskPaths(str(task_dir)), ENV), f"the start in {task_dir}")
    except LauncherGone as exc:
        return exc


async def run_true(launcher: ProcessLauncher, task_dir: Path) -> int:
    process = await bounded(launcher.start(["true"], TaskPaths(str(task_dir)), ENV), "a start")
    return await bounded(process.exit_code, "the exit of true")


def test_a_sigkilled_launcher_takes_its_programs_with_it(tmp_path, caplog):
    async def scenario() -> None:
        launcher = ProcessLauncher(2)
        try:
            started = await bounded(asyncio.gather(*(
                launcher.start(LONG_RUNNING, TaskPaths(str(tmp_path / f"task{i}")), ENV) for i in range(20))), "20 starts")
            killed = launcher_pid(launcher, 0)
            survivor = launcher_pid(launcher, 1)
            assert killed is not None and survivor is not None
            orphans = [p for p in started if _parent(p.pid) == killed]
            others = [p for p in started if p not in orphans]
            assert orphans and others, "precondition: both launchers run programs"
            with caplog.at_level(logging.WARNING, logger="localbatch.node.processes"):
                os.kill(killed, signal.SIGKILL)
                outcomes = await asyncio.gather(*(gone_or_exit(p) for p in orphans))
            assert all(isinstance(outcome, LauncherGone) for outcome in outcomes), outcomes
            await eventually(lambda: not any(_alive(p.pid) for p in orphans), "the orphaned programs to be killed")
            warnings = [r for r in caplog.records if r.name == "localbatch.node.processes" and r.levelno == logging.WARNING]
            assert len(warnings) == 1 and f"{len(orphans)} program(s) lost" in warnings[0].getMessage()
            for process in orphans:
                process.kill()  # harmless once the launcher is gone
            # The other launcher's programs run on, still supervised.
            assert all(_alive(p.pid) and not p.exit_code.done() for p in others)
            assert programs_under(tmp_path) == {p.pid for p in others}
            # The next starts spawn a new launcher in the dead one's slot.
            assert await asyncio.gather(*(run_true(launcher, tmp_path / f"again{i}") for i in range(4))) == [0] * 4
            assert launcher_pid(launcher, 0) not in (None, killed)
            assert launcher_pid(launcher, 1) == survivor
            others[0].kill()
            assert await bounded(others[0].exit_code, "a killed program's exit") == -signal.SIGKILL
        finally:
            await bounded(launcher.close(), "close()")
        assert programs_under(tmp_path) == set()

    asyncio.run(scenario())


@pytest.mark.parametrize("slots_killed", [(0,), (0, 1)])
def test_starts_racing_a_launcher_kill_all_end_and_leave_nothing_unsupervised(tmp_path, slots_killed):
    async def scenario() -> None:
        launcher = ProcessLauncher(2)
        results: list[Union[LaunchedProcess, LauncherGone]] = []
        try:
            for trial in range(4):
                root = tmp_path / f"trial{trial}"
                starts = []
                for i in range(80):
                    starts.append(asyncio.ensure_future(start_or_gone(launcher, root / f"task{i}")))
                    if i == 20 + 12 * trial:
                        # Kill once some programs run and while more starts are on their way.
                        await eventually(lambda: runs_on(launcher_pid(launcher, slots_killed[0]), starts),
                                         "a program to run on the launcher to be killed")
                        for slot in slots_killed:
                            kill_launcher(launcher, slot)
                    if i % (trial + 2) == 0:
                        await asyncio.sleep(0)
                outcomes = await bounded(asyncio.gather(*starts), "the starts")
                assert all(isinstance(o, (LaunchedProcess, LauncherGone)) for o in outcomes), outcomes
                results += outcomes
                processes = [o for o in outcomes if isinstance(o, LaunchedProcess)]
                # Every program whose launcher died has its exit_code failed, promptly.
                await eventually(lambda: all(not _alive(p.pid) for p in processes if p.exit_code.done()),
                                 "the untracked programs to be dead")
                for process in processes:
                    if process.exit_code.done():
                        assert isinstance(process.exit_code.exception(), LauncherGone)

                def consistent() -> bool:
                    tracked = {p.pid for p in processes if not p.exit_code.done()}
                    return programs_under(root) == tracked and all(_alive(pid) for pid in tracked)

                await eventually(consistent, "only tracked programs to run, and every tracked one to run")
                assert any(p.exit_code.done() for p in processes), "the kill hit no running program"
                # Starts after the kill succeed, on new launchers where the old ones died.
                assert await asyncio.gather(*(run_true(launcher, root / f"after{i}") for i in range(4))) == [0] * 4
            assert any(isinstance(o, LaunchedProcess) for o in results)
        finally:
            await bounded(launcher.close(), "close()")
        for result in results:
            if isinstance(result, LaunchedProcess):
                assert isinstance(await gone_or_exit(result), (LauncherGone, int))
        await eventually(lambda: not programs_under(tmp_path), "every program to be gone after close()")

    asyncio.run(scenario())


@pytest.mark.parametrize("wait_for_death", [True, False])
def test_close_returns_after_a_launcher_died(tmp_path, wait_for_death):
    async def scenario() -> None:
        launcher = ProcessLauncher(1)
        processes = [await bounded(launcher.start(LONG_RUNNING, TaskPaths(str(tmp_path / f"task{i}")), ENV), "a start")
                     for i in range(3)]
        killed = kill_launcher(launcher, 0)
        if wait_for_death:
            await asyncio.gather(*(gone_or_exit(p) for p in processes))
            await eventually(lambda: not _alive(killed), "the launcher to die")
        await bounded(launcher.close(), "close()")
        for process in processes:
            assert isinstance(await gone_or_exit(process), LauncherGone)
        await eventually(lambda: not programs_under(tmp_path), "every program to be gone")

    asyncio.run(scenario())


def test_a_start_right_after_the_kill_fails_or_succeeds_but_never_hangs(tmp_path):
    """A start sent to a launcher that is dying (its death not noticed yet) raises LauncherGone;
    one sent after that goes to a new launcher."""
    async def scenario() -> None:
        launcher = ProcessLauncher(1)
        try:
            assert await run_true(launcher, tmp_path / "first") == 0
            for trial in range(10):
                killed = kill_launcher(launcher, 0)
                outcomes = await asyncio.gather(*(start_or_gone(launcher, tmp_path / f"t{trial}-{i}")
                                                  for i in range(5)))
                assert all(isinstance(o, (LaunchedProcess, LauncherGone)) for o in outcomes), outcomes
                for outcome in outcomes:
                    if isinstance(outcome, LaunchedProcess):
                        outcome.kill()
                        result = await gone_or_exit(outcome)
                        assert result == -signal.SIGKILL or isinstance(result, LauncherGone), result
                assert await run_true(launcher, tmp_path / f"after{trial}") == 0
                assert launcher_pid(launcher, 0) != killed
            await eventually(lambda: not programs_under(tmp_path), "every program to be gone")
        finally:
            await bounded(launcher.close(), "close()")

    asyncio.run(scenario())


def test_a_kill_the_launcher_cannot_take_is_done_directly(tmp_path):
    """While a launcher is stopping it reads no more messages: kill() then kills the program's
    process group itself instead of dropping the request (here the launcher is frozen, so
    only the direct kill can end the program)."""
    async def scenario() -> None:
        launcher = ProcessLauncher(1)
        process = await bounded(launcher.start(LONG_RUNNING, TaskPaths(str(tmp_path / "task")), ENV), "a start")
        launcher_process = launcher._connections[0]._process
        assert launcher_process is not None
        frozen = launcher_process.pid
        os.kill(frozen, signal.SIGSTOP)
        try:
            closing = asyncio.ensure_future(launcher.close())
            await eventually(lambda: launcher_process.stdin.is_closing(), "close() to close the launcher's input")
            process.kill()
            await eventually(lambda: not _alive(process.pid), "the program to be killed")
            assert _alive(frozen) and not closing.done()
        finally:
            os.kill(frozen, signal.SIGCONT)
        await bounded(closing, "close()")
        outcome = await gone_or_exit(process)
        assert outcome == -signal.SIGKILL or isinstance(outcome, LauncherGone), outcome

    asyncio.run(scenario())


# ---- through the service: tasks whose launcher dies run again ------------------------------------
def test_tasks_whose_launcher_is_killed_under_load_are_requeued_and_all_complete(tmp_path):
    """As a node agent restart on Azure: the killed programs' tasks go back to active (counted in
    requeueCount) and run again; no task is left `running` without a process."""
    with LocalBatchServer(str(tmp_path / "localbatch"), timings=fast_timings()) as server:
        with batch_client(server.url) as client:
            create_pool_and_wait(client, "launchers", nodes=2, task_slots_per_node=4)
            job_id = create_job(client, "launchers")
            client.create_tasks(job_id, [models.BatchTaskCreateOptions(
                id=f"t{n:03d}", command_line="/bin/bash -c 'sleep 0.3; echo done'") for n in range(120)])
            wait_for(lambda: len(list(client.list_tasks(job_id, filter="state eq 'running'"))) >= 4,
                     "tasks to run")
            launcher = server.service.context.agent._launcher  # pylint: disable=protected-access
            for connection in launcher._connections:  # pylint: disable=protected-access
                if connection._process is not None:  # pylint: disable=protected-access
                    os.kill(connection._process.pid, signal.SIGKILL)  # pylint: disable=protected-access
            wait_for_all_tasks(client, job_id, timeout=120)
            tasks = list(client.list_tasks(job_id))
            assert len(tasks) == 120
            assert all(t.execution_info.exit_code == 0 and t.execution_info.result == "success" for t in tasks), \
                [(t.id, t.execution_info.failure_info) for t in tasks if t.execution_info.result != "success"]
            assert sum(t.execution_info.requeue_count for t in tasks) >= 1, "the killed tasks were requeued"
            assert all(node.running_tasks_count == 0 for node in client.list_nodes("launchers"))
