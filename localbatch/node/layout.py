"""Where everything of a node lives on disk: the one module that builds a node's paths.

A node is a directory with the layout of a real Linux Batch node:

    <nodes dir>/<pool>/<node id>/          AZ_BATCH_NODE_ROOT_DIR
        shared/  startup/{stdout.txt, stderr.txt, wd/}  applications/  fsmounts/  volatile/
        workitems/<job>/job-1/<task>/{stdout.txt, stderr.txt, wd/, fileuploadout.txt, fileuploaderr.txt}
        workitems/<job>/job-1/{jobpreparation, jobrelease}/   the job's preparation and release tasks
    <nodes dir>/<pool>/<node id>.home/<user>/   a node user's home (/home/<user>; SSH sessions start there)

Node file names in the API are relative to the node root; task file names to the task directory.

A node of a container pool also has a Docker engine. Its data (images, containers, swarm
state) lives beside the node, outside what the node files API shows, as /var/lib/docker is
outside /mnt/batch/tasks on a real node:

    <nodes dir>/<pool>/.engines/<node id>/{data/, dockerd.pid, dockerd.log}

and its runtime state (exec root, socket) under /run, where unix socket paths stay short:

    /run/localbatch-docker/<16 hex of the node root>/{exec/, docker.sock}

A node of a pool with a mount configuration has each blob container mounted (a FUSE file
system, see node/blobmount/) at `fsmounts/<relativeMountPath>`, with its log beside it as
`fsmounts/blobfuse-<relativeMountPath>.log` (Batch names mount logs `<type>-<mount dir>.log`).
The mount helper's file cache and its credentials file live beside the node, outside what the
node files API shows:

    <nodes dir>/<pool>/.mounts/<node id>/<n>/{cache/, credentials.json (0600, while it starts)}

The node agent's own log is beside the node root too, as /mnt/batch/sys/logs/agent-debug.log is
beside /mnt/batch/tasks on a real node (see agentlog.py); it is kept across a reimage:

    <nodes dir>/<pool>/<node id>.sys/logs/agent-debug.log{,.1}
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from typing import Optional

from .agentlog import AGENT_LOG_NAME
from .blobmount.mountpoints import detach_below

NODE_SUBDIRECTORIES = ("shared", "startup", "workitems", "applications", "fsmounts", "volatile")
STDOUT = "stdout.txt"
STDERR = "stderr.txt"
WORKING_DIRECTORY = "wd"
JOB_PREPARATION = "jobpreparation"
JOB_RELEASE = "jobrelease"
UPLOAD_LOG = "fileuploadout.txt"      # output file uploads: what was uploaded
UPLOAD_ERRORS = "fileuploaderr.txt"   # output file uploads: why one failed
# containerHostBatchBindMounts sources that are fixed directories of the node root.
CONTAINER_NODE_DATA_PATHS = {"Shared": "shared", "Startup": "startup", "VfsMounts": "fsmounts",
                             "Applications": "applications"}
CONTAINER_DATA_PATH_SOURCES = (*CONTAINER_NODE_DATA_PATHS, "Task", "JobPrep")


@dataclass(frozen=True)
class TaskPaths:
    """One program's directory (a task's, or the start task's `startup`)."""
    directory: str

    @property
    def working_dir(self) -> str:
        return os.path.join(self.directory, WORKING_DIRECTORY)

    @property
    def stdout(self) -> str:
        return os.path.join(self.directory, STDOUT)

    @property
    def stderr(self) -> str:
        return os.path.join(self.directory, STDERR)

    @property
    def upload_log(self) -> str:
        return os.path.join(self.directory, UPLOAD_LOG)

    @property
    def upload_errors(self) -> str:
        return os.path.join(self.directory, UPLOAD_ERRORS)


ENGINE_RUN_DIRECTORY = "/run/localbatch-docker"
MOUNT_LOG_PREFIX = "blobfuse-"


@dataclass(frozen=True)
class MountPaths:
    """One blob container mount of a node: where it is mounted, its log, its helper's own files."""
    mount_point: str   # fsmounts/<relativeMountPath>
    log: str           # fsmounts/blobfuse-<relativeMountPath>.log
    directory: str     # the helper's: cache and credentials, outside the node's files

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.directory, "cache")

    @property
    def credentials(self) -> str:
        return os.path.join(self.directory, "credentials.json")


@dataclass(frozen=True)
class EnginePaths:
    """Where one node's Docker engine keeps its data, runtime state, socket, pid and log."""
    directory: str   # persistent: kept as long as the node exists
    run_dir: str     # runtime: gone once the engine stops

    @property
    def data_root(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.directory, "dockerd.pid")

    @property
    def log(self) -> str:
        return os.path.join(self.directory, "dockerd.log")

    @property
    def exec_root(self) -> str:
        return os.path.join(self.run_dir, "exec")

    @property
    def socket(self) -> str:
        return os.path.join(self.run_dir, "docker.sock")

    @property
    def docker_host(self) -> str:
        """The engine's address as DOCKER_HOST gives it."""
        return f"unix://{self.socket}"


