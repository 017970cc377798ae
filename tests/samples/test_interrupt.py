"""Ctrl-C in a terminal: the sample cleans up, exits 130, and the emulators survive to serve the cleanup."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

from common import REPOSITORY_ROOT
from common.config import environment_variable_name
from common.local import localbatch_answers
from tests.samples.support import (
    NOTHING,
    SAMPLE2,
    Backend,
    assert_left_behind,
    take_inventory,
)
from tests.waiting import wait_for

WAIT_SECONDS = 120


@pytest.fixture
def slow_localbatch(tmp_path: Path) -> Iterator[str]:
    """A localbatch whose nodes take minutes to start, so a sample is surely still waiting for them."""
    log_path = tmp_path / "localbatch.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localbatch", "--port", "0", "--location", str(tmp_path / "state"),
             "--node-startup-seconds", "600"],
            cwd=REPOSITORY_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def listening_url() -> Optional[str]:
            log = log_path.read_text()
            if match := re.search(r"listening on (http://\S+)", log):
                return match.group(1)
            assert process.poll() is None, log  # it died before listening: no use waiting on
            return None

        yield wait_for(listening_url, "the slow localbatch to listen", WAIT_SECONDS, poll=0.05)
    finally:
        process.terminate()
        process.wait(timeout=30)


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
        "sample2_pools_and_resourcefiles.py: error: interrupted; the resources it created were cleaned up as configured\n"
    )
    assert re.search(r"^Deleted pool sample2-pool-", output, re.MULTILINE)
    assert re.search(r"^Deleted container sample2-resources-", output, re.MULTILINE)
    assert localbatch_answers(slow_localbatch)  # not killed by the Ctrl-C meant for the sample
    assert_left_behind(backend, before, NOTHING)
