"""A node's VM extensions (as the pool declares them, with the provisioning state a local node can
honestly give) and upload_node_logs to a real blob container in Azurite, through the real SDK."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .support import create_job, pool_options, run_task, unique_id, wait_for, wait_for_nodes

KEY_VAULT_EXTENSION = models.VMExtension(
    name="KVForLinux", publisher="Microsoft.Azure.KeyVault", type="KeyVaultForLinux", type_handler_version="3.0",
    auto_upgrade_minor_version=True, settings={"secretsManagementSettings": "{}"},
    protected_settings={"secret": "do-not-echo-me"})


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details or []}


def _pool_with_extension(client) -> str:
    pool_id = unique_id("ext")
    options = pool_options(pool_id, nodes=1)
    options.virtual_machine_configuration.extensions = [KEY_VAULT_EXTENSION]
    client.create_pool(options)
    return pool_id


def test_nodes_report_the_pools_extensions_as_provisioned_without_their_secrets(client):
    pool_id = _pool_with_extension(client)
    node = wait_for_nodes(client, pool_id, 1)[0]
    [extension] = list(client.list_node_extensions(pool_id, node.id))
    assert extension.provisioning_state == "Succeeded"
    assert extension.vm_extension.name == "KVForLinux" and extension.vm_extension.type == "KeyVaultForLinux"
    assert extension.vm_extension.type_handler_version == "3.0" and extension.vm_extension.settings
    assert extension.vm_extension.protected_settings is None
    status = extension.instance_view.statuses[0]
    assert extension.instance_view.name == "KVForLinux"
    assert status.code == "ProvisioningState/succeeded" and "does not run" in status.message
    single = client.get_node_extension(pool_id, node.id, "KVForLinux")
    assert single.vm_extension.publisher == "Microsoft.Azure.KeyVault"
    pool = client.get_pool(pool_id)
    assert pool.virtual_machine_configuration.extensions[0].protected_settings is None
    with pytest.raises(ResourceNotFoundError):
        client.get_node_extension(pool_id, node.id, "NoSuchExtension")


def test_a_node_being_created_reports_its_extensions_creating(server, client):
    with server.holding("node_creating"):
        pool_id = _pool_with_extension(client)
        node = wait_for(lambda: list(client.list_nodes(pool_id)), "the node to exist")[0]
        assert node.state == "creating"
        [extension] = list(client.list_node_extensions(pool_id, node.id))
        assert extension.provisioning_state == "Creating"
    wait_for_nodes(client, pool_id, 1)
    assert next(iter(client.list_node_extensions(pool_id, node.id))).provisioning_state == "Succeeded"


def test_a_node_without_extensions_lists_none(client, pool_id):
    node = next(iter(client.list_nodes(pool_id)))
    assert list(client.list_node_extensions(pool_id, node.id)) == []


# ---- node logs -----------------------------------------------------------------------------------
def _container_sas_url(container, permission: ContainerSasPermissions) -> str:
    sas = generate_container_sas(container.account_name, container.container_name,
                                 account_key=container.credential.account_key, permission=permission,
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return f"{container.url}?{sas}"


def test_upload_node_logs_puts_the_nodes_task_logs_in_the_container(client, pool_id, container):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'echo logged-line; echo oops >&2'")
    node_id = task.node_info.node_id
    url = _container_sas_url(container, ContainerSasPermissions(write=True, create=True))
    result = client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
        container_url=url, start_time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
    assert result.virtual_directory_name.startswith(f"{pool_id}/{node_id}/")
    blobs = sorted(blob.name for blob in container.list_blobs(name_starts_with=result.virtual_directory_name))
    assert len(blobs) == result.number_of_files_uploaded >= 2
    prefix = f"{result.virtual_directory_name}/workitems/{job_id}/job-1/{task.id}/"
    assert prefix + "stdout.txt" in blobs and prefix + "stderr.txt" in blobs
    assert container.download_blob(prefix + "stdout.txt").readall() == b"logged-line\n"
    later = client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
        container_url=url, start_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
    assert later.number_of_files_uploaded == 0 and later.virtual_directory_name != result.virtual_directory_name


def test_a_container_that_refuses_the_upload_is_a_400_without_the_signature(client, pool_id, container):
    job_id = create_job(client, pool_id)
    node_id = run_task(client, job_id, "/bin/echo hi").node_info.node_id
    url = _container_sas_url(container, ContainerSasPermissions(read=True, list=True))
    with pytest.raises(HttpResponseError) as caught:
        client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
            container_url=url, start_time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
    assert caught.value.status_code == 400
    details = _details(caught.value)
    assert details["PropertyName"] == "containerUrl" and "403" in details["Reason"]
    assert "sig=" not in str(caught.value) and url.split("sig=")[1].split("&")[0] not in str(caught.value)


def test_upload_node_logs_errors(client, pool_id):
    node_id = next(iter(client.list_nodes(pool_id))).id
    now = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(HttpResponseError) as caught:
        client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
            container_url="http://127.0.0.1:9/c?sv=x", start_time=now,
            identity_reference=models.BatchNodeIdentityReference(resource_id="/subscriptions/x")))
    # The pool has no identity at all (identities are given through the management plane).
    assert caught.value.status_code == 400 and _details(caught.value)["PropertyName"] == "identityReference.resourceId"
    assert "/subscriptions/x" in _details(caught.value)["Reason"]
    with pytest.raises(HttpResponseError) as caught:
        client.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
            container_url="http://127.0.0.1:9/c", start_time=now, end_time=now - dt.timedelta(hours=1)))
    assert caught.value.status_code == 400 and _details(caught.value)["PropertyName"] == "endTime"
    with pytest.raises(ResourceNotFoundError) as caught:
        client.upload_node_logs(pool_id, "tvmps_nosuchnode_d", models.UploadBatchServiceLogsOptions(
            container_url="http://127.0.0.1:9/c", start_time=now))
    assert caught.value.error.code == "NodeNotFound"


def test_the_aio_client_lists_extensions_and_uploads_logs(server, client, container):
    pool_id = _pool_with_extension(client)
    node_id = wait_for_nodes(client, pool_id, 1)[0].id
    url = _container_sas_url(container, ContainerSasPermissions(write=True, create=True))

    async def scenario():
        credential = AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)
        async with AsyncBatchClient(server.url, credential) as batch:
            names = [extension.vm_extension.name async for extension in batch.list_node_extensions(pool_id, node_id)]
            result = await batch.upload_node_logs(pool_id, node_id, models.UploadBatchServiceLogsOptions(
                container_url=url, start_time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
            return names, result
    names, result = asyncio.run(scenario())
    assert names == ["KVForLinux"]
    # The node ran no start task and no task: its only log is its agent's.
    assert result.virtual_directory_name.startswith(f"{pool_id}/{node_id}/") and result.number_of_files_uploaded == 1
    assert [blob.name for blob in container.list_blobs(name_starts_with=result.virtual_directory_name)] == [
        f"{result.virtual_directory_name}/agent-debug.log"]
