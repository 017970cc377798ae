"""Encrypted inputs: keys made on demand in Key Vault, a pool managed identity, client-side encryption.

The sample creates an RSA key in Key Vault for this run (wrap and unwrap only, with an expiry),
uploads ``resources/secret.txt`` with azure-storage-blob's client-side encryption v2
(AES-256-GCM, the content key wrapped by the vault key), and creates a pool with a user-assigned
managed identity through the management plane (azure-mgmt-batch: the data-plane SDK cannot give
a pool an identity). The pool's start task installs the Azure SDK in a virtual environment on
each node. A task then gets a token for the identity on its node, downloads the blob, has the
vault unwrap its content key, and prints the secret; the sample prints the task's output. At the
end it deletes the job, pool and container, and deletes and purges the key, as configured.

Storage only ever holds ciphertext, the SAS URL only reveals ciphertext, and only the pool's
identity (and the key's managers) can unwrap the key: this replaces the old sample's openssl +
blobxfer + Batch certificate (retired on 2024-02-29). See README, "sample3".

    python sample3_encrypted_resourcefiles.py [--config PATH] [--sample-config PATH] [--keep-resources] [-v]
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Sequence

from azure.batch import BatchClient, models
from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyClient, KeyOperation, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient
from azure.mgmt.batch import BatchManagementClient
from azure.mgmt.batch import models as management_models
from azure.storage.blob import BlobServiceClient

from common import REPOSITORY_ROOT
from common.cleanup import CreatedResources, clean_up_resources, interrupts_deferred
from common.cli import configure_logging, parse_sample_arguments, print_cleanup_report, run_sample_main, step
from common.clients import create_batch_client, create_blob_service_client, create_default_azure_credential
from common.config import SampleSettings, load_settings, open_configuration_file, sample_configuration_path
from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    describe_batch_error,
    describe_task_result,
    print_task_output,
    raise_if_any_task_failed,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
    wrap_commands_in_shell,
)
from common.local import local_stack_if_configured
from common.storage import create_container_if_not_exists, create_read_only_blob_sas_url, upload_file_to_container
from resources.key_vault_key_wrapper import KeyVaultKeyWrapper

logger = logging.getLogger(__name__)

RESOURCES = REPOSITORY_ROOT / "resources"
SECRET_PATH = RESOURCES / "secret.txt"
# What the start task needs on each node: its script, the packages to install, and the task's files.
NODE_FILES = ("prepare_node.sh", "task_requirements.txt", "decrypt_secret_task.py", "key_vault_key_wrapper.py")
DECRYPT_TASK_ID = "decrypt-secret"


@dataclass(frozen=True)
class EncryptionSettings:
    """What sample 3 adds to the settings every sample has (its own .cfg file)."""

    vault_url: str
    key_valid_for: timedelta
    management_endpoint: str
    subscription_id: str
    resource_group: str
    identity_resource_id: str
    identity_client_id: str
    delete_key: bool
    purge_key: bool

    @classmethod
    def load(cls, sample_configuration: Path) -> "EncryptionSettings":
        """Read ``[KeyVault]``, ``[Management]``, ``[PoolIdentity]`` and the key's ``[Cleanup]`` keys."""
        config = open_configuration_file(sample_configuration)
        return cls(
            vault_url=config.url("KeyVault", "vault_url"),
            key_valid_for=timedelta(hours=config.number("KeyVault", "key_expiry_hours", default=24)),
            management_endpoint=config.url("Management", "endpoint", default="https://management.azure.com"),
            subscription_id=config.text("Management", "subscription_id"),
            resource_group=config.text("Management", "resource_group"),
            identity_resource_id=config.text("PoolIdentity", "resource_id"),
            identity_client_id=config.text("PoolIdentity", "client_id"),
            delete_key=config.boolean("Cleanup", "delete_key", default=True),
            purge_key=config.boolean("Cleanup", "purge_key", default=True),
        )


