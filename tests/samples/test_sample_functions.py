"""Each function a sample defines, copied out as a reader would and run on its own against the local stack.

``copy_function`` defines the function again from its source text alone, in a namespace holding
only the Azure SDK names its sample imports and the helpers it names: a function that needs a
settings object, a module constant or another function of the sample fails here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import stat
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import docker
import paramiko
import pytest
from azure.batch import BatchClient, models
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyOperation
from azure.keyvault.keys.crypto import CryptographyClient
from azure.storage.blob import BlobServiceClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import sample1_helloworld
import sample2_pools_and_resourcefiles
import sample3_encrypted_resourcefiles
import sample4_docker_swarm
from common import REPOSITORY_ROOT
from common.cleanup import CleanupReport
from common.config import SampleSettings, sample_configuration_path
from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    enum_value,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
)
from common.local import LocalStack
from common.storage import create_read_only_blob_sas_url
from localbatch.node.engines import docker_unavailable_reason
from resources.key_vault_key_wrapper import KeyVaultKeyWrapper
from tests.copyability import copy_function, copyable_functions

WAIT = timedelta(minutes=2)
TESTED = {
    sample1_helloworld: {"create_job_with_auto_pool", "add_hello_world_task"},
    sample2_pools_and_resourcefiles: {"upload_task_script", "create_pool_with_start_task", "create_job_on_pool",
                                      "add_simple_task"},
    sample3_encrypted_resourcefiles: {"create_key_client", "create_management_client", "create_key_encryption_key",
                                      "upload_encrypted_file", "upload_node_files", "create_pool_with_managed_identity",
                                      "add_decrypt_task", "delete_key"},
    sample4_docker_swarm: {"generate_ssh_key_pair", "ssh_fingerprint", "start_task_command_line", "create_swarm_pool",
                           "choose_swarm_manager", "add_swarm_init_task", "read_swarm_init_output",
                           "add_swarm_join_tasks", "container_task", "describe_where_task_ran",
                           "add_node_user_to_nodes", "delete_node_user_from_nodes", "get_remote_login_address",
                           "connect_with_pinned_host_key", "describe_swarm", "start_container_and_read_its_output",
                           "write_tunnel_script"},
}


def test_every_copyable_function_of_the_samples_is_exercised_here() -> None:
    for module, tested in TESTED.items():
        assert {function.__name__ for function in copyable_functions(module)} == tested


@pytest.fixture
def job_ids(local_batch_client: BatchClient) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for job_id in created:  # a job the function under test failed to create is not an error here
        with contextlib.suppress(ResourceNotFoundError):
            local_batch_client.begin_delete_job(job_id, polling_interval=0.1).result()


def test_sample1_functions_on_their_own(local_batch_client: BatchClient, job_ids: list[str]) -> None:
    create_job_with_auto_pool = copy_function(sample1_helloworld, "create_job_with_auto_pool")
    add_hello_world_task = copy_function(sample1_helloworld, "add_hello_world_task")
    image = select_verified_linux_image(local_batch_client, offer="0001-com-ubuntu-server-jammy")
    job_id = unique_resource_name("copied-sample1")
    job_ids.append(job_id)

    assert create_job_with_auto_pool(local_batch_client, job_id, "standard_d2s_v3", 1, image) is True
    assert create_job_with_auto_pool(local_batch_client, job_id, "standard_d2s_v3", 1, image) is False
    assert add_hello_world_task(local_batch_client, job_id, "greeting") == "greeting"

    spec = local_batch_client.get_job(job_id).pool_info.auto_pool_specification
    assert (spec.pool.vm_size, spec.pool.target_dedicated_nodes) == ("standard_d2s_v3", 1)
    [task] = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.1)
    assert (task.id, task.execution_info.exit_code) == ("greeting", 0)
    stdout = b"".join(local_batch_client.download_task_file(job_id, "greeting", "stdout.txt")).decode()
    assert stdout.startswith("Hello world from task greeting on node ")


def test_sample2_functions_on_their_own(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient, job_ids: list[str]
) -> None:
    upload_task_script = copy_function(sample2_pools_and_resourcefiles, "upload_task_script")
    create_pool_with_start_task = copy_function(sample2_pools_and_resourcefiles, "create_pool_with_start_task")
    create_job_on_pool = copy_function(sample2_pools_and_resourcefiles, "create_job_on_pool")
    add_simple_task = copy_function(sample2_pools_and_resourcefiles, "add_simple_task")
    script = REPOSITORY_ROOT / "resources" / "simple_task.py"
    container_name = unique_resource_name("copied-sample2")
    pool_id, job_id = unique_resource_name("copied-sample2-pool"), unique_resource_name("copied-sample2-job")
    try:
        url = upload_task_script(local_blob_service_client, container_name, script, timedelta(minutes=5))
        with urllib.request.urlopen(url, timeout=30) as answer:  # the SAS URL alone reads the script
            assert answer.read() == script.read_bytes()

        image = select_verified_linux_image(local_batch_client, offer="0001-com-ubuntu-server-jammy")
        assert create_pool_with_start_task(local_batch_client, pool_id, "standard_d2s_v3", 1, image, url, script.name)
        job_ids.append(job_id)
        assert create_job_on_pool(local_batch_client, job_id, pool_id) is True
        assert add_simple_task(local_batch_client, job_id, script.name, "copied-task") == "copied-task"

        start_task = local_batch_client.get_pool(pool_id).start_task
        assert start_task.resource_files[0].http_url == url and start_task.wait_for_success
        assert enum_value(start_task.user_identity.auto_user.scope) == "pool"
        [task] = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.1)
        assert (task.id, task.execution_info.exit_code) == ("copied-task", 0)
    finally:
        with contextlib.suppress(ResourceNotFoundError):
            local_batch_client.begin_delete_pool(pool_id, polling_interval=0.1).result()
        with contextlib.suppress(ResourceNotFoundError):
            local_blob_service_client.delete_container(container_name)


def test_sample3_functions_on_their_own(
    local_stack: LocalStack, local_settings: SampleSettings, local_batch_client: BatchClient,
    local_blob_service_client: BlobServiceClient, job_ids: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    sample3 = sample3_encrypted_resourcefiles
    copied = {name: copy_function(sample3, name) for name in TESTED[sample3]}
    encryption = sample3.EncryptionSettings.load(sample_configuration_path(sample3.__file__))
    resources = REPOSITORY_ROOT / "resources"
    secret = resources / "secret.txt"
    node_files = ["prepare_node.sh", "task_requirements.txt", "decrypt_secret_task.py", "key_vault_key_wrapper.py"]
    key_name, container_name = unique_resource_name("copied-sample3-key"), unique_resource_name("copied-sample3")
    pool_id, job_id = unique_resource_name("copied-sample3-pool"), unique_resource_name("copied-sample3-job")
    for name, value in local_stack.client_environment().items():  # DefaultAzureCredential gets the stack's tokens
        monkeypatch.setenv(name, value)
    with DefaultAzureCredential() as credential:
        key_client = copied["create_key_client"](local_stack.services_endpoint, credential, True, 10)
        management_client = copied["create_management_client"](
            credential, encryption.subscription_id, local_stack.services_endpoint, 10)
        try:
            key = copied["create_key_encryption_key"](key_client, key_name, timedelta(hours=1), 2048)
            assert (key.name, len(key.key.n)) == (key_name, 256)
            assert set(key.key_operations) == {KeyOperation.wrap_key, KeyOperation.unwrap_key}

            local_blob_service_client.create_container(container_name)
            wrapper = KeyVaultKeyWrapper(CryptographyClient(key, credential, verify_challenge_resource=False))
            blob_name = copied["upload_encrypted_file"](local_blob_service_client, container_name, secret, wrapper)
            stored = local_blob_service_client.get_blob_client(container_name, blob_name).download_blob().readall()
            assert secret.read_bytes().strip() not in stored  # Storage holds ciphertext only
            blob_url = create_read_only_blob_sas_url(local_blob_service_client, container_name, blob_name,
                                                     timedelta(minutes=30))
            files = copied["upload_node_files"](local_blob_service_client, container_name,
                                                [resources / name for name in node_files], timedelta(minutes=30))
            assert [resource_file.file_path for resource_file in files] == node_files

            image = select_verified_linux_image(local_batch_client, offer="0001-com-ubuntu-server-jammy")
            pool = copied["create_pool_with_managed_identity"](
                management_client, encryption.resource_group, local_settings.batch.account_name, pool_id,
                "standard_d2s_v3", 1, image, encryption.identity_resource_id, files)
            assert list(pool.identity.user_assigned_identities) == [encryption.identity_resource_id]
            wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, WAIT, poll_interval_seconds=0.1)
            job_ids.append(job_id)
            local_batch_client.create_job(models.BatchJobCreateOptions(
                id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
            assert copied["add_decrypt_task"](local_batch_client, job_id, blob_url, encryption.identity_client_id,
                                              True, "copied-decrypt") == "copied-decrypt"
            [task] = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.1)
            assert (task.id, task.execution_info.exit_code) == ("copied-decrypt", 0)
            stdout = b"".join(local_batch_client.download_task_file(job_id, "copied-decrypt", "stdout.txt")).decode()
            assert stdout == f"Decrypted secret:\n{secret.read_text()}\n"
        finally:
            with contextlib.suppress(ResourceNotFoundError):
                local_batch_client.begin_delete_pool(pool_id, polling_interval=0.1).result()
            with contextlib.suppress(ResourceNotFoundError):
                local_blob_service_client.delete_container(container_name)
            deleted = copied["delete_key"](key_client, key_name, True)
        assert deleted is True
        assert copied["delete_key"](key_client, key_name, True) is False  # deleted and purged: nothing left
        with pytest.raises(ResourceNotFoundError):
            key_client.get_deleted_key(key_name)


@pytest.mark.skipif(docker_unavailable_reason() is not None, reason=str(docker_unavailable_reason()))
def test_sample4_functions_on_their_own(local_batch_client: BatchClient, job_ids: list[str], tmp_path: Path) -> None:
    """A two-node swarm built, reached over SSH and driven by sample 4's functions, each copied out alone."""
    f = SimpleNamespace(**{name: copy_function(sample4_docker_swarm, name) for name in TESTED[sample4_docker_swarm]})
    pool_id, job_id = unique_resource_name("copied-sample4-pool"), unique_resource_name("copied-sample4-job")
    try:
        private_key, public_key = f.generate_ssh_key_pair()
        assert public_key.startswith("ssh-rsa ") and private_key.key_size == 3072
        assert f.ssh_fingerprint(public_key) == paramiko.RSAKey(key=private_key).fingerprint

        image = select_verified_linux_image(local_batch_client, "microsoft-dsvm", "ubuntu-hpc", "2204",
                                            required_capability="DockerCompatible")
        start_task = f.start_task_command_line(REPOSITORY_ROOT / "resources" / "docker_engine_on_localhost.sh")
        arguments = (local_batch_client, pool_id, "standard_d2s_v3", 2, image, ["busybox"], "127.0.0.1/32",
                     (15000, 15099), start_task)
        assert f.create_swarm_pool(*arguments) is True
        assert f.create_swarm_pool(*arguments) is False
        pool = local_batch_client.get_pool(pool_id)
        [nat_pool] = pool.network_configuration.endpoint_configuration.inbound_nat_pools
        assert (nat_pool.backend_port, pool.enable_inter_node_communication) == (22, True)
        assert [(rule.source_address_prefix, enum_value(rule.access)) for rule in nat_pool.network_security_group_rules] \
            == [("127.0.0.1/32", "allow"), ("*", "deny")]
        assert pool.virtual_machine_configuration.container_configuration.container_image_names == ["busybox"]

        nodes = wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, WAIT, poll_interval_seconds=0.2)
        manager = f.choose_swarm_manager(nodes)
        assert ipaddress.ip_address(manager.ip_address) == min(ipaddress.ip_address(node.ip_address) for node in nodes)
        [worker] = [node for node in nodes if node.id != manager.id]

        job_ids.append(job_id)
        create_job_if_not_exists(local_batch_client, models.BatchJobCreateOptions(
            id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
        assert f.add_swarm_init_task(local_batch_client, job_id, manager, "init") == "init"
        [init] = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.2)
        assert f.describe_where_task_ran(init, manager.id) == \
            f"task init: success, exit code 0, ran on node {manager.id} (as asked)"
        join_token, host_key_line = f.read_swarm_init_output(local_batch_client, job_id, "init")
        assert join_token.startswith("SWMTKN-") and host_key_line.split()[:2] == [manager.ip_address, "ssh-ed25519"]

        [join_id] = f.add_swarm_join_tasks(local_batch_client, job_id, [worker], manager.ip_address, join_token)
        add_tasks(local_batch_client, job_id, [f.container_task("busybox", "in-a-container")])
        tasks = {task.id: task for task in wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.2)}
        assert f.describe_where_task_ran(tasks[join_id], worker.id).endswith(f"ran on node {worker.id} (as asked)")
        assert join_token not in local_batch_client.get_task(job_id, join_id).command_line
        assert tasks["in-a-container"].execution_info.exit_code == 0
        container_output = b"".join(local_batch_client.download_task_file(job_id, "in-a-container", "stdout.txt"))
        assert container_output.decode().startswith("Hello from task in-a-container, in a container of image busybox")

        node_ids = [node.id for node in nodes]
        expiry = datetime.now(timezone.utc) + timedelta(hours=1)
        f.add_node_user_to_nodes(local_batch_client, pool_id, node_ids, "copied", public_key, expiry)
        f.add_node_user_to_nodes(local_batch_client, pool_id, node_ids, "copied", public_key, expiry)  # replaced
        address, port = f.get_remote_login_address(local_batch_client, pool_id, manager.id)
        ssh_client = f.connect_with_pinned_host_key(address, port, "copied", private_key, host_key_line, 30)
        try:
            assert ssh_client.get_transport().is_authenticated()
        finally:
            ssh_client.close()
        other_host_key = f"{address} " + ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        with pytest.raises(paramiko.SSHException, match=r"not the pinned ssh-ed25519 SHA256:\S+ that the node printed"):
            f.connect_with_pinned_host_key(address, port, "copied", private_key, other_host_key, 30)

        engine = docker.DockerClient(base_url=f"tcp://{manager.ip_address}:2375", timeout=30)
        try:
            assert "swarm active, 2 node(s), 1 manager(s)" in f.describe_swarm(engine)[0]
            assert f.start_container_and_read_its_output(engine, "busybox", ["echo", "copied"], 60) == "copied\n"
        finally:
            engine.close()

        script = f.write_tunnel_script(tmp_path, pool_id, address, port, "copied", private_key, host_key_line)
        assert script == tmp_path / f"{pool_id}-tunnel.sh" and script.stat().st_mode & stat.S_IXUSR
        assert stat.S_IMODE((tmp_path / f"{pool_id}-ssh-key").stat().st_mode) == 0o600
        assert (tmp_path / f"{pool_id}-known-hosts").read_text() == \
            f"[{address}]:{port} {' '.join(host_key_line.split()[1:3])}\n"

        report = CleanupReport()
        f.delete_node_user_from_nodes(local_batch_client, pool_id, node_ids, "copied", report)
        assert (report.deleted, report.failed, report.not_reached) == \
            ([f"user copied on node {node_id}" for node_id in node_ids], [], [])
        with pytest.raises(paramiko.AuthenticationException):
            f.connect_with_pinned_host_key(address, port, "copied", private_key, host_key_line, 30).close()
    finally:
        with contextlib.suppress(ResourceNotFoundError):
            local_batch_client.begin_delete_pool(pool_id, polling_interval=0.1).result()