class NodeLayout:
    """Paths of every node under one directory (`<location>/nodes`)."""

    def __init__(self, nodes_dir: str):
        self.nodes_dir = os.path.abspath(nodes_dir)

    def pool_dir(self, pool_id: str) -> str:
        return os.path.join(self.nodes_dir, pool_id.lower())

    def root(self, pool_id: str, node_id: str) -> str:
        return os.path.join(self.pool_dir(pool_id), node_id)

    def shared_dir(self, pool_id: str, node_id: str) -> str:
        return os.path.join(self.root(pool_id, node_id), "shared")

    def mounts_dir(self, pool_id: str, node_id: str) -> str:
        return os.path.join(self.root(pool_id, node_id), "fsmounts")

    def home_dir(self, pool_id: str, node_id: str, user_name: str) -> str:
        """A node user's home directory (/home/<user> on a real node): beside the node's Batch
        root, not inside it, so it is not among the node's files."""
        return os.path.join(self.pool_dir(pool_id), f"{node_id}.home", user_name)

    def system_dir(self, pool_id: str, node_id: str) -> str:
        """The node's system directory (/mnt/batch/sys): beside its Batch root, not among its files."""
        return os.path.join(self.pool_dir(pool_id), f"{node_id}.sys")

    def agent_log(self, pool_id: str, node_id: str) -> str:
        return os.path.join(self.system_dir(pool_id, node_id), "logs", AGENT_LOG_NAME)

    def startup(self, pool_id: str, node_id: str) -> TaskPaths:
        return TaskPaths(os.path.join(self.root(pool_id, node_id), "startup"))

    def job_dir(self, pool_id: str, node_id: str, job_id: str) -> str:
        return os.path.join(self.root(pool_id, node_id), "workitems", job_id)

    def task(self, pool_id: str, node_id: str, job_id: str, task_id: str) -> TaskPaths:
        return TaskPaths(os.path.join(self.job_dir(pool_id, node_id, job_id), "job-1", task_id))

    def job_preparation(self, pool_id: str, node_id: str, job_id: str) -> TaskPaths:
        """The preparation task's directory (named after the default id, whatever the task's id)."""
        return self.task(pool_id, node_id, job_id, JOB_PREPARATION)

    def job_release(self, pool_id: str, node_id: str, job_id: str) -> TaskPaths:
        return self.task(pool_id, node_id, job_id, JOB_RELEASE)

    def engine(self, pool_id: str, node_id: str) -> EnginePaths:
        root_hash = hashlib.sha256(self.root(pool_id, node_id).encode()).hexdigest()[:16]
        return EnginePaths(os.path.join(self.pool_dir(pool_id), ".engines", node_id),
                           os.path.join(ENGINE_RUN_DIRECTORY, root_hash))

    def mount(self, pool_id: str, node_id: str, index: int, relative_mount_path: str) -> MountPaths:
        """The `index`-th mount of the pool's mountConfiguration on this node."""
        mounts_dir = self.mounts_dir(pool_id, node_id)
        log_name = MOUNT_LOG_PREFIX + relative_mount_path.strip("/").replace("/", "_") + ".log"
        return MountPaths(os.path.join(mounts_dir, relative_mount_path.strip("/")), os.path.join(mounts_dir, log_name),
                          os.path.join(self.mounts_state_dir(pool_id, node_id), str(index)))

    def mounts_state_dir(self, pool_id: str, node_id: str) -> str:
        """Every mount helper's own files of a node (caches, credentials while a helper starts)."""
        return os.path.join(self.pool_dir(pool_id), ".mounts", node_id)

    def container_data_path(self, pool_id: str, node_id: str, source: str, task: TaskPaths,
                            job_id: Optional[str]) -> Optional[str]:
        """The directory a containerHostBatchBindMounts source names, for this program; None when
        it has none (JobPrep for a start task)."""
        if source == "Task":
            return task.directory
        if source == "JobPrep":
            return self.job_preparation(pool_id, node_id, job_id).directory if job_id else None
        name = CONTAINER_NODE_DATA_PATHS.get(source)
        return os.path.join(self.root(pool_id, node_id), name) if name else None

    @staticmethod
    def task_root_relative(job_id: str, task_id: str) -> str:
        """A task's directory relative to the node root, as nodeInfo.taskRootDirectory gives it."""
        return f"workitems/{job_id}/job-1/{task_id}"

    # ---- blocking file-system work: run these off the event loop ----------------------------
    def create_node(self, pool_id: str, node_id: str) -> None:
        root = self.root(pool_id, node_id)
        for name in NODE_SUBDIRECTORIES:
            os.makedirs(os.path.join(root, name), exist_ok=True)

    def create_home(self, pool_id: str, node_id: str, user_name: str) -> str:
        home = self.home_dir(pool_id, node_id, user_name)
        os.makedirs(home, mode=0o700, exist_ok=True)
        return home

    def remove_node(self, pool_id: str, node_id: str, keep_agent_log: bool = False) -> None:
        """Everything of the node; a reimage (`keep_agent_log`) keeps the agent's log."""
        detach_below(self.root(pool_id, node_id))  # never walk into a mounted container: it would empty it
        if not keep_agent_log:
            shutil.rmtree(self.system_dir(pool_id, node_id), ignore_errors=True)
        shutil.rmtree(self.root(pool_id, node_id), ignore_errors=True)
        shutil.rmtree(os.path.dirname(self.home_dir(pool_id, node_id, "_")), ignore_errors=True)
        shutil.rmtree(self.engine(pool_id, node_id).directory, ignore_errors=True)
        shutil.rmtree(self.mounts_state_dir(pool_id, node_id), ignore_errors=True)

    def remove_pool(self, pool_id: str) -> None:
        detach_below(self.pool_dir(pool_id))
        shutil.rmtree(self.pool_dir(pool_id), ignore_errors=True)

    def remove_job(self, pool_id: str, node_ids: list[str], job_id: str) -> None:
        for node_id in node_ids:
            shutil.rmtree(self.job_dir(pool_id, node_id, job_id), ignore_errors=True)
