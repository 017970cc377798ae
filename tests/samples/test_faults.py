"""The samples under real network faults: one table, every sample, run as a user runs it (a subprocess).

Each row puts a ``FaultyProxy`` in front of the suite's localbatch or Azurite and injects one
fault at one step: a connection reset after the service did the work, an answer that never
comes, a service that goes down (then Ctrl-C), or a second Ctrl-C while cleanup is stuck. The
row says what the sample must do: its exit code, what its last line must say, and which of the
resources it created are still there afterwards (the test deletes those itself).

To cover a new sample, add rows: ``sample`` is its file name, ``step`` matches the request
(method and path regex) the fault hits, and ``left`` lists the kinds it leaves ("job", "pool",
"container", and sample 3's Key Vault "key").
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient

from common import REPOSITORY_ROOT
from common.config import environment_variable_name
from common.local import LocalStack
from localbatch.node.engines import docker_unavailable_reason
from tests.samples.proxy import RESET, STALL, FaultyProxy, Rule
from tests.samples.support import (
    SAMPLE1, SAMPLE2, SAMPLE3, SAMPLE4, Backend, Inventory, assert_left_behind, take_inventory,
)
from tests.waiting import wait_for

BATCH, STORAGE = "batch", "storage"
CTRL_C, CTRL_C_TWICE = "ctrl-c", "ctrl-c twice"
RUN_BOUND_SECONDS = 120  # a sample that hangs fails the row instead of stalling the suite
SHORT_REQUEST_TIMEOUT = "2"


@dataclass(frozen=True)
class Fault:
    sample: str
    name: str
    service: str
    method: str
    path: str
    action: Optional[str] = None
    times: int = 1
    forward: bool = True
    then: Optional[str] = None
    """What happens when the request comes: CTRL_C, or CTRL_C_TWICE (the second once the first is held back)."""
    goes_down: Optional[str] = None
    """The service (BATCH or STORAGE) that stops answering when the request comes, before any Ctrl-C."""
    exit_code: int = 0
    last_line: str = ""
    """A regex the sample's last stderr line must match ("" for a clean run: stderr has only warnings)."""
    left: frozenset[str] = field(default_factory=frozenset)
    environment: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.sample.split('_')[0]}: {self.name}"


JOBS, POOLS = r"^/jobs$", r"^/pools$"
TASK_LIST, NODE_LIST, ONE_JOB = r"^/jobs/[^/]+/tasks$", r"^/pools/[^/]+/nodes$", r"^/jobs/[^/]+$"
NODE_USERS, REMOTE_LOGIN = r"^/pools/[^/]+/nodes/[^/]+/users$", r"^/pools/[^/]+/nodes/[^/]+/remoteloginsettings$"
SHORT_TIMEOUTS = ((environment_variable_name("Batch", "request_timeout_seconds"), SHORT_REQUEST_TIMEOUT),
                  (environment_variable_name("Storage", "request_timeout_seconds"), SHORT_REQUEST_TIMEOUT))

