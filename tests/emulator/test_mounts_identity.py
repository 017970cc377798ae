"""Blob containers mounted through a node identity (identityReference): the mount helper gets
Storage tokens for one of the pool's user-assigned identities from the node's managed identity
endpoint, against Azurite over https with `--oauth basic` (as the local stack runs it). The
identity is given to the pool through the management plane, as on Azure."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from azure.batch import models
from azure.mgmt.batch import models as arm
from azure.storage.blob import BlobServiceClient, ContainerClient

from common.local import start_azurite
from localbatch import LocalBatchServer
from localbatch.accounts import AZURITE_ACCOUNT_KEY, AZURITE_ACCOUNT_NAME, azurite_connection_string
from localbatch.arm.identities import POOL_IDENTITY, UNPRIVILEGED_IDENTITY
from localbatch.identity.certificates import ensure_development_certificates
from localbatch.node.blobmount.manager import fuse_unavailable_reason
from localbatch.node.network import random_node_subnet

from .conftest import fast_timings
from .services_support import ACCOUNT, RESOURCE_GROUP, ServicesStack, arm_pool
from .support import batch_client, create_job, read_task_file, run_task, unique_id, wait_for_nodes
from .test_mounts import MOUNT_WAIT, delete_pool_and_wait, error_details, fuse_mounts_below, shell

pytestmark = pytest.mark.skipif(fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason()))



@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServicesStack, str]]:
    """localbatch with its management plane, whose auto-storage is an Azurite over https that takes
    bearer tokens; and that Azurite's blob endpoint."""
    location = tmp_path_factory.mktemp("localbatch-mount-identity")
    certificates = ensure_development_certificates(Path(location) / "tls")
    with pytest.MonkeyPatch.context() as patch:  # only while it starts: its readiness probe trusts the CA too
        patch.setenv("SSL_CERT_FILE", str(certificates.trust_bundle))
        azurite = start_azurite(location / "azurite", certificate=(certificates.server_certificate,
                                                                   certificates.server_key))
    try:
        with _server(location / "state", certificates, azurite.blob_endpoint, random_node_subnet()) as server:
            yield ServicesStack(server, certificates), azurite.blob_endpoint
    finally:
        azurite.stop()


def _server(location: Path, certificates, blob_endpoint: str, subnet: str) -> LocalBatchServer:
    return LocalBatchServer(str(location), timings=fast_timings(), services_port=0,
                            services_cert=str(certificates.server_certificate), services_key=str(certificates.server_key),
                            node_ca_bundle=str(certificates.trust_bundle), node_subnet=subnet,
                            auto_storage_connection_string=azurite_connection_string(blob_endpoint))


@pytest.fixture
def container(stack) -> Iterator[ContainerClient]:
    services, blob_endpoint = stack
    service = BlobServiceClient(blob_endpoint, credential={"account_name": AZURITE_ACCOUNT_NAME,
                                                           "account_key": AZURITE_ACCOUNT_KEY},
                                connection_verify=services.trust_bundle)
    created = service.create_container(unique_id("c").lower())
    created.upload_blob("inputs/data.txt", b"read through the pool's identity\n")
    yield created
    created.delete_container()


def _identity_mount(container: str, identity=POOL_IDENTITY) -> arm.MountConfiguration:
    return arm.MountConfiguration(azure_blob_file_system_configuration=arm.AzureBlobFileSystemConfiguration(
        account_name=AZURITE_ACCOUNT_NAME, container_name=container, relative_mount_path="data",
        identity_reference=arm.ComputeNodeIdentityReference(resource_id=identity.resource_id)))


def _create_arm_pool(services: ServicesStack, pool_id: str, mounts: list) -> None:
    services.management_client().pool.create(RESOURCE_GROUP, ACCOUNT, pool_id,
                                             arm_pool((POOL_IDENTITY,), mount_configuration=mounts))


