"""Batch reading and writing blobs through a node identity (identityReference): resource files,
output files and node log uploads, against Azurite over https with `--oauth basic`, which takes
only a bearer token (no SAS is given). The identity must be one of the pool's user-assigned
identities (given through the management plane); any other is refused, naming it."""
from __future__ import annotations

import datetime as dt
from typing import Iterator

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient

from common.local import start_azurite
from localbatch.accounts import AZURITE_ACCOUNT_KEY, AZURITE_ACCOUNT_NAME
from localbatch.arm.identities import POOL_IDENTITY, UNPRIVILEGED_IDENTITY

from .services_support import ACCOUNT, RESOURCE_GROUP, ServicesStack, arm_pool, services  # noqa: F401  (fixture)
from .support import batch_client, create_job, read_task_file, run_task, unique_id, wait_for_nodes



@pytest.fixture(scope="module")
def client(services: ServicesStack):
    with batch_client(services.server.url) as batch:
        yield batch


@pytest.fixture(scope="module")
def blob_service(services: ServicesStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobServiceClient]:
    """Azurite over https with --oauth basic (the development CA's certificate), as the local stack runs it."""
    certificates = services.certificates
    with pytest.MonkeyPatch.context() as patch:  # only while it starts: its readiness probe trusts the CA too
        patch.setenv("SSL_CERT_FILE", services.trust_bundle)
        azurite = start_azurite(tmp_path_factory.mktemp("azurite-oauth"),
                                certificate=(certificates.server_certificate, certificates.server_key))
    try:
        yield BlobServiceClient(azurite.blob_endpoint, credential={"account_name": AZURITE_ACCOUNT_NAME,
                                                                   "account_key": AZURITE_ACCOUNT_KEY},
                                connection_verify=services.trust_bundle)
    finally:
        azurite.stop()


@pytest.fixture(scope="module")
def pool_id(services: ServicesStack, client) -> str:
    """A pool with the well-known user-assigned identity, created through the management plane."""
    pool = unique_id("identity-pool")
    services.management_client().pool.create(RESOURCE_GROUP, ACCOUNT, pool, arm_pool((POOL_IDENTITY,), nodes=1))
    wait_for_nodes(client, pool, 1)
    return pool


@pytest.fixture
def container(blob_service: BlobServiceClient) -> ContainerClient:
    created = blob_service.create_container(unique_id("c"))
    yield created
    created.delete_container()


def _reference(identity=POOL_IDENTITY) -> models.BatchNodeIdentityReference:
    return models.BatchNodeIdentityReference(resource_id=identity.resource_id)


def test_resource_files_are_downloaded_with_the_pools_identity(client, pool_id, container):
    container.upload_blob("inputs/a.txt", b"alpha")
    container.upload_blob("inputs/b.txt", b"beta")
    container.upload_blob("single.txt", b"single")
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'cat data/inputs/a.txt data/inputs/b.txt one.txt'", resource_files=[
        models.ResourceFile(storage_container_url=container.url, blob_prefix="inputs/", file_path="data",
                            identity_reference=_reference()),
        models.ResourceFile(http_url=f"{container.url}/single.txt", file_path="one.txt", identity_reference=_reference())])
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info
    assert read_task_file(client, job_id, task.id) == "alphabetasingle"


def test_without_the_identity_the_download_is_refused_by_storage(client, pool_id, container):
    container.upload_blob("single.txt", b"single")
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/cat one.txt", resource_files=[
        models.ResourceFile(http_url=f"{container.url}/single.txt", file_path="one.txt")])
    assert task.execution_info.failure_info.category == "usererror"
    # No credential at all: Storage refuses it (403), as it refuses an anonymous read of a private container.
    assert (task.execution_info.failure_info.code, task.execution_info.exit_code) == ("BlobAccessDenied", None)
    assert "HTTP 403" in task.execution_info.failure_info.message


