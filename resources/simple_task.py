"""The program sample2's task runs on a Batch node: it reports where it runs and what it can see.

It is delivered to every node by the pool's start task (as a resource file copied into the
node's shared directory) and uses only the standard library, so any python3 on the node runs it.
"""

import os
import platform
import sys


def list_directory(title: str, path: str) -> None:
    """Print the entries of one directory, one per line, sorted; directories end with a slash."""
    print(f"{title}: {path}")
    try:
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as error:
        print(f"  (cannot list: {error.strerror})")
        return
    if not entries:
        print("  (empty)")
    for entry in entries:
        suffix = "/" if entry.is_dir() else f"  {entry.stat().st_size} bytes"
        print(f"  {entry.name}{suffix}")


def main() -> int:
    """Print the task's identity, then list the node's shared directory and the task's working directory."""
    environment = os.environ
    print(f"simple_task.py: hello from task {environment.get('AZ_BATCH_TASK_ID', '?')} "
          f"of job {environment.get('AZ_BATCH_JOB_ID', '?')}")
    print(f"node {environment.get('AZ_BATCH_NODE_ID', '?')} of pool {environment.get('AZ_BATCH_POOL_ID', '?')}, "
          f"Python {platform.python_version()} on {platform.system()}")
    list_directory("node shared directory", environment.get("AZ_BATCH_NODE_SHARED_DIR", "."))
    list_directory("task working directory", environment.get("AZ_BATCH_TASK_WORKING_DIR", os.getcwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
