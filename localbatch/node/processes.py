"""Run a task's program as a local process and learn of its exit without a thread per process.

The programs are started and reaped by the launcher (launcher.py), a companion process; here
is the emulator's side of it, plus command-line splitting and crash clean-up.

A launcher can die on its own (killed, out of memory). Its programs, started with setsid, would
run on unsupervised: so they are killed, every future still pending for them fails with
LauncherGone (which the caller takes for a node agent restart), and the next start spawns a new
launcher. No message to a launcher is ever dropped silently.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shlex
import signal
import sys
from typing import Mapping, Optional

from .launcher import ProgramNotFound, TaskDirectoryError
from .layout import TaskPaths


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
    """The launcher process ended while programs were starting or running.

    Its programs have been killed by then: none of them runs on unsupervised.
    """


LAUNCHER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
_LAUNCH_ERRORS = {"ProgramNotFound": ProgramNotFound, "PermissionError": PermissionError,
                  "TaskDirectoryError": TaskDirectoryError}
_CLOSE_TIMEOUT = 10.0  # seconds a stopping launcher gets to kill and reap its programs

logger = logging.getLogger(__name__)


class LaunchedProcess:
    """A program the launcher started; `exit_code` resolves to its exit status (negative: a signal).

    Both `started` and `exit_code` fail with LauncherGone if the launcher dies first.
    """

    def __init__(self, launch_id: int, launcher: "_Launcher", loop: asyncio.AbstractEventLoop, working_dir: str):
        self.launch_id = launch_id
        self.pid = 0
        self.working_dir = working_dir
        self.started: asyncio.Future[int] = loop.create_future()
        self.exit_code: asyncio.Future[int] = loop.create_future()
        self._launcher = launcher

    def kill(self) -> None:
        """Kill the whole process group (the task and whatever it started)."""
        if not self.exit_code.done():
            self._launcher.kill(self)


class ProcessLauncher:
    """Launcher processes, one per core (spawning blocks a launcher until the child has exec'd,
    so one cannot keep several cores busy); each start goes to the least busy.

    A launcher that dies (killed, crashed) takes its programs with it: they are killed, their
    futures fail with LauncherGone, and the next start in its slot spawns a new launcher.
    """

    def __init__(self, count: int = 0) -> None:
        self._connections = [_LauncherConnection() for _ in range(count or min(4, os.cpu_count() or 1))]

    async def start(self, argv: list[str], paths: TaskPaths, env: Mapping[str, str]) -> LaunchedProcess:
        """Start argv in the paths' working directory, its output in their stdout and stderr files.

        Raises ProgramNotFound, PermissionError, TaskDirectoryError or OSError as starting it did,
        and LauncherGone if the launcher died before the program was known to have started.
        """
        connection = min(self._connections, key=lambda c: c.running)
        return await connection.start(argv, paths, env)

    async def close(self) -> None:
        """Kill every program still running, and stop the launchers once they have reaped them."""
        await asyncio.gather(*(connection.close() for connection in self._connections))


class _LauncherConnection:
    """One slot for a launcher.py process: started on first use, and again on the first use
    after it died. A launcher that is dying finishes doing so on its own (see _Launcher)."""

    def __init__(self) -> None:
        self._launcher: Optional[_Launcher] = None
        self._launchers: set[_Launcher] = set()  # the current one and any still dying
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()
        self._waiting = 0  # starts waiting for a launcher to be spawned

    @property
    def _process(self) -> Optional[asyncio.subprocess.Process]:
        """The current launcher process, if any."""
        return self._launcher.process if self._launcher is not None else None

    @property
    def running(self) -> int:
        return self._waiting + (self._launcher.running if self._launcher is not None else 0)

    async def start(self, argv: list[str], paths: TaskPaths, env: Mapping[str, str]) -> LaunchedProcess:
        self._waiting += 1
        try:
            async with self._starting:  # one launcher, however many tasks start at once
                if self._launcher is None or not self._launcher.alive():
                    self._launcher = await _Launcher.spawn()
                    self._launchers.add(self._launcher)
                    self._launcher.reader.add_done_callback(
                        lambda _, launcher=self._launcher: self._launchers.discard(launcher))
                launcher = self._launcher
        finally:
            self._waiting -= 1
        return await launcher.start(next(self._ids), argv, paths, env)

    async def close(self) -> None:
        async with self._starting:  # a launcher being spawned is included
            launchers, self._launcher = list(self._launchers), None
        await asyncio.gather(*(launcher.close() for launcher in launchers))


class _Launcher:
    """One launcher.py process, from its start to its end: sends it starts and kills, resolves
    each program's futures from its replies, and cleans up after it if it dies.

    Its death is noticed when its output ends or a message cannot be written to it. Then each
    program it had is killed with its process group; a program whose start was sent but whose
    pid never came back is found by its working directory. Then every future still pending
    fails with LauncherGone.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.live: dict[int, LaunchedProcess] = {}  # started or starting, not yet exited
        self.dead = False  # no message can reach it any more
        self._closing = False  # close() asked it to stop
        self._ended = False  # its programs were dealt with
        self._reason = "its output ended"  # why it is taken for dead
        self._pidfd: Optional[int] = _pidfd_open(process.pid)  # signals it without a pid race
        self._start_time = _process_start_time(process.pid)
        self.reader = asyncio.get_running_loop().create_task(self._read_replies())

    @classmethod
    async def spawn(cls) -> "_Launcher":
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", LAUNCHER_SCRIPT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 20)
        return cls(process)

    @property
    def running(self) -> int:
        return 0 if self.dead else len(self.live)

    def alive(self) -> bool:
        """Whether a start can be sent to it; notices a death its reader has not seen yet."""
        if self.dead or self._closing:
            return False
        stdin = self.process.stdin
        if self.process.returncode is not None or stdin is None or stdin.is_closing():
            self._lost("its input closed")
            return False
        return True

    async def start(self, launch_id: int, argv: list[str], paths: TaskPaths, env: Mapping[str, str]) -> LaunchedProcess:
        process = LaunchedProcess(launch_id, self, asyncio.get_running_loop(), paths.working_dir)
        self.send({"op": "start", "id": launch_id, "argv": argv, "workingDir": paths.working_dir,
                   "stdout": paths.stdout, "stderr": paths.stderr, "env": dict(env)})
        self.live[launch_id] = process  # sent (or maybe sent): from here on its death covers it
        process.pid = await process.started
        return process

    def kill(self, process: LaunchedProcess) -> None:
        try:
            self.send({"op": "kill", "id": process.launch_id})
        except LauncherGone:
            if process.pid:
                _kill_group(process.pid)
            # else: its start is pending, and the launcher's end kills it by its working directory

    def send(self, message: dict) -> None:
        """Write a message to the launcher, or raise LauncherGone if it cannot be (never drops one)."""
        stdin = self.process.stdin
        if self.dead or self._closing or stdin is None or stdin.is_closing():
            if not self._closing:
                self._lost("its input closed")
            raise LauncherGone("the launcher process is gone")
        try:
            stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):  # (asyncio reports these by closing instead)
            self._lost("writing to it failed")
            raise LauncherGone("the launcher process is gone") from None
        if stdin.is_closing():  # the write failed (broken pipe): this message may be lost
            self._lost("writing to it failed")

    def _lost(self, reason: str) -> None:
        """It cannot take messages any more: make sure it is dead, so that its output ends and
        the reader cleans up (with the pids of every reply it managed to write)."""
        if self.dead:
            return
        self.dead = True
        self._reason = reason
        self._signal_launcher()

    async def _read_replies(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while (line := await stdout.readline()).endswith(b"\n"):
                self._on_reply(json.loads(line))
            # At its end; a line cut short is a reply the launcher was killed while writing.
            if self._closing and not self.dead:
                # Asked to stop, it kills and reaps its programs and exits with 0; otherwise it
                # died on the way and they may run on.
                await self.process.wait()
                if self.process.returncode == 0:
                    self._end("it was stopped", unexpected=False)
                    return
                if not self.dead:
                    self._reason = f"it exited with status {self.process.returncode} while stopping"
        except asyncio.CancelledError:
            self._end("its reader was cancelled", unexpected=True)
            raise
        except Exception as exc:  # a garbled reply: it cannot be trusted any more
            logger.exception("unreadable reply from the launcher process %d", self.process.pid)
            self._end(f"it sent an unreadable reply: {exc}", unexpected=True)
            return
        self._end(self._reason, unexpected=True)

    def _on_reply(self, reply: dict) -> None:
        process = self.live.get(reply["id"])
        if process is None:
            return
        # A waiter may have been cancelled (shutdown): its future is then done already.
        if "pid" in reply:
            process.pid = reply["pid"]
            _settle(process.started, result=reply["pid"])
        elif "exit" in reply:
            del self.live[reply["id"]]
            _settle(process.exit_code, result=reply["exit"])
        else:
            del self.live[reply["id"]]
            error = _LAUNCH_ERRORS.get(reply["error"], OSError)
            _settle(process.started, error=error(reply["errno"], reply["message"], reply["filename"] or None)
                    if reply["errno"] else error(reply["message"]))

    def _end(self, reason: str, unexpected: bool) -> None:
        """The launcher is gone: kill what it left running (unless it stopped as asked and did so
        itself), then fail every pending future."""
        if self._ended:
            return
        self._ended = True
        self.dead = True
        lost, self.live = list(self.live.values()), {}
        if unexpected:
            self._signal_launcher()  # normally dead already; this makes sure
            _kill_programs(lost, self.process.pid, self._start_time)
            logger.warning("the launcher process %d died unexpectedly (%s): %d program(s) lost and killed",
                           self.process.pid, reason, len(lost))
        gone = LauncherGone(f"the launcher process {'ended' if unexpected else 'stopped'} ({reason})")
        for process in lost:
            for future in (process.started, process.exit_code):
                _settle(future, error=gone)
                if not future.cancelled():
                    future.exception()  # a runner cancelled at shutdown never asks: no warning for it
        self._close_pidfd()

    async def close(self) -> None:
        """Stop the launcher: it kills and reaps every program still running, then exits."""
        self._closing = True
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        if not (await asyncio.wait([self.reader], timeout=_CLOSE_TIMEOUT))[0]:
            self._lost("it did not stop when asked")  # SIGKILL: its output ends, the reader cleans up
            if not (await asyncio.wait([self.reader], timeout=_CLOSE_TIMEOUT))[0]:
                self.reader.cancel()  # something else holds its output open
                self._end(self._reason, unexpected=True)
        try:
            await asyncio.wait_for(self.process.wait(), _CLOSE_TIMEOUT)  # reaped: it is dead by now
        except asyncio.TimeoutError:
            pass

    def _signal_launcher(self) -> None:
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already ended

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _settle(future: asyncio.Future, result: object = None, error: Optional[BaseException] = None) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_programs(programs: list[LaunchedProcess], launcher_pid: int, launcher_start_time: int) -> None:
    """Kill the programs of a launcher that died, with their process groups (the launcher
    started each with setsid: its pgid is its pid). One whose pid never came back may still
    have been started just before the launcher died: it is found by its working directory."""
    unknown = set()
    for program in programs:
        if program.pid:
            _kill_group(program.pid)
        else:
            unknown.add(os.path.realpath(program.working_dir))
    if unknown:
        _kill_processes_in(unknown, launcher_pid, launcher_start_time)


def _kill_processes_in(directories: set[str], launcher_pid: int, launcher_start_time: int) -> None:
    """Kill every process (and its group) whose working directory is one of `directories` and
    that started after the launcher did (an older one, such as a shell, is not the launcher's)."""
    own_pid, own_group = os.getpid(), os.getpgrp()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == own_pid:
            continue
        pid = int(name)
        try:
            if os.readlink(f"/proc/{pid}/cwd") not in directories:
                continue
            with open(f"/proc/{pid}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except OSError:  # ended meanwhile, or not ours to look at
            continue
        group, session, start_time = int(fields[2]), int(fields[3]), int(fields[19])
        if start_time < launcher_start_time:
            continue
        # A program is its own session's leader; one caught before its setsid is still in the
        # launcher's group; a program's child left in the directory is in its program's group.
        if group != own_group and group in (pid, launcher_pid, session):
            _kill_group(group)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _process_start_time(pid: int) -> int:
    """When a process started, in clock ticks since boot (as /proc shows it); 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return int(stat_file.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _pidfd_open(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)
    except OSError:  # an old kernel, or it has ended already
        return None


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


def kill_orphaned_groups(groups: list[int], environment: Optional[Mapping[str, str]] = None, rounds: int = 5) -> None:
    """Kill what is left of process groups whose leaders have exited and been reaped: the
    background processes (services, daemons) those programs started.

    A process whose pid is one of the groups' ids cannot be that group's leader any more: the
    number was given to a new process after the group emptied, so that group is left alone.
    `environment`: kill only processes started with these variables (a later start, when
    the numbers may have been reused since, makes sure a process is the task's).
    """
    wanted = set(groups)
    markers = [f"{name}={value}".encode() for name, value in (environment or {}).items()]
    for _ in range(rounds):  # members may fork while they are being killed
        members = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as stat_file:
                    fields = stat_file.read().rsplit(b")", 1)[1].split()
                state, group = fields[0], int(fields[2])
            except (OSError, IndexError, ValueError):
                continue
            if group in wanted and state != b"Z":
                members.append((int(name), group))
        reused = {group for pid, group in members if pid == group}
        members = [pid for pid, group in members if group not in reused and _started_with(pid, markers)]
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _started_with(pid: int, markers: list[bytes]) -> bool:
    """Whether the process was started with every NAME=value of `markers` in its environment."""
    if not markers:
        return True
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ_file:
            variables = set(environ_file.read().split(b"\0"))
    except OSError:
        return False
    return all(marker in variables for marker in markers)
