"""Run a task's program as a local process and learn of its exit without a thread per process.

The programs are started and reaped by the launcher (launcher.py), a companion process; here
is the emulator's side of it, plus command-line splitting and crash clean-up.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import shlex
import signal
import sys
from typing import Mapping, Optional

from .launcher import ProgramNotFound, TaskDirectoryError


class CommandLineError(ValueError):
    """The command line cannot be turned into a program and its arguments."""


def split_command_line(command_line: str) -> list[str]:
    """Split like the Linux node agent: quotes group words; no variables, globs or operators."""
    try:
        argv = shlex.split(command_line, posix=True)
    except ValueError as exc:
        raise CommandLineError(f"the command line cannot be parsed: {exc}") from None
    if not argv:
        raise CommandLineError("the command line is empty")
    return argv


class LauncherGone(RuntimeError):
    """The launcher process ended while programs were starting or running."""


LAUNCHER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
_LAUNCH_ERRORS = {"ProgramNotFound": ProgramNotFound, "PermissionError": PermissionError,
                  "TaskDirectoryError": TaskDirectoryError}


class LaunchedProcess:
    """A program the launcher started; `exit_code` resolves to its exit status (negative: a signal)."""

    def __init__(self, launch_id: int, launcher: "_LauncherConnection", loop: asyncio.AbstractEventLoop):
        self.launch_id = launch_id
        self.pid = 0
        self.started: asyncio.Future[int] = loop.create_future()
        self.exit_code: asyncio.Future[int] = loop.create_future()
        self._launcher = launcher

    def kill(self) -> None:
        """Kill the whole process group (the task and whatever it started)."""
        if not self.exit_code.done():
            self._launcher.send({"op": "kill", "id": self.launch_id})


class ProcessLauncher:
    """Launcher processes, one per core (spawning blocks a launcher until the child has exec'd,
    so one cannot keep several cores busy); each start goes to the least busy."""

    def __init__(self, count: int = 0) -> None:
        self._connections = [_LauncherConnection() for _ in range(count or min(4, os.cpu_count() or 1))]

    async def start(self, argv: list[str], task_dir: str, env: Mapping[str, str]) -> LaunchedProcess:
        """Start argv in task_dir/wd with stdout.txt and stderr.txt in task_dir.

        Raises ProgramNotFound, PermissionError, TaskDirectoryError or OSError as starting it did.
        """
        connection = min(self._connections, key=lambda c: c.running)
        return await connection.start(argv, task_dir, env)

    async def close(self) -> None:
        """Kill every program still running, and stop the launchers once they have reaped them."""
        await asyncio.gather(*(connection.close() for connection in self._connections))


class _LauncherConnection:
    """One launcher.py process: started on first use; sends starts and kills, and resolves
    each process's futures from the replies."""

    def __init__(self) -> None:
        self._process: Optional[asyncio.subprocess.Process] = None
        self._reader: Optional[asyncio.Task] = None
        self._live: dict[int, LaunchedProcess] = {}
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()

    @property
    def running(self) -> int:
        return len(self._live)

    async def start(self, argv: list[str], task_dir: str, env: Mapping[str, str]) -> LaunchedProcess:
        async with self._starting:  # one launcher, however many tasks start at once
            if self._process is None or self._process.returncode is not None:
                await self._start_launcher()
        process = LaunchedProcess(next(self._ids), self, asyncio.get_running_loop())
        self._live[process.launch_id] = process
        self.send({"op": "start", "id": process.launch_id, "argv": argv, "taskDir": task_dir, "env": dict(env)})
        process.pid = await process.started
        return process

    def send(self, message: dict) -> None:
        if self._process is not None and self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def _start_launcher(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", LAUNCHER_SCRIPT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 20)
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(self._process))

    async def _read_replies(self, launcher: asyncio.subprocess.Process) -> None:
        assert launcher.stdout is not None
        while True:
            line = await launcher.stdout.readline()
            if not line:
                break
            reply = json.loads(line)
            process = self._live.get(reply["id"])
            if process is None:
                continue
            # A waiter may have been cancelled (shutdown): its future is then done already.
            if "pid" in reply:
                _settle(process.started, result=reply["pid"])
            elif "exit" in reply:
                del self._live[reply["id"]]
                _settle(process.exit_code, result=reply["exit"])
            else:
                del self._live[reply["id"]]
                error = _LAUNCH_ERRORS.get(reply["error"], OSError)
                _settle(process.started, error=error(reply["errno"], reply["message"], reply["filename"] or None)
                        if reply["errno"] else error(reply["message"]))
        gone = LauncherGone("the launcher process exited")
        for process in self._live.values():
            for future in (process.started, process.exit_code):
                _settle(future, error=gone)
                if not future.cancelled():
                    future.exception()  # a runner cancelled at shutdown never asks: no warning for it
        self._live.clear()

    async def close(self) -> None:
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()  # the launcher kills and reaps what runs, then exits
        await self._process.wait()
        if self._reader is not None:
            await self._reader
        self._process = None


def _settle(future: asyncio.Future, result: object = None, error: Optional[BaseException] = None) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def kill_leftover_process_group(pid: int, expected_cwd: str) -> bool:
    """Kill a process left by an earlier run of the emulator, if it is still the task we started.

    The check on the working directory protects against a recycled pid.
    """
    try:
        if os.readlink(f"/proc/{pid}/cwd") != os.path.realpath(expected_cwd):
            return False
        os.killpg(pid, signal.SIGKILL)
        return True
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