# ---- clients ------------------------------------------------------------------------------------
def create_key_client(
    vault_url: str, credential: TokenCredential, local_stack: bool = False, request_timeout_seconds: float = 30
) -> KeyClient:
    """Return a Key Vault ``KeyClient`` whose requests each wait at most ``request_timeout_seconds``.

    The Key Vault client checks that the resource its first 401 challenge names matches the
    vault's domain (``vault.azure.net``). The local stack's vault listens on 127.0.0.1, so the
    check is switched off for it, and only for it: on Azure keep the default.
    """
    return KeyClient(vault_url, credential, verify_challenge_resource=not local_stack,
                     connection_timeout=request_timeout_seconds, read_timeout=request_timeout_seconds)


def create_management_client(
    credential: TokenCredential, subscription_id: str, endpoint: str, request_timeout_seconds: float = 30
) -> BatchManagementClient:
    """Return a management-plane client (Azure Resource Manager) for Batch accounts and pools.

    Each request waits at most ``request_timeout_seconds`` to connect and for its answer.
    """
    return BatchManagementClient(credential, subscription_id, base_url=endpoint,
                                 connection_timeout=request_timeout_seconds, read_timeout=request_timeout_seconds)


# ---- the story ----------------------------------------------------------------------------------
def create_key_encryption_key(key_client: KeyClient, key_name: str, valid_for: timedelta, size: int = 3072) -> KeyVaultKey:
    """Create an RSA key of ``size`` bits that can only wrap and unwrap keys, and expires after ``valid_for``.

    After its expiry the vault still unwraps with it (old data stays readable) but wraps no more.
    """
    return key_client.create_rsa_key(
        key_name,
        size=size,
        key_operations=[KeyOperation.wrap_key, KeyOperation.unwrap_key],
        expires_on=datetime.now(timezone.utc) + valid_for,
    )


def upload_encrypted_file(
    blob_service_client: BlobServiceClient, container_name: str, file_path: Path, key_wrapper: KeyVaultKeyWrapper
) -> str:
    """Upload a file with client-side encryption v2 (AES-256-GCM); return the blob name.

    The content key is generated here, wrapped by ``key_wrapper`` and stored, wrapped, in the
    blob's metadata (``encryptiondata``); Storage never sees the plaintext or the content key.
    ``require_encryption`` makes the upload fail rather than store plaintext by mistake.
    """
    blob_client = blob_service_client.get_blob_client(container_name, file_path.name)
    blob_client.require_encryption = True
    blob_client.key_encryption_key = key_wrapper
    blob_client.encryption_version = "2.0"
    with file_path.open("rb") as data:
        blob_client.upload_blob(data, overwrite=True)
    return file_path.name


def upload_node_files(
    blob_service_client: BlobServiceClient, container_name: str, file_paths: Sequence[Path], valid_for: timedelta
) -> list[management_models.ResourceFile]:
    """Upload the files the start task needs (code, not secrets); return them as resource files."""
    resource_files = []
    for path in file_paths:
        blob_name = upload_file_to_container(blob_service_client, container_name, path)
        url = create_read_only_blob_sas_url(blob_service_client, container_name, blob_name, valid_for)
        resource_files.append(management_models.ResourceFile(http_url=url, file_path=path.name))
    return resource_files


