"""Suite-wide fixtures: one local stack (localbatch + Azurite on free ports) for the whole run.

- ``local_stack``: the running ``common.local.LocalStack`` (its ``batch_endpoint``,
  ``blob_endpoint`` and ``storage_connection_string``).
- ``azurite``: the same stack's Azurite, as an object with ``blob_endpoint`` and ``connection_string``.
- ``local_sample_environment``: environment variables that point a sample (run as a
  subprocess) at that stack instead of the addresses in configuration.cfg.
- ``local_batch_client`` / ``local_blob_service_client``: SDK clients for the stack.
- every localbatch this run starts (in process or as a program) puts its nodes in a random
  127.A.B.0/24 node subnet, never the default one, so it shares no node address with an emulator
  running beside it (another test run, or a stack you started); fixtures that build servers
  give each its own.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import signal
from typing import Iterator

import pytest
from azure.batch import BatchClient
from azure.storage.blob import BlobServiceClient

from common.clients import create_batch_client, create_blob_service_client
from common.config import (
    SampleSettings,
    environment_variable_name,
    load_settings,
    sample_configuration_path,
)
from common.local import LocalStack, azurite_connection_string
from localbatch.accounts import AZURITE_ACCOUNT_NAME
from localbatch.node.network import NODE_SUBNET_ENV_VAR, random_node_subnet
from tests.samples.support import environment_without_overrides

FAST_POLL_INTERVAL_SECONDS = "0.2"


# A shell that starts the suite in the background (`make test &` in a script) hands it SIGINT
# ignored, and every sample it starts would inherit that and never see the Ctrl-C the interrupt
# tests send. With a handler here, programs started from the suite get SIGINT's default again.
signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass(frozen=True)
class AzuriteEndpoint:
    """Where the suite's Azurite answers, for tests that need only Blob storage."""

    blob_endpoint: str

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.blob_endpoint)


@pytest.fixture(scope="session", autouse=True)
def node_subnet_of_this_run() -> Iterator[str]:
    """A random node subnet for the emulators of this run that are not given one."""
    previous = os.environ.get(NODE_SUBNET_ENV_VAR)
    os.environ[NODE_SUBNET_ENV_VAR] = subnet = random_node_subnet()
    yield subnet
    if previous is None:
        os.environ.pop(NODE_SUBNET_ENV_VAR, None)
    else:
        os.environ[NODE_SUBNET_ENV_VAR] = previous


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """localbatch and Azurite on free ports with throw-away state, stopped at the end of the run."""
    stack = LocalStack(
        data_directory=tmp_path_factory.mktemp("local-stack"),
        batch_endpoint="http://127.0.0.1:0",
        blob_endpoint=f"http://127.0.0.1:0/{AZURITE_ACCOUNT_NAME}",
        startup_timeout_seconds=120,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def azurite(local_stack: LocalStack) -> AzuriteEndpoint:
    """The suite's Azurite blob service."""
    return AzuriteEndpoint(local_stack.blob_endpoint)


@pytest.fixture(scope="session")
def local_sample_environment(local_stack: LocalStack) -> dict[str, str]:
    """Environment for a sample subprocess: configuration.cfg as shipped, pointed at the suite's stack."""
    environment = environment_without_overrides()
    environment.update({
        environment_variable_name("Batch", "endpoint"): local_stack.batch_endpoint,
        environment_variable_name("Batch", "poll_interval_seconds"): FAST_POLL_INTERVAL_SECONDS,
        environment_variable_name("Storage", "connection_string"): "",
        environment_variable_name("Storage", "blob_endpoint"): local_stack.blob_endpoint,
        environment_variable_name("Local", "data_directory"): str(local_stack.data_directory),
        # Sample 3's vault and management endpoint: the stack's services listener.
        environment_variable_name("KeyVault", "vault_url"): local_stack.services_endpoint,
        environment_variable_name("Management", "endpoint"): local_stack.services_endpoint,
    })
    return environment


@pytest.fixture(scope="session")
def local_settings(local_sample_environment: dict[str, str]) -> SampleSettings:
    """Settings of sample1 as it would load them against the suite's stack."""
    return load_settings(None, sample_configuration_path("sample1_helloworld.py"), environ=local_sample_environment)


@pytest.fixture(scope="session")
def local_batch_client(local_settings: SampleSettings) -> Iterator[BatchClient]:
    with create_batch_client(local_settings.batch) as client:
        yield client


@pytest.fixture(scope="session")
def local_blob_service_client(local_settings: SampleSettings) -> Iterator[BlobServiceClient]:
    with create_blob_service_client(local_settings.storage) as client:
        yield client
