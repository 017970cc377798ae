"""What the sample tests share: backends, running a sample, inventories and injected failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from azure.batch import BatchClient
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import BlobServiceClient

from common import REPOSITORY_ROOT
from common.clients import create_batch_client, create_blob_service_client
from common.config import ENVIRONMENT_PREFIX, SampleSettings, load_settings, sample_configuration_path
from common.helpers import enum_value
from tests.waiting import wait_for

SAMPLE1 = "sample1_helloworld.py"
SAMPLE2 = "sample2_pools_and_resourcefiles.py"
SAMPLE3 = "sample3_encrypted_resourcefiles.py"
SAMPLE4 = "sample4_docker_swarm.py"
SAMPLE_RUN_TIMEOUT_SECONDS = 900


def environment_without_overrides() -> dict[str, str]:
    """This process's environment minus any BATCHSAMPLES_* variable the developer may have set."""
    return {name: value for name, value in os.environ.items() if not name.startswith(ENVIRONMENT_PREFIX)}


@dataclass
class Backend:
    """Where a sample test runs: the suite's local stack, or real Azure accounts (``live``)."""

    name: str
    environment: dict[str, str]
    configuration_path: Optional[Path] = None
    inventory_timeout_seconds: float = 60.0
    _clients: dict[str, object] = field(default_factory=dict, repr=False)

    def settings(self, sample_file: str) -> SampleSettings:
        """The settings ``sample_file`` loads on this backend."""
        return load_settings(self.configuration_path, sample_configuration_path(sample_file), environ=self.environment)

    def command_line_options(self) -> list[str]:
        return ["--config", str(self.configuration_path)] if self.configuration_path else []

    @property
    def batch_client(self) -> BatchClient:
        if "batch" not in self._clients:
            self._clients["batch"] = create_batch_client(self.settings(SAMPLE1).batch)
        return self._clients["batch"]  # type: ignore[return-value]

    @property
    def blob_service_client(self) -> BlobServiceClient:
        if "blob" not in self._clients:
            self._clients["blob"] = create_blob_service_client(self.settings(SAMPLE1).storage)
        return self._clients["blob"]  # type: ignore[return-value]


@dataclass(frozen=True)
class SampleRun:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit code {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_sample(
    sample_file: str,
    backend: Backend,
    working_directory: Path,
    *options: str,
    extra_environment: Optional[dict[str, str]] = None,
) -> SampleRun:
    """Run a sample as a user would, from ``working_directory`` (not the repository), and capture its output."""
    environment = dict(backend.environment)
    environment.update(extra_environment or {})
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY_ROOT / sample_file), *backend.command_line_options(), *options],
        cwd=working_directory,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=SAMPLE_RUN_TIMEOUT_SECONDS,
    )
    return SampleRun(completed.returncode, completed.stdout, completed.stderr)


@dataclass(frozen=True)
class Inventory:
    """The jobs, pools and containers of the accounts (those being deleted do not count)."""

    job_ids: frozenset[str]
    pool_ids: frozenset[str]
    container_names: frozenset[str]

    def minus(self, other: "Inventory") -> "Inventory":
        return Inventory(
            self.job_ids - other.job_ids,
            self.pool_ids - other.pool_ids,
            self.container_names - other.container_names,
        )


NOTHING = Inventory(frozenset(), frozenset(), frozenset())


def take_inventory(backend: Backend) -> Inventory:
    """List the accounts' jobs, pools and containers, leaving out jobs and pools being deleted."""
    batch_client = backend.batch_client
    return Inventory(
        job_ids=frozenset(
            job.id for job in batch_client.list_jobs(select=["id", "state"]) if enum_value(job.state) != "deleting"
        ),
        pool_ids=frozenset(
            pool.id for pool in batch_client.list_pools(select=["id", "state"]) if enum_value(pool.state) != "deleting"
        ),
        container_names=frozenset(container.name for container in backend.blob_service_client.list_containers()),
    )


def assert_left_behind(backend: Backend, before: Inventory, expected: Inventory = NOTHING) -> None:
    """Assert that, compared with ``before``, exactly ``expected`` is left (waiting, bounded, for deletions to finish)."""
    try:
        wait_for(lambda: take_inventory(backend).minus(before), f"exactly {expected} to be left behind",
                 backend.inventory_timeout_seconds, poll=0.2, until=lambda left: left == expected)
    except TimeoutError as error:  # the last inventory seen is in the message
        raise AssertionError(str(error)) from None


def created_ids(output: str, kind: str) -> list[str]:
    """The ids a sample printed as created: ``kind`` is 'job', 'pool' or 'container'."""
    patterns = {
        "job": r"^Created job (\S+)",
        "pool": r"^(?:Created|Reusing) pool (\S+)",
        "container": r"^Uploaded \S+ to container (\S+)",
    }
    return re.findall(patterns[kind], output, flags=re.MULTILINE)


class FailRequests(SansIOHTTPPolicy):
    """A client pipeline policy that makes matching requests fail, to inject a failure at one step.

    With ``when="request"`` the request never leaves the client; with ``when="response"`` the
    service has done the work but the answer is lost, as when a connection drops.
    """

    def __init__(self, method: str, path_pattern: str, error: Callable[[], BaseException], when: str = "request"):
        super().__init__()
        self.method = method
        self.path_pattern = re.compile(path_pattern)
        self.error = error
        self.when = when
        self.failed = 0

    def _matches(self, request: PipelineRequest) -> bool:
        http_request = request.http_request
        return http_request.method == self.method and bool(self.path_pattern.search(urlsplit(http_request.url).path))

    def on_request(self, request: PipelineRequest) -> None:
        if self.when == "request" and self._matches(request):
            self.failed += 1
            raise self.error()

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        if self.when == "response" and self._matches(request):
            self.failed += 1
            raise self.error()

    def as_storage_client_options(self) -> dict[str, object]:
        """The same failure for a Storage client, which takes hooks instead of per-call policies.

        The hooks run after Storage's retry policy, so retries are turned off for the client.
        """
        return {
            "raw_request_hook": self.on_request,
            "raw_response_hook": lambda response: self.on_response(response, response),
            "retry_total": 0,
        }


def connection_lost() -> BaseException:
    return ServiceRequestError("injected failure: connection lost")