FAULTS = [
    # reset on create: the service created it, the answer was lost; create-if-not-exists makes a retry safe
    Fault(SAMPLE1, "reset on create (job)", BATCH, "POST", JOBS, RESET),
    Fault(SAMPLE2, "reset on create (pool)", BATCH, "POST", POOLS, RESET),
    Fault(SAMPLE2, "reset on create (job)", BATCH, "POST", JOBS, RESET),
    Fault(SAMPLE1, "reset on create (task)", BATCH, "POST", r"^/jobs/[^/]+/addtaskcollection$", RESET),
    # a failure that does not go away names the step it stopped
    Fault(SAMPLE1, "reset on every create of the job", BATCH, "POST", JOBS, RESET, times=99, exit_code=1,
          last_line=r"^sample1_helloworld\.py: error: create job helloworld-\S+: ServiceResponseError: "),
    # stalled answer: the configured read timeout ends the wait, and the request is sent again
    Fault(SAMPLE1, "stalled answer (create the job)", BATCH, "POST", JOBS, STALL, environment=SHORT_TIMEOUTS),
    Fault(SAMPLE1, "stalled answer (wait for the task)", BATCH, "GET", TASK_LIST, STALL, environment=SHORT_TIMEOUTS),
    Fault(SAMPLE2, "stalled answer (wait for the nodes)", BATCH, "GET", NODE_LIST, STALL, environment=SHORT_TIMEOUTS),
    Fault(SAMPLE2, "stalled answer (upload to Storage)", STORAGE, "PUT", r"/simple_task\.py$", STALL,
          environment=SHORT_TIMEOUTS),
    # service down at cleanup: the last line says what is still there, not that it cleaned up
    Fault(SAMPLE1, "Batch down at cleanup", BATCH, "GET", TASK_LIST, RESET, then=CTRL_C, goes_down=BATCH, exit_code=130,
          last_line=r"^sample1_helloworld\.py: error: interrupted; could not delete job helloworld-\S+: ",
          left=frozenset({"job", "pool"})),
    Fault(SAMPLE2, "Storage down at cleanup", BATCH, "GET", NODE_LIST, then=CTRL_C, goes_down=STORAGE, exit_code=130,
          last_line=r"^sample2_pools_and_resourcefiles\.py: error: interrupted; could not delete container "
                    r"sample2-resources-\S+: ",
          left=frozenset({"container"})),
    Fault(SAMPLE2, "Storage down at the upload", STORAGE, "PUT", r"^/devstoreaccount1/sample2-resources-[^/]+$", RESET,
          forward=False, goes_down=STORAGE, exit_code=1,
          last_line=r"^sample2_pools_and_resourcefiles\.py: error: upload simple_task\.py to container "
                    r"sample2-resources-\S+: ServiceRequestError: .*; could not delete container sample2-resources-"),
    # second Ctrl-C: cleanup is stuck on a request that gets no answer; the second one ends the run at once
    Fault(SAMPLE1, "second Ctrl-C (cleanup stuck)", BATCH, "DELETE", ONE_JOB, STALL, forward=False,
          then=CTRL_C_TWICE, exit_code=130,
          last_line=r"^sample1_helloworld\.py: error: interrupted; cleanup was stopped before deleting job helloworld-\S+$",
          left=frozenset({"job", "pool"})),
    Fault(SAMPLE2, "second Ctrl-C (cleanup stuck)", STORAGE, "DELETE", r"^/devstoreaccount1/sample2-resources-",
          STALL, forward=False, then=CTRL_C_TWICE, exit_code=130,
          last_line=r"^sample2_pools_and_resourcefiles\.py: error: interrupted; cleanup was stopped before deleting "
                    r"container sample2-resources-\S+",
          left=frozenset({"container"})),
    # sample 3: the same faults; its Key Vault key is reported (and left) like the rest
    Fault(SAMPLE3, "reset on create (container)", STORAGE, "PUT", r"^/devstoreaccount1/sample3-inputs-[^/]+$", RESET),
    Fault(SAMPLE3, "reset on create (job)", BATCH, "POST", JOBS, RESET),
    Fault(SAMPLE3, "reset on create (task)", BATCH, "POST", r"^/jobs/[^/]+/addtaskcollection$", RESET),
    Fault(SAMPLE3, "stalled answer (upload the encrypted secret)", STORAGE, "PUT", r"/secret\.txt$", STALL,
          environment=SHORT_TIMEOUTS),
    Fault(SAMPLE3, "stalled answer (wait for the nodes)", BATCH, "GET", NODE_LIST, STALL, environment=SHORT_TIMEOUTS),
    Fault(SAMPLE3, "Batch down at cleanup", BATCH, "GET", TASK_LIST, RESET, then=CTRL_C, goes_down=BATCH, exit_code=130,
          last_line=r"^sample3_encrypted_resourcefiles\.py: error: interrupted; could not delete job sample3-job-\S+: "
                    r".*; pool sample3-pool-\S+: ",
          left=frozenset({"job", "pool"})),
    Fault(SAMPLE3, "second Ctrl-C (cleanup stuck)", BATCH, "DELETE", ONE_JOB, STALL, forward=False,
          then=CTRL_C_TWICE, exit_code=130,
          last_line=r"^sample3_encrypted_resourcefiles\.py: error: interrupted; cleanup was stopped before deleting "
                    r"job sample3-job-\S+, pool sample3-pool-\S+, container sample3-inputs-\S+, key sample3-key-\S+$",
          left=frozenset({"job", "pool", "container", "key"})),
    # sample 4: its node users are named in the last line with the job and pool while its pool stays
    Fault(SAMPLE4, "reset on create (pool)", BATCH, "POST", POOLS, RESET),
    Fault(SAMPLE4, "reset on create (node user)", BATCH, "POST", NODE_USERS, RESET),
    Fault(SAMPLE4, "stalled answer (remote login settings)", BATCH, "GET", REMOTE_LOGIN, STALL,
          environment=SHORT_TIMEOUTS),
    Fault(SAMPLE4, "Batch down at cleanup", BATCH, "GET", REMOTE_LOGIN, RESET, then=CTRL_C, goes_down=BATCH,
          exit_code=130,
          last_line=r"^sample4_docker_swarm\.py: error: interrupted; could not delete job sample4-job-\S+: .+; "
                    r"pool sample4-pool-\S+: .+; user swarmadmin on node \S+: .+; user swarmadmin on node \S+: ",
          left=frozenset({"job", "pool"})),
    Fault(SAMPLE4, "second Ctrl-C (cleanup stuck)", BATCH, "DELETE", ONE_JOB, STALL, forward=False,
          then=CTRL_C_TWICE, exit_code=130,
          last_line=r"^sample4_docker_swarm\.py: error: interrupted; cleanup was stopped before deleting job "
                    r"sample4-job-\S+, pool sample4-pool-\S+, user swarmadmin on node \S+, user swarmadmin on node \S+$",
          left=frozenset({"job", "pool"})),
]


