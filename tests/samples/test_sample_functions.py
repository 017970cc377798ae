"""Each function a sample defines, copied out as a reader would and run on its own against the local stack.

``copy_function`` defines the function again from its source text alone, in a namespace holding
only the Azure SDK names its sample imports and the helpers it names: a function that needs a
settings object, a module constant or another function of the sample fails here.
"""

from __future__ import annotations

import contextlib
import urllib.request
from datetime import timedelta
from typing import Iterator

import pytest
from azure.batch import BatchClient, models
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyOperation
from azure.keyvault.keys.crypto import CryptographyClient
from azure.storage.blob import BlobServiceClient

import sample1_helloworld
import sample2_pools_and_resourcefiles
import sample3_encrypted_resourcefiles
from common import REPOSITORY_ROOT
from common.config import SampleSettings, sample_configuration_path
from common.helpers import (
    enum_value,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
)
from common.local import LocalStack
from common.storage import create_read_only_blob_sas_url
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
