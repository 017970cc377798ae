"""Ctrl-C in a terminal: the sample cleans up, exits 130, and the emulators survive to serve the cleanup."""

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
from tests.samples.support import (
    NOTHING,
    SAMPLE2,
    Backend,
    assert_left_behind,
    take_inventory,
)

WAIT_SECONDS = 120


@pytest.fixture
def slow_localbatch(tmp_path: Path) -> Iterator[str]:
    """A localbatch whose nodes take minutes to start, so a sample is surely still waiting for them."""
    with start_localbatch(tmp_path / "state", extra_args=["--node-startup-seconds", "600"]) as emulator:
        yield emulator.url


def test_ctrl_c_while_waiting_for_nodes_cleans_up_and_exits_130(
    slow_localbatch: str, local_sample_environment: dict[str, str], tmp_path: Path
) -> None:
    environment = {**local_sample_environment, environment_variable_name("Batch", "endpoint"): slow_localbatch}
    backend = Backend("slow-local", environment)
    before = take_inventory(backend)
    # Its own process group, like a program started in a terminal, so the signal goes to the group.
    sample = subprocess.Popen(
        [sys.executable, str(REPOSITORY_ROOT / SAMPLE2)], cwd=tmp_path, env=environment,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        printed = []
        for line in sample.stdout:  # ends when the sample exits, at the latest
            printed.append(line)
            if "waiting for its nodes to be idle" in line:
                os.killpg(sample.pid, signal.SIGINT)
        stderr = sample.stderr.read()
        returncode = sample.wait(timeout=WAIT_SECONDS)
    finally:
        if sample.poll() is None:
            sample.kill()

    output = "".join(printed)
    assert returncode == 130, f"{output}\n{stderr}"
    assert stderr == (
        "sample2_pools_and_resourcefiles.py: error: interrupted; everything it created was deleted\n"
    )
    assert re.search(r"^Deleted pool sample2-pool-", output, re.MULTILINE)
    assert re.search(r"^Deleted container sample2-resources-", output, re.MULTILINE)
    assert localbatch_answers(slow_localbatch)  # not killed by the Ctrl-C meant for the sample
    assert_left_behind(backend, before, NOTHING)
