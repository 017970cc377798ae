"""The node agent: the environment of a node's programs, and running one program to its outcome.

Programs are exec'd directly, never through a shell, under the POSIX locale unless the task
sets one; the launchers (processes.py) start and reap them. The agent knows nothing of the
service: it is told what to run and answers with a `ProgramOutcome`.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, MutableMapping, Optional

from .. import wire
from . import agentlog, processes
from .agentlog import AgentLog
from .containerimages import ImageUnavailable
from .engines import DockerEngines, EngineError, docker_cli
from .layout import EnginePaths, NodeLayout, TaskPaths
from .outputfiles import OutputFileError, OutputFileUploader
from .resourcefiles import ResourceFileDownloader, ResourceFileError
from .storage_identity import NodeStorageCredential

logger = logging.getLogger(__name__)

# Variables a task inherits from the emulator's own environment; everything else is Batch's.
# What a task inherits from the emulator: the basics, and the CA bundle that makes the local
# stack's https (its development CA) trusted by the task's Python, curl and OpenSSL.
INHERITED_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "SYSTEMROOT", "SSL_CERT_FILE",
                       "REQUESTS_CA_BUNDLE")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How often a container just started is looked at until Docker says it runs (docker start is asynchronous).
CONTAINER_START_POLL = 0.05


@dataclass(frozen=True)
class Failure:
    category: str   # usererror | servererror
    code: str
    message: str
    details: tuple[tuple[str, str], ...] = ()

    def wire(self) -> dict:
        failure = {"category": self.category, "code": self.code, "message": self.message}
        if self.details:
            failure["details"] = [{"name": name, "value": value} for name, value in self.details]
        return failure


@dataclass(frozen=True)
class ProgramOutcome:
    """How one run of a program ended.

    `stop_reason` says the emulator ended it itself: terminate, requeue, timeout (wall clock),
    shutdown (the emulator stops), or agent_restart (its launcher died: run it again).
    """
    exit_code: Optional[int] = None
    failure: Optional[Failure] = None
    stop_reason: Optional[str] = None
    # containerInfo of a program run in a container: {containerId, state, error?} as Docker reports them.
    container_info: Optional[dict] = None

    @classmethod
    def agent_fault(cls, message: str) -> "ProgramOutcome":
        """The emulator itself failed to run the program: a server error, not the user's."""
        return cls(failure=Failure("servererror", "NodeAgentFailure", message))

    @classmethod
    def terminated(cls) -> "ProgramOutcome":
        return cls(failure=Failure("usererror", "TaskEnded", "The task was terminated."))

    @property
    def succeeded(self) -> bool:
        return self.failure is None

    @property
    def retriable(self) -> bool:
        """A non-zero exit, which maxTaskRetryCount retries (other failures are final)."""
        return self.failure is not None and self.failure.code == "FailureExitCode"

    def apply_to(self, info: MutableMapping) -> None:
        """Fold the outcome into an executionInfo / startTaskInfo."""
        info["endTime"] = wire.now_iso()
        info.pop("exitCode", None)
        info.pop("failureInfo", None)
        info.pop("containerInfo", None)
        if self.container_info is not None:
            info["containerInfo"] = dict(self.container_info)
        if self.exit_code is not None:
            info["exitCode"] = self.exit_code
        if self.failure is not None:
            info["failureInfo"] = self.failure.wire()
        info["result"] = "success" if self.succeeded else "failure"


@dataclass(frozen=True)
class NodeIdentity:
    """What a program learns about the node it runs on."""
    account_name: str
    account_url: str
    pool_id: str
    node_id: str
    is_dedicated: bool
    # What the node itself offers its programs, e.g. its managed identity endpoint.
    environment: Mapping[str, str] = field(default_factory=dict)
    docker_host: Optional[str] = None   # the node's engine, on a container pool
    # How Batch itself reaches Storage on this node as one of its pool's identities (identityReference).
    storage: Optional[NodeStorageCredential] = None


@dataclass(frozen=True)
class ContainerRun:
    """A program run in a container on the node's engine (a task's containerSettings)."""
    engine: EnginePaths
    image: str
    run_options: str = ""
    working_directory: str = "taskWorkingDirectory"   # or containerImageDefault
    # containerHostBatchBindMounts: (source, read only); empty: the whole node root, read-write.
    bind_mounts: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def from_settings(cls, engine: EnginePaths, settings: dict) -> "ContainerRun":
        """From a task's (or start task's) containerSettings, in their wire form."""
        mounts = tuple((mount["source"], bool(mount.get("isReadOnly")))
                       for mount in settings.get("containerHostBatchBindMounts") or [])
        return cls(engine, settings["imageName"], settings.get("containerRunOptions") or "",
                   settings.get("workingDirectory") or "taskWorkingDirectory", mounts)