def create_pool_with_managed_identity(
    management_client: BatchManagementClient,
    resource_group: str,
    account_name: str,
    pool_id: str,
    vm_size: str,
    node_count: int,
    virtual_machine_configuration: models.VirtualMachineConfiguration,
    identity_resource_id: str,
    start_task_files: Sequence[management_models.ResourceFile],
) -> management_models.Pool:
    """Create a pool with a user-assigned managed identity, through the management plane.

    Only the management plane can give a pool an identity; the data plane sees the same pool
    (its ``identity`` is read-only there). The start task, run as admin, prepares each node with
    ``prepare_node.sh``; ``wait_for_success`` keeps tasks off a node until it has succeeded.
    ``If-None-Match: *`` makes an existing pool of that name an error (``ResourceExistsError``)
    instead of an update of it.
    """
    image = virtual_machine_configuration.image_reference
    pool = management_models.Pool(
        identity=management_models.BatchPoolIdentity(
            type=management_models.PoolIdentityType.USER_ASSIGNED,
            user_assigned_identities={identity_resource_id: management_models.UserAssignedIdentities()},
        ),
        properties=management_models.PoolProperties(
            vm_size=vm_size,
            deployment_configuration=management_models.DeploymentConfiguration(
                virtual_machine_configuration=management_models.VirtualMachineConfiguration(
                    image_reference=management_models.ImageReference(
                        publisher=image.publisher, offer=image.offer, sku=image.sku, version=image.version or "latest"
                    ),
                    node_agent_sku_id=virtual_machine_configuration.node_agent_sku_id,
                )
            ),
            scale_settings=management_models.ScaleSettings(
                fixed_scale=management_models.FixedScaleSettings(target_dedicated_nodes=node_count)
            ),
            start_task=management_models.StartTask(
                command_line=wrap_commands_in_shell(["bash prepare_node.sh"]),
                resource_files=list(start_task_files),
                user_identity=management_models.UserIdentity(
                    auto_user=management_models.AutoUserSpecification(
                        scope=management_models.AutoUserScope.POOL,
                        elevation_level=management_models.ElevationLevel.ADMIN,
                    )
                ),
                max_task_retry_count=1,
                wait_for_success=True,
            ),
        ),
    )
    return management_client.pool.create(resource_group, account_name, pool_id, pool,
                                         match_condition=MatchConditions.IfMissing)


def add_decrypt_task(
    batch_client: BatchClient, job_id: str, blob_url: str, identity_client_id: str, local_stack: bool = False,
    task_id: str = "decrypt-secret",
) -> str:
    """Add the task that decrypts the blob with the pool's identity and prints it. Return its id.

    The task runs ``decrypt_secret_task.py`` with the virtual environment that ``prepare_node.sh``
    (the pool's start task) left in the node's shared directory.
    """
    arguments = ["--blob-url", blob_url, "--client-id", identity_client_id]
    if local_stack:
        arguments.append("--skip-challenge-resource-check")  # see create_key_client
    shared = '"$AZ_BATCH_NODE_SHARED_DIR"'
    command = f"{shared}/sdk/bin/python {shared}/decrypt_secret_task.py {shlex.join(arguments)}"
    task = models.BatchTaskCreateOptions(id=task_id, command_line=wrap_commands_in_shell([command]))
    add_tasks(batch_client, job_id, [task])
    return task.id


def delete_key(key_client: KeyClient, key_name: str, purge: bool) -> bool:
    """Delete the key and, if ``purge``, purge it. Return True if it was there, False if there was no such key.

    Once purged, whatever it wrapped can never be unwrapped again. A vault with purge protection
    keeps a deleted key until its retention ends; purging then fails with 403
    (``HttpResponseError``), and the key stays recoverable until that date.
    """
    try:
        key_client.begin_delete_key(key_name).wait()
    except ResourceNotFoundError:
        return False
    if purge:
        key_client.purge_deleted_key(key_name)
    return True


