"""The task authentication token's replacement: a job manager on a pool with a user-assigned
identity gets a Batch token from its node's managed identity endpoint with azure-identity's
ManagedIdentityCredential, and adds its job's tasks with the real SDK (BatchClient with that
credential), over https, as the same code does on Azure once the identity has a Batch role."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest
from azure.batch import models

from localbatch import LocalBatchServer
from localbatch.arm.identities import POOL_IDENTITY
from localbatch.identity.certificates import ensure_development_certificates

from .conftest import fast_timings
from .services_support import ACCOUNT, RESOURCE_GROUP, ServicesStack, arm_pool
from .support import batch_client, read_task_file, unique_id, wait_for, wait_for_nodes

# What the job manager runs: nothing but the SDK, azure-identity and the node's environment.
MANAGER = """\
import os, sys, time
from azure.batch import BatchClient, models
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential

credential = ManagedIdentityCredential(client_id=os.environ.get("POOL_IDENTITY_CLIENT_ID") or None)
try:
    credential.get_token("https://batch.core.windows.net//.default")
except ClientAuthenticationError as error:
    print("NO TOKEN:", str(error).splitlines()[0])
    sys.exit(3)
with BatchClient(os.environ["AZ_BATCH_ACCOUNT_URL"], credential) as client:
    job_id = os.environ["AZ_BATCH_JOB_ID"]
    client.create_tasks(job_id, [models.BatchTaskCreateOptions(id=f"part-{i}", command_line=f"/bin/echo {i}")
                                 for i in range(3)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = [task for task in client.list_tasks(job_id) if task.id.startswith("part-")]
        if all(task.state == "completed" for task in parts):
            break
        time.sleep(0.05)
    print(sorted((task.id, task.execution_info.exit_code) for task in parts))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesStack]:
    """localbatch over https (as Batch is), with the management plane that gives pools identities."""
    location = tmp_path_factory.mktemp("localbatch-jm-identity")
    certificates = ensure_development_certificates(Path(location) / "tls")
    with LocalBatchServer(str(location / "state"), timings=fast_timings(), cert=str(certificates.server_certificate),
                          key=str(certificates.server_key), services_port=0,
                          node_ca_bundle=str(certificates.trust_bundle)) as server:
        yield ServicesStack(server, certificates)


@pytest.fixture(scope="module")
def client(stack: ServicesStack):
    with batch_client(stack.server.url, connection_verify=stack.trust_bundle) as batch:
        yield batch


def _pool_with_identity(stack: ServicesStack, client, identities: tuple) -> str:
    pool = unique_id("jm-identity")
    stack.management_client().pool.create(RESOURCE_GROUP, ACCOUNT, pool, arm_pool(identities, nodes=2))
    wait_for_nodes(client, pool, 2)
    return pool


def _run_manager(client, pool: str, tmp_path: Path, **environment: str) -> tuple[models.BatchTask, str, str]:
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    job_id = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool), job_manager_task=models.BatchJobManagerTask(
            id="manager", command_line=f"{sys.executable} {script}",
            environment_settings=[models.EnvironmentSetting(name=name, value=value)
                                  for name, value in environment.items()])))
    job = wait_for(lambda: client.get_job(job_id), f"job {job_id} to complete",
                   until=lambda job: job.state == "completed")
    assert job.execution_info.termination_reason == "JMComplete"
    manager = client.get_task(job_id, "manager")
    return manager, read_task_file(client, job_id, "manager"), job_id


def test_a_job_manager_adds_its_tasks_with_its_pools_managed_identity(stack, client, tmp_path):
    pool = _pool_with_identity(stack, client, (POOL_IDENTITY,))
    manager, output, job_id = _run_manager(client, pool, tmp_path, POOL_IDENTITY_CLIENT_ID=POOL_IDENTITY.client_id)
    assert manager.execution_info.exit_code == 0, output + read_task_file(client, job_id, "manager", "stderr.txt")
    assert output == "[('part-0', 0), ('part-1', 0), ('part-2', 0)]\n"
    assert read_task_file(client, job_id, "part-2") == "2\n"


def test_without_a_pool_identity_there_is_no_batch_token(stack, client, tmp_path):
    pool = _pool_with_identity(stack, client, ())
    manager, output, job_id = _run_manager(client, pool, tmp_path)
    assert manager.execution_info.exit_code == 3 and output.startswith("NO TOKEN:"), output
    assert [task.id for task in client.list_tasks(job_id)] == ["manager"]