# Variables of a task that are not passed into its container: the host's own, and the engine's address.
_HOST_ONLY_VARIABLES = (*INHERITED_VARIABLES, "DOCKER_HOST")


class NodeAgent:
    def __init__(self, layout: NodeLayout, downloader: ResourceFileDownloader,
                 launcher: Optional[processes.ProcessLauncher] = None, engines: Optional[DockerEngines] = None):
        self.layout = layout
        self.engines = engines
        self._downloader = downloader
        self._processes: dict[str, processes.LaunchedProcess] = {}  # program key -> process
        self._stop_reasons: dict[str, str] = {}
        self._starting: set[str] = set()  # programs being prepared, not yet running
        # Starts and reaps the programs in companion processes, which also hold every child
        # still running, so none outlives the emulator even if its runner was cancelled.
        self._launcher = launcher or processes.ProcessLauncher()
        self._uploader = OutputFileUploader()
        self.log = AgentLog(layout.agent_log)  # each node's agent-debug.log

    # ---- environment --------------------------------------------------------------------
    def node_environment(self, node: NodeIdentity) -> dict[str, str]:
        """What every program on the node sees (tasks, start tasks, SSH sessions): the one place
        that says what the node provides to its programs."""
        layout = self.layout
        root = layout.root(node.pool_id, node.node_id)
        startup = layout.startup(node.pool_id, node.node_id)
        env = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update({
            "AZ_BATCH_ACCOUNT_NAME": node.account_name,
            "AZ_BATCH_ACCOUNT_URL": node.account_url,
            "AZ_BATCH_POOL_ID": node.pool_id,
            "AZ_BATCH_NODE_ID": node.node_id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.is_dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": root,
            "AZ_BATCH_NODE_SHARED_DIR": layout.shared_dir(node.pool_id, node.node_id),
            "AZ_BATCH_NODE_STARTUP_DIR": startup.directory,
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR": startup.working_dir,
            "AZ_BATCH_NODE_MOUNTS_DIR": layout.mounts_dir(node.pool_id, node.node_id),
        })
        env.update(node.environment)  # what the node runtime adds (its managed identity endpoint, ...)
        if node.docker_host:
            env["DOCKER_HOST"] = node.docker_host
        return env

    def environment(self, node: NodeIdentity, paths: TaskPaths, settings: list[dict],
                    job_id: Optional[str] = None, task_id: Optional[str] = None) -> dict[str, str]:
        """A task's (or start task's) environment: the node's, its directories, its settings."""
        layout = self.layout
        env = self.node_environment(node)
        env.update({
            "AZ_BATCH_TASK_DIR": paths.directory,
            "AZ_BATCH_TASK_WORKING_DIR": paths.working_dir,
            "AZ_BATCH_TASK_USER": "_azbatch",
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        })
        if job_id is not None and task_id is not None:
            preparation = layout.job_preparation(node.pool_id, node.node_id, job_id)
            env["AZ_BATCH_JOB_ID"] = job_id
            env["AZ_BATCH_TASK_ID"] = task_id
            env["AZ_BATCH_JOB_PREP_DIR"] = preparation.directory
            env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = preparation.working_dir
        for setting in settings:
            env[setting["name"]] = setting.get("value") or ""
        return env

    # ---- running one program ----------------------------------------------------------
    async def run_program(self, key: str, command_line: str, resource_files: list[dict], paths: TaskPaths,
                          env: dict[str, str], timeout: Optional[float],
                          on_start: Optional[Callable[[int], None]] = None,
                          container: Optional[ContainerRun] = None,
                          storage: Optional[NodeStorageCredential] = None,
                          on_container: Optional[Callable[[dict], None]] = None) -> ProgramOutcome:
        """Download inputs, run the command line (in a container, when given one), and say how it ended.

        `on_start(pid)` is called once the program runs (after its inputs are downloaded);
        `on_container(containerInfo)` once Docker has started its container, if it has one.
        Never raises for anything the program or the node did; an emulator bug is reported as
        an agent fault so the task never holds its slot for ever.
        """
        self._starting.add(key)
        what = program_name(key, env)
        bound = agentlog.bind(self.log, env["AZ_BATCH_POOL_ID"], env["AZ_BATCH_NODE_ID"])
        if resource_files:
            agentlog.note(f"{what}: preparing ({len(resource_files)} resource file(s) to download)")

        def started(pid: int) -> None:
            agentlog.note(f"{what}: started, process {pid}" + (f" in container {container.image}" if container else ""))
            if on_start is not None:
                on_start(pid)
        outcome: Optional[ProgramOutcome] = None
        try:
            outcome = await self._run_program(key, command_line, resource_files, paths, env, timeout, started,
                                              container, storage, on_container)
            if container is not None and self.engines is not None:
                outcome = replace(outcome, container_info=await self._container_info(container.engine, key))
            return outcome
        except processes.LauncherGone as exc:
            logger.warning("the launcher of %s died (%s); the program runs again", key, exc)
            outcome = ProgramOutcome(stop_reason="agent_restart")
            return outcome
        except Exception:
            logger.exception("running %s failed inside the emulator", key)
            outcome = ProgramOutcome.agent_fault("The node agent failed while running the program; see the emulator's log.")
            return outcome
        finally:
            if outcome is not None:  # None: its runner was cancelled (localbatch stops)
                agentlog.note(*describe_outcome(what, outcome))
            agentlog.unbind(bound)
            self._starting.discard(key)
            self._stop_reasons.pop(key, None)
            if container is not None and self.engines is not None:
                await self.engines.docker(container.engine, "rm", "--force", container_name(key))

    async def _run_program(self, key: str, command_line: str, resource_files: list[dict], paths: TaskPaths,
                           env: dict[str, str], timeout: Optional[float],
                           on_start: Optional[Callable[[int], None]],
                           container: Optional[ContainerRun],
                           storage: Optional[NodeStorageCredential] = None,
                           on_container: Optional[Callable[[dict], None]] = None) -> ProgramOutcome:
        if resource_files:
            failed = await self.download_inputs(resource_files, paths.working_dir, paths.stderr, storage)
            if failed is not None:
                return failed
        if key in self._stop_reasons:  # stopped while its inputs were downloading
            return ProgramOutcome(stop_reason=self._stop_reasons[key])
        try:
            argv = processes.split_command_line(command_line)
        except processes.CommandLineError as exc:
            return ProgramOutcome(failure=Failure("usererror", "CommandLineInvalid", str(exc)))
        if container is not None:
            created = await self._create_container(key, container, argv, paths, env)
            if isinstance(created, ProgramOutcome):
                return created
            argv, env = created
            if key in self._stop_reasons:  # stopped while its container was being created
                return ProgramOutcome(stop_reason=self._stop_reasons[key])
        started = await self._start(argv, paths, env)
        if isinstance(started, ProgramOutcome):
            return started
        process = started
        self._processes[key] = process
        if key in self._stop_reasons:  # stopped while it was being started
            process.kill()
        elif on_start is not None:
            on_start(process.pid)
        timer = None
        if timeout is not None and timeout < 10 ** 8:
            timer = asyncio.get_running_loop().call_later(timeout, self.stop, key, "timeout")
        watcher = None
        if container is not None and on_container is not None and key not in self._stop_reasons:
            watcher = asyncio.ensure_future(self._report_started_container(container.engine, key, on_container))
        try:
            exit_code = await process.exit_code
        finally:
            if timer:
                timer.cancel()
            if watcher:
                watcher.cancel()
            self._processes.pop(key, None)
        return _outcome(128 - exit_code if exit_code < 0 else exit_code, self._stop_reasons.get(key))

    async def _report_started_container(self, engine: EnginePaths, key: str,
                                        on_container: Callable[[dict], None]) -> None:
        """Tell `on_container` about the program's container once Docker no longer calls it
        `created`; cancelled when the program ends first."""
        while True:
            info = await self._container_info(engine, key)
            if info is None:
                return
            if info["state"] != "created":
                on_container(info)
                return
            await asyncio.sleep(CONTAINER_START_POLL)

    async def _container_info(self, engine: EnginePaths, key: str) -> Optional[dict]:
        """The program's container as `docker inspect` describes it (None when it was never created)."""
        code, output = await self.engines.docker(engine, "container", "inspect", "--format",
                                                 "{{json .Id}} {{json .State.Status}} {{json .State.Error}}",
                                                 container_name(key))
        if code != 0:
            return None
        try:
            container_id, state, error = (json.loads(part) for part in output.strip().split(" ", 2))
        except ValueError:
            logger.warning("docker inspect of %s answered %r", container_name(key), output[-200:])
            return None
        info = {"containerId": container_id, "state": state}
        if error:
            info["error"] = error
        return info

    async def download_inputs(self, resource_files: list[dict], directory: str, stderr: str,
                              storage: Optional[NodeStorageCredential] = None) -> Optional[ProgramOutcome]:
        """Download resource files into `directory` (made if missing), through `storage` where they
        name an identity; the outcome of a program that cannot start when that fails (the reason
        also goes to `stderr`), None when they are all there."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, os.makedirs, directory, 0o777, True)
        except OSError as exc:
            return ProgramOutcome.agent_fault(f"cannot create the task directory: {exc}")
        try:
            await self._downloader.download_all(resource_files, directory, storage)
        except ResourceFileError as exc:
            _append_text(stderr, exc.message + "\n")
            return ProgramOutcome(failure=Failure("usererror", exc.code, exc.message))
        except Exception:
            logger.exception("downloading resource files into %s failed inside the emulator", directory)
            return ProgramOutcome.agent_fault("The node agent failed while downloading resource files; "
                                              "see the emulator's log.")
        return None

    async def _create_container(self, key: str, container: ContainerRun, argv: list[str], paths: TaskPaths,
                                env: dict[str, str]):
        """Provide the image and create the task's container, as Batch does before it starts one.

        Returns the docker client command that runs it attached (its exit code is the
        container's) and that command's environment, or the outcome of a task that cannot start.
        """
        engine, name = container.engine, container_name(key)
        if self.engines is None or not self.engines.running(engine):
            return _invalid_settings(container, "The node has no container engine: its pool has no "
                                                "virtualMachineConfiguration.containerConfiguration.")
        try:
            await asyncio.get_running_loop().run_in_executor(None, os.makedirs, paths.working_dir, 0o777, True)
            await self.engines.provide_image(engine, container.image)
        except ImageUnavailable as exc:
            _append_text(paths.stderr, f"{exc}\n")
            return ProgramOutcome(failure=Failure(
                "usererror", "ContainerInvalidImage", "One or more container images specified are invalid",
                (("ContainerImage", container.image), ("Message", str(exc)))))
        except (EngineError, OSError) as exc:
            return ProgramOutcome.agent_fault(f"The node's container engine failed: {exc}")
        try:
            run_options = processes.split_command_line(container.run_options) if container.run_options.strip() else []
        except processes.CommandLineError as exc:
            return _invalid_settings(container, str(exc))
        create = ["create", "--name", name, *self._container_volumes(container, paths, env)]
        if not any(option.split("=")[0] in ("--network", "--net") for option in run_options):
            create += ["--network", "host"]  # engines have no bridge: the node's own network
        if container.working_directory != "containerImageDefault":
            create += ["--workdir", paths.working_dir]
        passed = {variable: value for variable, value in env.items() if variable not in _HOST_ONLY_VARIABLES}
        for variable in passed:
            create += ["--env", variable]  # the value comes from the client's environment, never its arguments
        await self.engines.docker(engine, "rm", "--force", name)  # left by an earlier run of this task
        code, output = await self.engines.docker(engine, *create, *run_options, container.image, *argv,
                                                 environment=passed)
        if code != 0:
            return _invalid_settings(container, output.strip())
        return [docker_cli(), "--host", engine.docker_host, "start", "--attach", name], \
            {"PATH": DEFAULT_PATH, "DOCKER_CONFIG": self.engines.client_config(engine)}

    def _container_volumes(self, container: ContainerRun, paths: TaskPaths, env: dict[str, str]) -> list[str]:
        """The node root at the same path, read-write, as on a Linux node; or only the Batch data
        paths the task's containerHostBatchBindMounts name."""
        if not container.bind_mounts:
            root = env["AZ_BATCH_NODE_ROOT_DIR"]
            return ["--volume", f"{root}:{root}"]
        volumes = []
        for source, read_only in container.bind_mounts:
            path = self.layout.container_data_path(env["AZ_BATCH_POOL_ID"], env["AZ_BATCH_NODE_ID"], source, paths,
                                                   env.get("AZ_BATCH_JOB_ID"))
            if path is not None:  # docker creates a source that does not exist yet
                volumes += ["--volume", f"{path}:{path}{':ro' if read_only else ''}"]
        return volumes

    async def _start(self, argv: list[str], paths: TaskPaths, env: dict[str, str]):
        """The started process, or the outcome of a program that could not start."""
        def user_error(code: str, message: str) -> ProgramOutcome:
            return ProgramOutcome(failure=Failure("usererror", code, message))
        try:
            return await self._launcher.start(argv, paths, env)
        except processes.ProgramNotFound as exc:
            return user_error("CommandProgramNotFound", f"The specified command program is not found: {exc}")
        except PermissionError as exc:
            return user_error("CommandProgramNotExecutable", str(exc))
        except processes.TaskDirectoryError as exc:
            return ProgramOutcome.agent_fault(f"cannot create the task directory: {exc}")
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:  # e.g. a script without a #! line: the user's to fix
                return user_error("CommandProgramNotExecutable",
                                  f"The program cannot be executed: {exc.strerror}: {exc.filename}")
            return ProgramOutcome.agent_fault(f"cannot start the process: {exc}")

    async def upload_output_files(self, output_files: list[dict], outcome: ProgramOutcome,
                                  paths: TaskPaths, storage: Optional[NodeStorageCredential] = None) -> ProgramOutcome:
        """Upload the output files that apply once the process has exited; a failed upload makes the
        task fail with a FileUpload... failure (keeping its exit code), as on Azure."""
        if not output_files or outcome.exit_code is None or outcome.stop_reason not in (None, "timeout"):
            return outcome
        try:
            await self._uploader.upload_all(output_files, outcome.exit_code, paths, storage)
        except OutputFileError as exc:
            return ProgramOutcome(outcome.exit_code, Failure("usererror", exc.code, exc.message), outcome.stop_reason)
        except OSError as exc:
            return ProgramOutcome(outcome.exit_code, Failure("usererror", "FileUploadMiscError",
                                                             f"Could not upload the output files: {exc.strerror or exc}"),
                                  outcome.stop_reason)
        return outcome

    def stop(self, key: str, reason: str) -> bool:
        """Kill a running program and remember why.

        True when a process was running: its runner then reports the outcome. False otherwise;
        a program still being prepared is stopped as soon as it would start, and the caller
        does the bookkeeping itself.
        """
        process = self._processes.get(key)
        if process is not None:
            self._stop_reasons[key] = reason
            process.kill()
            return True
        if key in self._starting:
            self._stop_reasons[key] = reason
        return False

    async def close(self) -> None:
        """Kill every program still running (including ones whose runner was cancelled) and reap it."""
        for key in list(self._processes):
            self.stop(key, "shutdown")
        await self._launcher.close()
        await self._downloader.close()
        await self._uploader.close()
        self.log.close()


def _outcome(exit_code: int, reason: Optional[str]) -> ProgramOutcome:
    if reason == "timeout":
        failure = Failure("usererror", "MaxWallClockTimeExpiry",
                          "The task exceeded its maximum wall clock time and was terminated.")
    elif reason == "terminate":
        failure = Failure("usererror", "TaskEnded", "The task was terminated.")
    elif exit_code != 0:
        failure = Failure("usererror", "FailureExitCode", "The task exited with an exit code representing a failure")
    else:
        failure = None
    return ProgramOutcome(exit_code, failure, reason)


def program_name(key: str, env: Mapping[str, str]) -> str:
    """What a program is, as the agent log names it (from its key and the ids in its environment)."""
    kind = key.partition(":")[0]
    job_id, task_id = env.get("AZ_BATCH_JOB_ID"), env.get("AZ_BATCH_TASK_ID")
    if kind == "start" or not (job_id and task_id):
        return "start task" if kind == "start" else f"program {key}"
    if kind in ("jobpreparation", "jobrelease"):
        return f"job {'preparation' if kind == 'jobpreparation' else 'release'} task {task_id} of job {job_id}"
    if kind == "coordination":  # a multi-instance task's coordination command, on one of its instances
        return f"coordination command of task {job_id}/{task_id} (instance {key.rpartition(':')[2]})"
    return f"task {job_id}/{task_id}"


def describe_outcome(what: str, outcome: ProgramOutcome) -> tuple[str, str]:
    """The agent log's line (and its level) for how a program run ended."""
    parts = []
    if outcome.exit_code is not None:
        parts.append(f"exit code {outcome.exit_code}")
    if outcome.stop_reason:
        parts.append({"terminate": "terminated", "requeue": "stopped to be requeued",
                      "timeout": "stopped at its maximum wall clock time", "shutdown": "stopped (node or localbatch stops)",
                      "agent_restart": "its launcher died: it runs again"}.get(outcome.stop_reason, outcome.stop_reason))
    if outcome.failure is not None:
        failure = outcome.failure
        parts.append(f"failure {failure.category} {failure.code}: {failure.message}")
    level = "INFO" if outcome.failure is None else "ERROR" if outcome.failure.category == "servererror" else "WARNING"
    return f"{what}: ended, {', '.join(parts) or 'success'}", level


def container_name(key: str) -> str:
    """The name of a program's container on its node's engine (one at a time per program)."""
    return "batch-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _invalid_settings(container: ContainerRun, message: str) -> ProgramOutcome:
    return ProgramOutcome(failure=Failure(
        "usererror", "ContainerInvalidSettings", "At least one value of specified task container settings is invalid",
        (("ContainerSettings", container.run_options), ("Message", message[-1000:]))))


def _append_text(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
