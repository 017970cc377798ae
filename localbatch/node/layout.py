"""Where everything of a node lives on disk: the one module that builds a node's paths.

A node is a directory with the layout of a real Linux Batch node:

    <nodes dir>/<pool>/<node id>/          AZ_BATCH_NODE_ROOT_DIR
        shared/  startup/{stdout.txt, stderr.txt, wd/}  applications/  fsmounts/  volatile/
        workitems/<job>/job-1/<task>/{stdout.txt, stderr.txt, wd/, fileuploadout.txt, fileuploaderr.txt}
        workitems/<job>/job-1/{jobpreparation, jobrelease}/   the job's preparation and release tasks
    <nodes dir>/<pool>/<node id>.home/<user>/   a node user's home (/home/<user>; SSH sessions start there)

Node file names in the API are relative to the node root; task file names to the task directory.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

NODE_SUBDIRECTORIES = ("shared", "startup", "workitems", "applications", "fsmounts", "volatile")
STDOUT = "stdout.txt"
STDERR = "stderr.txt"
WORKING_DIRECTORY = "wd"
JOB_PREPARATION = "jobpreparation"
JOB_RELEASE = "jobrelease"
UPLOAD_LOG = "fileuploadout.txt"      # output file uploads: what was uploaded
UPLOAD_ERRORS = "fileuploaderr.txt"   # output file uploads: why one failed


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

    def remove_node(self, pool_id: str, node_id: str) -> None:
        shutil.rmtree(self.root(pool_id, node_id), ignore_errors=True)
        shutil.rmtree(os.path.dirname(self.home_dir(pool_id, node_id, "_")), ignore_errors=True)

    def remove_pool(self, pool_id: str) -> None:
        shutil.rmtree(self.pool_dir(pool_id), ignore_errors=True)

    def remove_job(self, pool_id: str, node_ids: list[str], job_id: str) -> None:
        for node_id in node_ids:
            shutil.rmtree(self.job_dir(pool_id, node_id, job_id), ignore_errors=True)
