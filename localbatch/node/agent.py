"""The node agent: node directories, the task environment, start tasks and task processes.

Each node is a directory with the layout of a real Linux Batch node. Programs are exec'd
directly, never through a shell, under the POSIX locale unless the task sets one.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from typing import TYPE_CHECKING, Callable, Optional

from . import processes
from .. import wire
from .resourcefiles import ResourceFileDownloader, ResourceFileError

if TYPE_CHECKING:
    from ..entities import Job, Node, Pool, Task
    from ..service import BatchService

logger = logging.getLogger(__name__)

NODE_SUBDIRECTORIES = ("shared", "startup", "workitems", "applications", "fsmounts", "volatile")
# Variables a task inherits from the emulator's own environment; everything else is Batch's.
INHERITED_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "SYSTEMROOT")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EmulatorFault(Exception):
    """The emulator could not do its part (not the task's fault)."""


class NodeAgent:
    def __init__(self, service: "BatchService", nodes_dir: str, downloader: ResourceFileDownloader):
        self._service = service
        self._nodes_dir = nodes_dir
        self._downloader = downloader
        self.processes: dict[str, processes.LaunchedProcess] = {}  # task key or "start:<node key>"
        self.stop_reasons: dict[str, str] = {}
        self._starting: set[str] = set()  # programs being prepared, not yet running
        # Starts and reaps the programs in a companion process; it also holds every child
        # still running, so none outlives the emulator even if its runner was cancelled.
        self._launcher = processes.ProcessLauncher()

    # ---- layout -------------------------------------------------------------------------
    def node_root(self, node: "Node") -> str:
        return os.path.join(self._nodes_dir, node.pool_id.lower(), node.id)

    def task_dir(self, node: "Node", job_id: str, task_id: str) -> str:
        return os.path.join(self.node_root(node), "workitems", job_id, "job-1", task_id)

    def prepare_node_directories(self, node: "Node") -> None:
        root = self.node_root(node)
        for name in NODE_SUBDIRECTORIES:
            os.makedirs(os.path.join(root, name), exist_ok=True)

    def remove_node_directories(self, pool_id: str, node_id: Optional[str] = None) -> None:
        path = os.path.join(self._nodes_dir, pool_id.lower(), *( [node_id] if node_id else []))
        shutil.rmtree(path, ignore_errors=True)

    def job_directories(self, pool: "Pool", job_id: str) -> list[str]:
        """The job's directory on each node (read on the loop: pool.nodes changes there)."""
        return [os.path.join(self.node_root(node), "workitems", job_id) for node in pool.nodes.values()]

    @staticmethod
    def remove_directories(paths: list[str]) -> None:
        """Blocking; run it on an executor."""
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    # ---- environment ------------------------------------------------------------------
    def environment(self, node: "Node", task_dir: str, extra: list[dict],
                    job: Optional["Job"] = None, task: Optional["Task"] = None) -> dict[str, str]:
        root = self.node_root(node)
        env = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update({
            "AZ_BATCH_ACCOUNT_NAME": self._service.account_name,
            "AZ_BATCH_ACCOUNT_URL": self._service.base_url,
            "AZ_BATCH_POOL_ID": node.pool_id,
            "AZ_BATCH_NODE_ID": node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.data.get("isDedicated", True) else "false",
            "AZ_BATCH_NODE_ROOT_DIR": root,
            "AZ_BATCH_NODE_SHARED_DIR": os.path.join(root, "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": os.path.join(root, "startup"),
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR": os.path.join(root, "startup", "wd"),
            "AZ_BATCH_NODE_MOUNTS_DIR": os.path.join(root, "fsmounts"),
            "AZ_BATCH_TASK_DIR": task_dir,
            "AZ_BATCH_TASK_WORKING_DIR": os.path.join(task_dir, "wd"),
            "AZ_BATCH_TASK_USER": "_azbatch",
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        })
        if job is not None and task is not None:
            env["AZ_BATCH_JOB_ID"] = job.id
            env["AZ_BATCH_TASK_ID"] = task.id
            env["AZ_BATCH_JOB_PREP_DIR"] = os.path.join(root, "workitems", job.id, "job-1", "jobpreparation")
            env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = os.path.join(env["AZ_BATCH_JOB_PREP_DIR"], "wd")
            settings = [*(job.data.get("commonEnvironmentSettings") or []), *extra]
        else:
            settings = extra
        for setting in settings:
            env[setting["name"]] = setting.get("value") or ""
        return env

    # ---- running one program ----------------------------------------------------------
    async def run_program(self, key: str, command_line: str, resource_files: list[dict],
                          task_dir: str, env: dict[str, str], timeout: Optional[float],
                          on_start: Optional[Callable[[int], None]] = None) -> dict:
        """Download inputs, run the command line, and describe the outcome as executionInfo fields.

        `on_start(pid)` is called once the program runs (after its inputs are downloaded).
        Returns a dict with `exitCode` and/or `failureInfo`, plus `stopReason` when the emulator
        stopped the process itself (terminate, requeue, wall-clock limit).
        """
        self._starting.add(key)
        try:
            return await self._run_program(key, command_line, resource_files, task_dir, env, timeout, on_start)
        finally:
            self._starting.discard(key)
            self.stop_reasons.pop(key, None)

    async def _run_program(self, key: str, command_line: str, resource_files: list[dict],
                           task_dir: str, env: dict[str, str], timeout: Optional[float],
                           on_start: Optional[Callable[[int], None]]) -> dict:
        working_dir = os.path.join(task_dir, "wd")
        loop = asyncio.get_running_loop()
        if resource_files:
            await loop.run_in_executor(None, _make_directory, working_dir)
            try:
                await self._downloader.download_all(resource_files, working_dir)
            except ResourceFileError as exc:
                _write_text(os.path.join(task_dir, "stderr.txt"), exc.message + "\n")
                return {"failureInfo": _failure("usererror", exc.code, exc.message)}
        try:
            argv = processes.split_command_line(command_line)
            process = await self._launcher.start(argv, task_dir, env)
        except processes.CommandLineError as exc:
            return {"failureInfo": _failure("usererror", "CommandLineInvalid", str(exc))}
        except processes.ProgramNotFound as exc:
            return {"failureInfo": _failure("usererror", "CommandProgramNotFound",
                                            f"The specified command program is not found: {exc}")}
        except PermissionError as exc:
            return {"failureInfo": _failure("usererror", "CommandProgramNotExecutable", str(exc))}
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:  # e.g. a script without a #! line: the user's to fix
                return {"failureInfo": _failure("usererror", "CommandProgramNotExecutable",
                                                f"The program cannot be executed: {exc.strerror}: {exc.filename}")}
            raise EmulatorFault(f"cannot start the process: {exc}") from exc
        except processes.LauncherGone as exc:
            raise EmulatorFault(str(exc)) from exc
        self.processes[key] = process
        if key in self.stop_reasons:  # stopped while it was being started
            process.kill()
        elif on_start is not None:
            on_start(process.pid)
        timer = None
        if timeout is not None and timeout < 10 ** 8:
            timer = asyncio.get_running_loop().call_later(timeout, self.stop, key, "timeout")
        try:
            exit_code = await process.exit_code
        except processes.LauncherGone as exc:
            raise EmulatorFault(f"lost track of the task's process: {exc}") from exc
        finally:
            if timer:
                timer.cancel()
            self.processes.pop(key, None)
        reason = self.stop_reasons.get(key)
        outcome: dict = {"exitCode": 128 - exit_code if exit_code < 0 else exit_code}
        if reason:
            outcome["stopReason"] = reason
        if reason == "timeout":
            outcome["failureInfo"] = _failure("usererror", "MaxWallClockTimeExpiry",
                                              "The task exceeded its maximum wall clock time and was terminated.")
        elif reason == "terminate":
            outcome["failureInfo"] = _failure("usererror", "TaskEnded", "The task was terminated.")
        elif outcome["exitCode"] != 0:
            outcome["failureInfo"] = _failure("usererror", "FailureExitCode",
                                              "The task exited with an exit code representing a failure")
        return outcome

    def stop(self, key: str, reason: str) -> bool:
        """Kill a running program and remember why.

        True when a process was running: its runner then reports the outcome. False otherwise;
        a program still being prepared is killed as soon as it starts, and the caller does the
        bookkeeping itself.
        """
        process = self.processes.get(key)
        if process is not None:
            self.stop_reasons[key] = reason
            process.kill()
            return True
        if key in self._starting:
            self.stop_reasons[key] = reason
        return False

    def stop_all(self, reason: str) -> None:
        for key in list(self.processes):
            self.stop(key, reason)

    async def close(self) -> None:
        """Kill every program still running (including ones whose runner was cancelled) and reap it."""
        self.stop_all("shutdown")
        await self._launcher.close()
        await self._downloader.close()


def _make_directory(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise EmulatorFault(f"cannot create the task directory: {exc}") from exc


def _failure(category: str, code: str, message: str) -> dict:
    return {"category": category, "code": code, "message": message}


def _write_text(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def execution_times(info: dict, outcome: dict) -> dict:
    """Fold a program outcome into an executionInfo/startTaskInfo dict."""
    info["endTime"] = wire.now_iso()
    info.pop("exitCode", None)
    info.pop("failureInfo", None)
    if "exitCode" in outcome:
        info["exitCode"] = outcome["exitCode"]
    if "failureInfo" in outcome:
        info["failureInfo"] = outcome["failureInfo"]
    info["result"] = "failure" if "failureInfo" in outcome else "success"
    return info