def test_an_identity_that_is_not_the_pools_is_refused_naming_it(client, pool_id, container):
    container.upload_blob("single.txt", b"single")
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/cat one.txt", resource_files=[models.ResourceFile(
        http_url=f"{container.url}/single.txt", file_path="one.txt", identity_reference=_reference(UNPRIVILEGED_IDENTITY))])
    failure = task.execution_info.failure_info
    assert (failure.category, failure.code) == ("usererror", "BlobAccessDenied")
    assert UNPRIVILEGED_IDENTITY.resource_id in failure.message and task.execution_info.exit_code is None


def test_output_files_are_uploaded_with_the_pools_identity(client, pool_id, container):
    job_id = create_job(client, pool_id)

    def output(identity) -> models.OutputFile:
        return models.OutputFile(file_pattern="out.txt", destination=models.OutputFileDestination(
            container=models.OutputFileBlobContainerDestination(container_url=container.url, path=f"{identity.name}.txt",
                                                                identity_reference=_reference(identity))),
            upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"))
    task = run_task(client, job_id, "/bin/bash -c 'echo result > out.txt'", output_files=[output(POOL_IDENTITY)])
    assert task.execution_info.result == "success", task.execution_info.failure_info
    assert container.download_blob(f"{POOL_IDENTITY.name}.txt").readall() == b"result\n"
    refused = run_task(client, job_id, "/bin/bash -c 'echo result > out.txt'", output_files=[output(UNPRIVILEGED_IDENTITY)])
    failure = refused.execution_info.failure_info
    assert (failure.code, refused.execution_info.exit_code) == ("FileUploadMiscError", 0)
    assert UNPRIVILEGED_IDENTITY.resource_id in failure.message
    assert [blob.name for blob in container.list_blobs()] == [f"{POOL_IDENTITY.name}.txt"]


def test_node_logs_are_uploaded_with_the_pools_identity(client, pool_id, container):
    job_id = create_job(client, pool_id)
    node_id = run_task(client, job_id, "/bin/echo logged").node_info.node_id
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    result = client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
        container_url=container.url, start_time=since, identity_reference=_reference()))
    names = {blob.name for blob in container.list_blobs()}
    assert result.number_of_files_uploaded == len(names) > 0
    assert all(name.startswith(result.virtual_directory_name + "/") for name in names)
    with pytest.raises(HttpResponseError) as caught:
        client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
            container_url=container.url, start_time=since, identity_reference=_reference(UNPRIVILEGED_IDENTITY)))
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "identityReference.resourceId"
    assert UNPRIVILEGED_IDENTITY.resource_id in details["Reason"]


def test_a_multi_instance_tasks_common_resource_files_come_through_the_identity_on_every_node(services, client,
                                                                                             container):
    pool = unique_id("identity-mpi-pool")
    services.management_client().pool.create(RESOURCE_GROUP, ACCOUNT, pool, arm_pool((POOL_IDENTITY,), nodes=2, inter_node_communication="Enabled"))
    wait_for_nodes(client, pool, 2)
    container.upload_blob("common.txt", b"common")
    job_id = create_job(client, pool)
    task = run_task(client, job_id, "/bin/bash -c 'cat $AZ_BATCH_TASK_SHARED_DIR/common.txt'",
                    multi_instance_settings=models.MultiInstanceSettings(
                        number_of_instances=2, coordination_command_line="/bin/bash -c 'cat ../common.txt'",
                        common_resource_files=[models.ResourceFile(
                            http_url=f"{container.url}/common.txt", file_path="common.txt",
                            identity_reference=_reference())]))
    assert task.execution_info.result == "success", task.execution_info.failure_info
    assert read_task_file(client, job_id, task.id) == "common"
    [subtask] = client.list_subtasks(job_id, task.id)
    assert (subtask.exit_code, subtask.result) == (0, "success")
    assert b"".join(client.download_node_file(pool, subtask.node_info.node_id,
                                              f"{subtask.node_info.task_root_directory}/stdout.txt")) == b"common"
