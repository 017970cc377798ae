"""Fixtures for the localbatch contract tests.

- `server`: an in-process LocalBatchServer on port 0 with a temporary location and its own random
  node subnet (127.A.B.0/24), shared by the tests of one module (each test uses its own unique
  pool/job ids).
- `client`: a BatchClient for it, signed with the well-known account key.
- `raw`: an HTTP client that sends exactly what it is given.
- transitional states (deleting, resizing, rebooting) are held for as long as a test needs
  them with `server.holding("pool_deleting", ...)`, never by slower timings or sleeps.
- `pool_id`: a module-wide pool with two idle nodes of two slots each.
- `blob_storage`: Azurite's blob service, reused from tests/conftest.py when that provides a
  fixture named `azurite`, otherwise started here from node_modules (`npm ci` first when it is
  missing); skipped only when Node or Azurite is absent.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from common.local import RunningAzurite, start_azurite
from localbatch import LocalBatchServer, Timings
from localbatch.accounts import AZURITE_ACCOUNT_KEY, AZURITE_ACCOUNT_NAME, azurite_connection_string
from localbatch.node.network import random_node_subnet

from .support import WAIT, RawClient, batch_client, create_pool_and_wait, unique_id

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def fast_timings() -> Timings:
    """Short infrastructure delays: every transition still happens, just quickly."""
    return Timings(node_creating=0.02, node_starting=0.04, pool_deleting=0.02, node_leaving=0.02,
                   job_terminating=0.02, job_deleting=0.02, node_rebooting=0.04)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBatchServer]:
    location = tmp_path_factory.mktemp("localbatch")
    with LocalBatchServer(str(location), timings=fast_timings(), node_subnet=random_node_subnet()) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: LocalBatchServer):
    with batch_client(server.url) as batch:
        yield batch


@pytest.fixture(scope="module")
def raw(server: LocalBatchServer) -> RawClient:
    return RawClient(server.url)


@pytest.fixture(scope="module")
def pool_id(client) -> str:
    """A pool with two idle nodes and two task slots per node, shared by a module's tests."""
    pool = unique_id("pool")
    create_pool_and_wait(client, pool, nodes=2, task_slots_per_node=2)
    return pool


# ---- Azurite ------------------------------------------------------------------------------------
@dataclass
class Azurite:
    blob_endpoint: str                  # http://127.0.0.1:PORT/devstoreaccount1
    account_name: str = AZURITE_ACCOUNT_NAME
    account_key: str = AZURITE_ACCOUNT_KEY

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.blob_endpoint, self.account_name, self.account_key)

    def blob_service(self):
        from azure.storage.blob import BlobServiceClient
        return BlobServiceClient.from_connection_string(self.connection_string)


def _adapt(provided: Any) -> Azurite:
    """Accept what a shared Azurite fixture may hand out: ours, a connection string, or an object
    with `connection_string` / `blob_endpoint`."""
    if isinstance(provided, Azurite):
        return provided
    text = provided if isinstance(provided, str) else getattr(provided, "connection_string", None)
    if text:
        fields = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
        return Azurite(fields["BlobEndpoint"].rstrip("/"), fields.get("AccountName", AZURITE_ACCOUNT_NAME),
                       fields.get("AccountKey", AZURITE_ACCOUNT_KEY))
    return Azurite(str(getattr(provided, "blob_endpoint")).rstrip("/"))


def _start_azurite(location: Path) -> RunningAzurite:
    """Azurite from node_modules (installed with `npm ci` first when it is missing), via common.local."""
    if shutil.which("node") is None:
        pytest.skip("Azurite needs Node.js, which is not on PATH")
    if not (REPOSITORY_ROOT / "node_modules" / ".bin" / "azurite-blob").exists():
        if shutil.which("npm") is None:
            pytest.skip("Azurite is not in node_modules and npm is not on PATH to install it")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=REPOSITORY_ROOT, check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
    return start_azurite(location, timeout_seconds=WAIT)


@pytest.fixture(scope="session")
def _own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with _start_azurite(tmp_path_factory.mktemp("azurite") / "data") as running:
        yield Azurite(running.blob_endpoint)


@pytest.fixture(scope="session")
def blob_storage(request: pytest.FixtureRequest) -> Azurite:
    """Azurite's blob service: the suite-wide `azurite` fixture when tests/conftest.py has one,
    otherwise one started here."""
    if shutil.which("node") is None:
        pytest.skip("Azurite needs Node.js, which is not on PATH")
    try:
        return _adapt(request.getfixturevalue("azurite"))
    except pytest.FixtureLookupError:
        return request.getfixturevalue("_own_azurite")


@pytest.fixture(scope="module")
def storage_server(tmp_path_factory: pytest.TempPathFactory, blob_storage: Azurite) -> Iterator[LocalBatchServer]:
    """A server whose auto-storage account is the Azurite instance."""
    location = tmp_path_factory.mktemp("localbatch-storage")
    with LocalBatchServer(str(location), timings=fast_timings(), node_subnet=random_node_subnet(),
                          auto_storage_connection_string=blob_storage.connection_string) as running:
        yield running


@pytest.fixture(scope="module")
def storage_client(storage_server: LocalBatchServer):
    with batch_client(storage_server.url) as batch:
        yield batch


@pytest.fixture
def container(blob_storage: Azurite):
    """A fresh blob container, deleted afterwards."""
    service = blob_storage.blob_service()
    name = unique_id("c").lower()
    container_client = service.create_container(name)
    yield container_client
    container_client.delete_container()