def run_encrypted_resource_files(
    batch_client: BatchClient,
    blob_service_client: BlobServiceClient,
    key_client: KeyClient,
    management_client: BatchManagementClient,
    settings: SampleSettings,
    encryption: EncryptionSettings,
    credential: TokenCredential,
    local_stack: bool = False,
    keep_resources: bool = False,
    resources: Optional[CreatedResources] = None,
) -> None:
    """Run the encrypted-resource-files story and print it; clean up as configured, whatever happens.

    What it creates is recorded in ``resources`` (a new record if not given) before it is
    created, and the cleanup report, the key included, is left there too.
    """
    resources = CreatedResources() if resources is None else resources
    pool, timeouts, poll_interval_seconds = settings.pool, settings.timeouts, settings.batch.poll_interval_seconds
    key_name: Optional[str] = None
    try:
        with step("select the image"):
            virtual_machine_configuration = select_verified_linux_image(
                batch_client, publisher=pool.image_publisher, offer=pool.image_offer, sku_prefix=pool.image_sku_prefix,
            )
        image = virtual_machine_configuration.image_reference
        print(f"Image: {image.publisher} {image.offer} {image.sku} "
              f"(node agent {virtual_machine_configuration.node_agent_sku_id})")

        key_name = unique_resource_name("sample3-key")  # named first: cleanup must find it
        with step(f"create key {key_name} in Key Vault {encryption.vault_url}"):
            key = create_key_encryption_key(key_client, key_name, encryption.key_valid_for)
        print(f"Created RSA key {key.name} in Key Vault (wrapKey and unwrapKey only, "
              f"expires {key.properties.expires_on:%Y-%m-%d %H:%M} UTC)")

        container_name = unique_resource_name("sample3-inputs")
        resources.container_names.append(container_name)  # recorded first: cleanup must find it
        with step(f"upload {SECRET_PATH.name}, encrypted, to container {container_name}"):
            create_container_if_not_exists(blob_service_client, container_name)
            key_wrapper = KeyVaultKeyWrapper(CryptographyClient(
                key, credential, verify_challenge_resource=not local_stack,
                connection_timeout=settings.batch.request_timeout_seconds,
                read_timeout=settings.batch.request_timeout_seconds,
            ))
            blob_name = upload_encrypted_file(blob_service_client, container_name, SECRET_PATH, key_wrapper)
            blob_url = create_read_only_blob_sas_url(blob_service_client, container_name, blob_name, timeouts.sas_expiry)
        print(f"Uploaded {SECRET_PATH.name} to container {container_name} encrypted on this machine "
              f"(client-side encryption v2: AES-256-GCM, content key wrapped with RSA-OAEP-256 by the vault key)")
        with step(f"upload the node's files to container {container_name}"):
            start_task_files = upload_node_files(
                blob_service_client, container_name, [RESOURCES / name for name in NODE_FILES], timeouts.sas_expiry)

        pool_id = pool.pool_id or unique_resource_name("sample3-pool")
        resources.pool_ids.append(pool_id)
        with step(f"create pool {pool_id} through the management plane"):
            try:
                create_pool_with_managed_identity(
                    management_client, encryption.resource_group, settings.batch.account_name, pool_id,
                    pool.vm_size, pool.node_count, virtual_machine_configuration,
                    encryption.identity_resource_id, start_task_files,
                )
                created = True
            except ResourceExistsError:  # a named pool that exists: If-None-Match: * left it as it was
                created = False
        if created:
            print(f"Created pool {pool_id} ({pool.node_count} x {pool.vm_size}) through the management plane, "
                  f"with user-assigned identity {encryption.identity_resource_id.rsplit('/', 1)[-1]}; waiting for "
                  f"its start task to install the Azure SDK on the nodes")
        else:
            print(f"Reusing pool {pool_id} as it is (its identity and start task were set when it was made); "
                  f"waiting for its nodes to be idle")
        with step(f"wait for the nodes of pool {pool_id}"):
            nodes = wait_for_all_nodes_to_reach_state(
                batch_client, pool_id, timeouts.nodes_ready, poll_interval_seconds=poll_interval_seconds,
                report_progress=print,
            )
        print(f"{len(nodes)} node(s) idle: {', '.join(node.id for node in nodes)}")

        job_id = unique_resource_name("sample3-job")
        resources.job_ids.append(job_id)
        with step(f"create job {job_id}"):
            create_job_if_not_exists(batch_client, models.BatchJobCreateOptions(
                id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
        with step(f"add a task to job {job_id}"):
            task_id = add_decrypt_task(batch_client, job_id, blob_url, encryption.identity_client_id, local_stack,
                                       DECRYPT_TASK_ID)
        print(f"Created job {job_id} with task {task_id}; waiting up to {timeouts.tasks_complete}")

        with step(f"wait for the task of job {job_id}"):
            tasks = wait_for_tasks_to_complete(
                batch_client, job_id, timeouts.tasks_complete, poll_interval_seconds, report_progress=print)
        for task in tasks:
            print(describe_task_result(task))
        with step(f"read the output of task {task_id}"):
            print_task_output(batch_client, job_id, task_id)
        raise_if_any_task_failed(tasks)
    finally:
        key = f"key {key_name}" if key_name else None
        try:
            report = clean_up_resources(
                batch_client, blob_service_client, resources,
                delete_jobs=settings.cleanup.delete_job,
                delete_pools=settings.cleanup.delete_pool,
                delete_containers=settings.cleanup.delete_container,
                timeout=timeouts.cleanup,
                poll_interval_seconds=poll_interval_seconds,
                keep_everything=keep_resources,
            )
        except KeyboardInterrupt:  # cleanup was stopped at once: the key was not reached either
            if key and resources.cleanup_report is not None:
                resources.cleanup_report.not_reached.append(key)
            raise
        # The key goes last: until the container is gone, it is what keeps the ciphertext readable.
        if key and (keep_resources or not encryption.delete_key):
            report.kept.append(key)
            report.kept_details[key] = (f" (in Key Vault {encryption.vault_url}: it unwraps the content key of "
                                        f"{SECRET_PATH.name} until it is deleted)")
        elif key:
            report.not_reached.append(key)
            stop_at_once = report.interrupted or isinstance(sys.exc_info()[1], KeyboardInterrupt)
            with interrupts_deferred(report, stop_at_first=stop_at_once):
                try:
                    if delete_key(key_client, key_name, encryption.purge_key):
                        report.deleted.append(key)
                except Exception as error:
                    report.failed.append(f"{key}: {describe_batch_error(error)}")
                report.not_reached.remove(key)
        print_cleanup_report(settings, report)
        if key in report.deleted:
            print(f"Purged key {key_name}: the encrypted blob can never be decrypted again" if encryption.purge_key
                  else f"Key {key_name} stays recoverable in the vault until it purges it (purge_key = false)")
        elif key in report.left_behind():
            print(f"To delete key {key_name}: 'az keyvault key delete --vault-name <vault> --name {key_name}' and "
                  f"'az keyvault key purge ...' on Azure; locally, KeyClient('{encryption.vault_url}', "
                  f"DefaultAzureCredential(), verify_challenge_resource=False).begin_delete_key('{key_name}') "
                  f"while 'make stack' runs")
    report.raise_if_incomplete()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, start the local stack if configured, run the sample; return the exit code."""
    arguments = parse_sample_arguments(__doc__, sample_configuration_path(__file__), argv)
    configure_logging(arguments.verbose)
    resources = CreatedResources()

    def run() -> None:
        settings = load_settings(arguments.config, arguments.sample_config)
        encryption = EncryptionSettings.load(arguments.sample_config)
        logger.info("Settings:\n%s", settings.describe())
        with local_stack_if_configured(settings) as stack:
            local_stack = stack is not None
            request_timeout_seconds = settings.batch.request_timeout_seconds
            # Key Vault and the management plane always use Entra ID (DefaultAzureCredential); on
            # the local stack it gets its tokens from the stack's token issuer.
            credential = create_default_azure_credential()
            run_encrypted_resource_files(
                create_batch_client(settings.batch),
                create_blob_service_client(settings.storage),
                create_key_client(encryption.vault_url, credential, local_stack, request_timeout_seconds),
                create_management_client(credential, encryption.subscription_id, encryption.management_endpoint,
                                         request_timeout_seconds),
                settings, encryption, credential, local_stack=local_stack, keep_resources=arguments.keep_resources,
                resources=resources,
            )

    return run_sample_main(Path(__file__).name, run, resources)


if __name__ == "__main__":
    sys.exit(main())