def test_a_container_mounted_through_the_pools_identity_is_read_and_written(stack, container):
    services, _ = stack
    pool_id = unique_id("identity-mounts")
    _create_arm_pool(services, pool_id, [_identity_mount(container.container_name)])
    with batch_client(services.server.url) as client:
        node = wait_for_nodes(client, pool_id, 1, timeout=MOUNT_WAIT)[0]
        blob = client.get_pool(pool_id).mount_configuration[0].azure_blob_file_system_configuration
        assert blob.identity_reference.resource_id == POOL_IDENTITY.resource_id
        job_id = create_job(client, pool_id)
        task = run_task(client, job_id, shell(
            'set -e; cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/inputs/data.txt"; echo out > "$AZ_BATCH_NODE_MOUNTS_DIR/data/out.txt"'))
        assert task.execution_info.result == "success", read_task_file(client, job_id, task.id, "stderr.txt")
        assert read_task_file(client, job_id, task.id) == "read through the pool's identity\n"
        assert container.download_blob("out.txt").readall() == b"out\n"
        root = Path(services.server.location) / "nodes" / pool_id.lower() / node.id
        delete_pool_and_wait(client, pool_id)
    assert fuse_mounts_below(root) == []


def test_an_identity_the_pool_does_not_have_fails_the_mount_naming_it(stack, container):
    services, _ = stack
    pool_id = unique_id("identity-mounts")
    _create_arm_pool(services, pool_id, [_identity_mount(container.container_name, UNPRIVILEGED_IDENTITY)])
    with batch_client(services.server.url) as client:
        node = wait_for_nodes(client, pool_id, 1, states=("unusable",), timeout=MOUNT_WAIT)[0]
        assert node.errors[0].code == "MountConfigurationError"
        message = error_details(node)["Message"]
        assert "Identity not found" in message or UNPRIVILEGED_IDENTITY.resource_id in message, message
        delete_pool_and_wait(client, pool_id)


def test_a_data_plane_pool_has_no_identity_so_its_identity_mount_fails(stack, container):
    services, _ = stack
    pool_id = unique_id("identity-mounts")
    with batch_client(services.server.url) as client:
        client.create_pool(models.BatchPoolCreateOptions(
            id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(publisher="canonical",
                                                             offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
                node_agent_sku_id="batch.node.ubuntu 22.04"),
            mount_configuration=[models.MountConfiguration(
                azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
                    account_name=AZURITE_ACCOUNT_NAME, container_name=container.container_name,
                    relative_mount_path="data", identity_reference=models.BatchNodeIdentityReference(
                        resource_id=POOL_IDENTITY.resource_id)))]))
        node = wait_for_nodes(client, pool_id, 1, states=("unusable",), timeout=MOUNT_WAIT)[0]
        assert node.errors[0].code == "MountConfigurationError"
        delete_pool_and_wait(client, pool_id)


def test_after_a_restart_a_node_mounting_through_its_identity_boots_again_and_mounts(stack, container, tmp_path):
    services, blob_endpoint = stack
    location, subnet, pool_id = tmp_path / "state", random_node_subnet(), unique_id("identity-mounts")
    with _server(location, services.certificates, blob_endpoint, subnet) as first:
        _create_arm_pool(ServicesStack(first, services.certificates), pool_id, [_identity_mount(container.container_name)])
        with batch_client(first.url) as client:
            node = wait_for_nodes(client, pool_id, 1, timeout=MOUNT_WAIT)[0]
    point = location / "nodes" / pool_id.lower() / node.id / "fsmounts" / "data"
    assert fuse_mounts_below(location) == []
    with _server(location, services.certificates, blob_endpoint, subnet) as second, batch_client(second.url) as client:
        node = wait_for_nodes(client, pool_id, 1, timeout=MOUNT_WAIT)[0]
        assert node.last_boot_time is not None and not node.errors
        assert fuse_mounts_below(location) == [(str(point), "fuse.blobfuse2")]
        job_id = create_job(client, pool_id)
        task = run_task(client, job_id, shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/inputs/data.txt"'))
        assert read_task_file(client, job_id, task.id) == "read through the pool's identity\n"
    assert fuse_mounts_below(location) == []
