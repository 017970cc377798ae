"""Run a task's program as a local process and learn of its exit without a thread per process.

Each child is watched through a pidfd registered with the event loop, so thousands of short
processes cost one file descriptor each while they run and nothing once they exit.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
from typing import Mapping, Optional


class CommandLineError(ValueError):
    """The command line cannot be turned into a program and its arguments."""


class ProgramNotFound(FileNotFoundError):
    """The command's program is neither on PATH nor in the working directory."""


def split_command_line(command_line: str) -> list[str]:
    """Split like the Linux node agent: quotes group words; no variables, globs or operators."""
    try:
        argv = shlex.split(command_line, posix=True)
    except ValueError as exc:
        raise CommandLineError(f"the command line cannot be parsed: {exc}") from None
    if not argv:
        raise CommandLineError("the command line is empty")
    return argv


def resolve_program(program: str, search_path: str, working_dir: str) -> str:
    """A bare program name is looked up on PATH, then in the working directory, as on a node."""
    if "/" in program:
        candidate = program if os.path.isabs(program) else os.path.join(working_dir, program)
        if os.path.isfile(candidate):
            return candidate
        raise ProgramNotFound(program)
    for directory in [*filter(None, search_path.split(os.pathsep)), working_dir]:
        candidate = os.path.join(directory, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ProgramNotFound(program)


class ManagedProcess:
    """A started child process; `exit_code` resolves to its exit status (negative: killed by a signal)."""

    def __init__(self, popen: subprocess.Popen, loop: asyncio.AbstractEventLoop):
        self.pid = popen.pid
        self._popen = popen
        self._loop = loop
        self.exit_code: asyncio.Future[int] = loop.create_future()
        self.killed = False
        self._pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = code
        if not self.exit_code.done():
            self.exit_code.set_result(code)

    def kill(self) -> None:
        """Kill the whole process group (the task and whatever it started)."""
        if self.exit_code.done():
            return
        self.killed = True
        kill_process_group(self.pid)


def kill_process_group(pid: int) -> None:
    """SIGKILL a child's process group (its session: the child and whatever it started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(argv: list[str], working_dir: str, env: Mapping[str, str],
          stdout_path: str, stderr_path: str) -> subprocess.Popen:
    """Start argv (program already resolved) with output going straight to the two files.

    Blocking but thread-safe: the node agent calls it from a small fixed pool of spawner
    threads, so fork/exec never stalls the event loop.
    """
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        return subprocess.Popen(argv, cwd=working_dir, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, start_new_session=True, close_fds=True)


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
