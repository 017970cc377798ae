"""The launcher: a small companion process that starts task programs and reaps them.

fork/exec is the most expensive step of a short task. Done in the emulator's own process it
either stalls the event loop or, on threads, fights the loop for the GIL; in this separate
process it runs truly beside the emulator. The launcher uses only the standard library and
runs as a plain script, so it starts in milliseconds.

Protocol: one JSON object per line.
  in:  {"op": "start", "id": N, "argv": [...], "workingDir": DIR, "stdout": FILE, "stderr": FILE, "env": {...}}
       {"op": "kill", "id": N}            SIGKILL the program's process group, if still running
  out: {"id": N, "pid": P}                 started
       {"id": N, "error": KIND, "errno": E, "message": TEXT}   could not start
       {"id": N, "exit": CODE}             exited (negative: killed by that signal)
When its input closes (the emulator stopped or died) it kills every program still running,
reaps them and exits, so no task outlives the emulator that started it.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import sys
from typing import Optional

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProgramNotFound(FileNotFoundError):
    """The command's program is neither on PATH nor in the working directory."""


class TaskDirectoryError(OSError):
    """The task's working directory could not be created (the emulator's fault, not the task's)."""


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


def start_program(argv: list[str], working_dir: str, stdout: str, stderr: str, env: dict[str, str]) -> int:
    """Make the working directory, resolve the program and start it with its output in files.

    Returns the pid. posix_spawn (vfork and exec in one call) is several times cheaper than
    subprocess.Popen; the launcher is single-threaded, so it can chdir into the working
    directory for the child to inherit.
    """
    try:
        os.makedirs(working_dir, exist_ok=True)
    except OSError as exc:
        raise TaskDirectoryError(exc.errno, f"cannot create the task directory: {exc.strerror}", working_dir) from None
    program = resolve_program(argv[0], env.get("PATH", DEFAULT_PATH), working_dir)
    output_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.chdir(working_dir)
    try:
        return os.posix_spawn(program, argv, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, stdout, output_flags, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, stderr, output_flags, 0o644),
        ])
    finally:
        os.chdir("/")


def _error_kind(exc: OSError) -> str:
    return type(exc).__name__ if isinstance(exc, (ProgramNotFound, TaskDirectoryError, PermissionError)) else "OSError"


class Launcher:
    def __init__(self, input_fd: int = 0, output_fd: int = 1):
        self._input_fd = input_fd
        self._output_fd = output_fd
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, tuple[int, int]] = {}  # id -> (pid, pidfd)
        self._pending_input = b""
        self._replies: list[bytes] = []

    def run(self) -> None:
        os.set_blocking(self._input_fd, False)
        self._selector.register(self._input_fd, selectors.EVENT_READ, None)
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    if not self._read_requests():
                        self._shut_down()
                        return
                else:
                    self._reap(key.data)
            self._flush()

    def _read_requests(self) -> bool:
        try:
            chunk = os.read(self._input_fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        lines = (self._pending_input + chunk).split(b"\n")
        self._pending_input = lines.pop()
        for line in lines:
            if line.strip():
                self._handle(json.loads(line))
        return True

    def _handle(self, request: dict) -> None:
        request_id = request["id"]
        if request["op"] == "kill":
            child = self._children.get(request_id)
            if child is not None:
                _kill_group(child[0])
            return
        try:
            pid = start_program(request["argv"], request["workingDir"], request["stdout"], request["stderr"],
                                request["env"])
        except OSError as exc:
            self._reply({"id": request_id, "error": _error_kind(exc), "errno": exc.errno or 0,
                         "message": exc.strerror or str(exc), "filename": str(exc.filename or "")})
            return
        pidfd = os.pidfd_open(pid)
        self._children[request_id] = (pid, pidfd)
        self._selector.register(pidfd, selectors.EVENT_READ, request_id)
        self._reply({"id": request_id, "pid": pid})

    def _reap(self, request_id: int) -> None:
        pid, pidfd = self._children.pop(request_id)
        self._selector.unregister(pidfd)
        os.close(pidfd)
        self._reply({"id": request_id, "exit": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])})

    def _reply(self, message: dict) -> None:
        self._replies.append(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def _flush(self) -> None:
        data, self._replies = b"".join(self._replies), []
        while data:
            try:
                written = os.write(self._output_fd, data)
            except BrokenPipeError:
                return  # the emulator is gone; the shutdown on input EOF follows
            data = data[written:]

    def _shut_down(self) -> None:
        for pid, pidfd in self._children.values():
            _kill_group(pid)
            os.waitpid(pid, 0)
            os.close(pidfd)
        self._children.clear()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: Optional[list[str]] = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the emulator decides when tasks end
    Launcher().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