@dataclass
class SampleProcess:
    """A sample started as in a terminal (its own process group), its output collected as it comes."""

    process: subprocess.Popen
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    def interrupt(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def describe(self) -> str:
        return f"exit {self.process.poll()}\n--- stdout ---\n{''.join(self.stdout)}\n--- stderr ---\n{''.join(self.stderr)}"


def start_sample(sample: str, environment: dict[str, str], working_directory: Path) -> SampleProcess:
    process = subprocess.Popen(
        [sys.executable, str(REPOSITORY_ROOT / sample)], cwd=working_directory, env=environment,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        start_new_session=True,
    )
    started = SampleProcess(process)
    for stream, lines in ((process.stdout, started.stdout), (process.stderr, started.stderr)):
        reader = threading.Thread(target=lambda s=stream, into=lines: into.extend(iter(s.readline, "")), daemon=True)
        reader.start()
        started.readers.append(reader)
    return started


@pytest.fixture
def key_client(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyClient]:
    """A client for the stack's vault (sample 3's keys), with the stack's developer identity."""
    for name, value in local_stack.client_environment().items():
        monkeypatch.setenv(name, value)
    with DefaultAzureCredential() as credential, \
            KeyClient(local_stack.services_endpoint, credential, verify_challenge_resource=False) as client:
        yield client


def key_is_in_the_vault(key_client: KeyClient, key_name: str) -> bool:
    """Whether the key is there, live or deleted but not yet purged (so still recoverable)."""
    for look_up in (key_client.get_key, key_client.get_deleted_key):
        with contextlib.suppress(ResourceNotFoundError):
            look_up(key_name)
            return True
    return False


def delete_and_purge(key_client: KeyClient, key_name: str) -> None:
    with contextlib.suppress(ResourceNotFoundError):
        key_client.begin_delete_key(key_name).wait()
    key_client.purge_deleted_key(key_name)


@pytest.fixture
def proxies(local_stack: LocalStack) -> Iterator[dict[str, FaultyProxy]]:
    with FaultyProxy(local_stack.batch_endpoint) as batch, FaultyProxy(local_stack.blob_endpoint) as storage:
        yield {BATCH: batch, STORAGE: storage}


def kinds_left(left: Inventory) -> set[str]:
    return {kind for kind, ids in (("job", left.job_ids), ("pool", left.pool_ids), ("container", left.container_names)) if ids}


def delete_everything_in(backend: Backend, left: Inventory) -> None:
    """Delete what a row left (a job's auto-pool may already be gone with its job)."""
    deletions = [functools.partial(backend.batch_client.begin_delete_job, job_id, polling_interval=0.2)
                 for job_id in left.job_ids]
    deletions += [functools.partial(backend.batch_client.begin_delete_pool, pool_id, polling_interval=0.2)
                  for pool_id in left.pool_ids]
    for delete in deletions:
        with contextlib.suppress(ResourceNotFoundError):
            delete().result()
    for name in left.container_names:
        backend.blob_service_client.delete_container(name)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_a_network_fault_at_one_step(
    fault: Fault, proxies: dict[str, FaultyProxy], local_backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if fault.sample == SAMPLE4 and docker_unavailable_reason() is not None:
        pytest.skip(str(docker_unavailable_reason()))
    environment = {
        **local_backend.environment,
        environment_variable_name("Batch", "endpoint"): proxies[BATCH].url,
        environment_variable_name("Storage", "blob_endpoint"): proxies[STORAGE].url,
        **dict(fault.environment),
    }
    before = take_inventory(local_backend)
    sample: Optional[SampleProcess] = None

    def on_match() -> None:
        if fault.goes_down:
            proxies[fault.goes_down].go_down()
        if fault.then in (CTRL_C, CTRL_C_TWICE):
            assert sample is not None
            sample.interrupt()

    rule = proxies[fault.service].add(Rule(fault.method, fault.path, fault.action, fault.times, fault.forward, on_match))
    sample = start_sample(fault.sample, environment, tmp_path)
    try:
        if fault.then == CTRL_C_TWICE:
            wait_for(lambda: any("Signal" in line for line in sample.stderr),
                     "the sample to say it holds the first Ctrl-C back", RUN_BOUND_SECONDS, poll=0.05)
            sample.interrupt()
        returncode = sample.process.wait(timeout=RUN_BOUND_SECONDS)
        wait_for(lambda: not any(reader.is_alive() for reader in sample.readers), "the sample's output to be read", 10)
    finally:
        if sample.process.poll() is None:
            os.killpg(sample.process.pid, signal.SIGKILL)
            sample.process.wait(timeout=RUN_BOUND_SECONDS)
        for proxy in proxies.values():
            proxy.close()  # releases stalled answers

    assert rule.matched >= 1, f"the fault was never injected at {fault.name!r}\n{sample.describe()}"
    assert returncode == fault.exit_code, sample.describe()
    errors = [line.rstrip("\n") for line in sample.stderr if ": error: " in line]
    if fault.last_line:
        assert errors and re.search(fault.last_line, errors[-1]), sample.describe()
    else:
        assert errors == [], sample.describe()
        assert "Deleted job " in "".join(sample.stdout), sample.describe()
        assert "Reusing pool " not in "".join(sample.stdout), sample.describe()  # it made the pool, answer lost or not
    key_names = [line.split()[3] for line in sample.stdout if line.startswith("Created RSA key ")]
    left = wait_for(lambda: take_inventory(local_backend).minus(before), "deletions to finish",
                    local_backend.inventory_timeout_seconds, poll=0.2,
                    until=lambda seen: kinds_left(seen) == set(fault.left) - {"key"})
    try:
        if fault.sample == SAMPLE3:
            key_client: KeyClient = request.getfixturevalue("key_client")
            [key_name] = key_names
            assert key_is_in_the_vault(key_client, key_name) == ("key" in fault.left), sample.describe()
            if "key" in fault.left:
                assert key_name in errors[-1], sample.describe()
                delete_and_purge(key_client, key_name)
        # The last line names everything that is still there (a job's auto-pool goes with the job).
        auto_pools = left.pool_ids if fault.sample == SAMPLE1 else frozenset()
        for name in left.job_ids | (left.pool_ids - auto_pools) | left.container_names:
            assert name in errors[-1], sample.describe()
    finally:
        delete_everything_in(local_backend, left)
    assert_left_behind(local_backend, before, Inventory(frozenset(), frozenset(), frozenset()))
