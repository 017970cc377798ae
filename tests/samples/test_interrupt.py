"""Ctrl-C in a terminal (a real SIGINT to the sample's process group): the sample cleans up, exits
130, and the emulators survive to serve the cleanup; for each sample that waits for its nodes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from common import REPOSITORY_ROOT
from common.config import environment_variable_name
from common.local import localbatch_answers, start_localbatch
from localbatch.node.engines import docker_unavailable_reason
from tests.samples.support import (
    NOTHING,
    SAMPLE2,
    SAMPLE4,
    Backend,
    assert_left_behind,
    take_inventory,
)

WAIT_SECONDS = 120
# Sample 4's pool is a container pool: the local stack runs a Docker engine per node (root, docker.io).
NEEDS_LOCAL_DOCKER = pytest.mark.skipif(docker_unavailable_reason() is not None,
                                        reason=str(docker_unavailable_reason()))


@pytest.fixture
def slow_localbatch(tmp_path: Path) -> Iterator[str]:
    """A localbatch whose nodes take minutes to start, so a sample is surely still waiting for them."""
    with start_localbatch(tmp_path / "state", extra_args=["--node-startup-seconds", "600"]) as emulator:
        yield emulator.url


@pytest.mark.parametrize("sample, deleted", [
    (SAMPLE2, ("pool sample2-pool-", "container sample2-resources-")),
    pytest.param(SAMPLE4, ("pool sample4-pool-",), marks=NEEDS_LOCAL_DOCKER),
])
def test_ctrl_c_while_waiting_for_nodes_cleans_up_and_exits_130(
    slow_localbatch: str, local_sample_environment: dict[str, str], tmp_path: Path, sample: str,
    deleted: tuple[str, ...],
) -> None:
    environment = {**local_sample_environment, environment_variable_name("Batch", "endpoint"): slow_localbatch}
    backend = Backend("slow-local", environment)
    before = take_inventory(backend)
    # Its own process group, like a program started in a terminal, so the signal goes to the group.
    process = subprocess.Popen(
        [sys.executable, str(REPOSITORY_ROOT / sample)], cwd=tmp_path, env=environment,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        printed = []
        for line in process.stdout:  # ends when the sample exits, at the latest
            printed.append(line)
            if "waiting for its nodes to be idle" in line:
                os.killpg(process.pid, signal.SIGINT)
        stderr = process.stderr.read()
        returncode = process.wait(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()

    output = "".join(printed)
    assert returncode == 130, f"{output}\n{stderr}"
    assert stderr == f"{sample}: error: interrupted; everything it created was deleted\n"
    for resource in deleted:
        assert re.search(rf"^Deleted {resource}", output, re.MULTILINE), output
    assert localbatch_answers(slow_localbatch)  # not killed by the Ctrl-C meant for the sample
    assert_left_behind(backend, before, NOTHING)
