"""sample3_encrypted_resourcefiles.py end to end on the local stack: the secret the task decrypted,
what Storage holds (ciphertext with its encryption metadata, never the plaintext), the key gone
after cleanup, and a failure at every step still cleaning up (the key included)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient

import sample3_encrypted_resourcefiles as sample3
from common.clients import create_batch_client, create_blob_service_client
from common.config import environment_variable_name
from common.local import LocalStack
from common.cli import StepFailed, run_sample_main
from tests.samples.support import (
    NOTHING,
    SAMPLE3,
    Backend,
    FailRequests,
    Inventory,
    assert_left_behind,
    connection_lost,
    created_ids,
    run_sample,
    take_inventory,
)
from tests.samples.test_entra_id import entra_backend, https_stack  # noqa: F401  (fixtures)

PLAINTEXT = sample3.SECRET_PATH.read_bytes()


@pytest.fixture
def stack_credentials(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[DefaultAzureCredential]:
    """DefaultAzureCredential in this process, getting its tokens from the suite's local stack."""
    for name, value in local_stack.client_environment().items():
        monkeypatch.setenv(name, value)
    with DefaultAzureCredential() as credential:
        yield credential


def _key_client(local_stack: LocalStack, credential, **options) -> KeyClient:
    """A client for the stack's vault, as the sample makes it (the challenge check off, locally only)."""
    return KeyClient(local_stack.services_endpoint, credential, verify_challenge_resource=False, **options)


def _sample3_keys(key_client: KeyClient) -> set[str]:
    """Every key of a sample 3 run still in the vault, live or deleted but not purged."""
    names = {key.name for key in key_client.list_properties_of_keys()}
    names |= {key.name for key in key_client.list_deleted_keys()}
    return {name for name in names if name.startswith("sample3-key-")}


def test_prints_the_secret_the_task_decrypted_and_storage_never_holds_it(
    local_backend: Backend, local_stack: LocalStack, stack_credentials: DefaultAzureCredential, tmp_path: Path
) -> None:
    before = take_inventory(local_backend)

    run = run_sample(SAMPLE3, local_backend, tmp_path,
                     extra_environment={environment_variable_name("Cleanup", "delete_container"): "false"})

    assert run.returncode == 0, run.describe()
    assert "task decrypt-secret: success, exit code 0" in run.stdout
    assert f"Decrypted secret:\n{PLAINTEXT.decode().strip()}\n" in run.stdout
    [pool_id] = created_ids(run.stdout, "pool")
    [job_id] = created_ids(run.stdout, "job")
    [container_name] = created_ids(run.stdout, "container")
    [key_name] = [line.split()[3] for line in run.stdout.splitlines() if line.startswith("Created RSA key ")]
    assert f"Deleted key {key_name}\n" in run.stdout
    assert run.stdout.endswith(f"\nPurged key {key_name}: the encrypted blob can never be decrypted again\n")
    for name in (f"job {job_id}", f"pool {pool_id}"):
        assert f"Deleted {name}" in run.stdout
    assert f"Kept container {container_name}" in run.stdout
    assert run.stderr == ""
    # What Storage holds: ciphertext, and the metadata that names the vault key that wrapped its key.
    blob = local_backend.blob_service_client.get_blob_client(container_name, "secret.txt")
    stored = blob.download_blob().readall()
    encryption = json.loads(blob.get_blob_properties().metadata["encryptiondata"])
    assert PLAINTEXT.strip() not in stored and len(stored) > len(PLAINTEXT)
    assert encryption["EncryptionAgent"]["Protocol"] == "2.0"
    assert encryption["EncryptionAgent"]["EncryptionAlgorithm"] == "AES_GCM_256"
    assert encryption["WrappedContentKey"]["Algorithm"] == "RSA-OAEP-256"
    assert encryption["WrappedContentKey"]["KeyId"].startswith(f"{local_stack.services_endpoint}/keys/{key_name}/")
    # No byte of the plaintext reached Azurite's files.
    for path in (local_stack.data_directory / "azurite").rglob("*"):
        if path.is_file():
            assert PLAINTEXT.strip() not in path.read_bytes(), path
    # The key is gone for good: neither live nor recoverable.
    key_client = _key_client(local_stack, stack_credentials)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(key_name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(key_name)
    local_backend.blob_service_client.delete_container(container_name)
    assert_left_behind(local_backend, before, NOTHING)


def test_keeps_the_key_when_its_config_says_so(
    local_backend: Backend, local_stack: LocalStack, stack_credentials: DefaultAzureCredential,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--keep-resources keeps the key too (its name printed), so the kept blob stays readable."""
    settings = local_backend.settings(SAMPLE3)
    encryption = sample3.EncryptionSettings.load(settings.sample_configuration_path)
    monkeypatch.setattr(sample3, "add_decrypt_task", lambda *arguments, **options: _refuse())
    key_client = _key_client(local_stack, stack_credentials)
    before = take_inventory(local_backend)

    with pytest.raises(StepFailed, match=r"^add a task to job sample3-job-\S+: RuntimeError: the task was refused on purpose"):
        sample3.run_encrypted_resource_files(
            local_backend.batch_client, local_backend.blob_service_client, key_client,
            sample3.create_management_client(stack_credentials, encryption.subscription_id,
                                             local_stack.services_endpoint),
            settings, encryption, stack_credentials, local_stack=True, keep_resources=True)

    printed = capsys.readouterr().out
    [key_name] = [line.split()[2] for line in printed.splitlines() if line.startswith("Kept key ")]
    assert f"Kept key {key_name} (in Key Vault {encryption.vault_url}: " in printed
    assert f"To delete key {key_name}: " in printed
    assert "--key" not in printed  # common.delete_resources deletes jobs, pools and containers only
    assert key_client.get_key(key_name).name == key_name
    kept = take_inventory(local_backend).minus(before)
    assert len(kept.pool_ids) == 1 and len(kept.job_ids) == 1 and len(kept.container_names) == 1
    for job_id in kept.job_ids:
        local_backend.batch_client.begin_delete_job(job_id, polling_interval=0.2).result()
    for pool_id in kept.pool_ids:
        local_backend.batch_client.begin_delete_pool(pool_id, polling_interval=0.2).result()
    for container_name in kept.container_names:
        local_backend.blob_service_client.delete_container(container_name)
    sample3.delete_key(key_client, key_name, purge=True)
    assert key_name not in _sample3_keys(key_client)
    assert_left_behind(local_backend, before, NOTHING)


def _refuse() -> str:
    raise RuntimeError("the task was refused on purpose")


BATCH, BLOB, VAULT, ARM = "batch", "blob", "vault", "arm"


@pytest.mark.parametrize(
    ("step", "client", "method", "path", "when", "error"),
    [
        ("create the key", VAULT, "POST", r"^/keys/[^/]+/create$", "request", connection_lost),
        ("create the key (answer lost)", VAULT, "POST", r"^/keys/[^/]+/create$", "response", connection_lost),
        ("upload the encrypted secret (answer lost)", BLOB, "PUT", r"/secret\.txt$", "response", connection_lost),
        ("upload the node's files", BLOB, "PUT", r"/prepare_node\.sh$", "request", connection_lost),
        ("create the pool through ARM", ARM, "PUT", r"/pools/[^/]+$", "request", connection_lost),
        ("create the pool through ARM (answer lost)", ARM, "PUT", r"/pools/[^/]+$", "response", connection_lost),
        ("wait for the nodes", BATCH, "GET", r"^/pools/[^/]+/nodes$", "request", connection_lost),
        ("Ctrl-C while waiting for the nodes", BATCH, "GET", r"^/pools/[^/]+/nodes$", "request", KeyboardInterrupt),
        ("Ctrl-C while waiting for the task", BATCH, "GET", r"^/jobs/[^/]+/tasks$", "request", KeyboardInterrupt),
    ],
)
def test_a_failure_at_any_step_still_cleans_up_and_removes_the_key(
    local_backend: Backend, local_stack: LocalStack, stack_credentials: DefaultAzureCredential, step: str,
    client: str, method: str, path: str, when: str, error: Callable[[], BaseException],
) -> None:
    settings = local_backend.settings(SAMPLE3)
    encryption = sample3.EncryptionSettings.load(settings.sample_configuration_path)
    failure = FailRequests(method, path, error, when)
    policies = {"per_call_policies": [failure]}
    key_client = _key_client(local_stack, stack_credentials, **(policies if client == VAULT else {}))
    management_client = sample3.BatchManagementClient(
        stack_credentials, encryption.subscription_id, base_url=local_stack.services_endpoint,
        **(policies if client == ARM else {}))
    before = take_inventory(local_backend)
    keys_before = _sample3_keys(_key_client(local_stack, stack_credentials))

    with create_batch_client(settings.batch, **(policies if client == BATCH else {})) as batch_client, \
            create_blob_service_client(settings.storage, **(failure.as_storage_client_options()
                                                            if client == BLOB else {})) as blob_service_client:
        with pytest.raises(BaseException) as raised:
            sample3.run_encrypted_resource_files(
                batch_client, blob_service_client, key_client, management_client, settings, encryption,
                stack_credentials, local_stack=True)

    assert failure.failed >= 1, f"the failure was never injected at step {step!r}"
    if error is KeyboardInterrupt:
        assert isinstance(raised.value, KeyboardInterrupt)
    else:
        assert "injected failure" in str(raised.value)
    assert_left_behind(local_backend, before, NOTHING)
    assert _sample3_keys(_key_client(local_stack, stack_credentials)) == keys_before


@dataclass
class _KeyDeleteRun:
    """What a run whose upload fails, and whose key deletion then fails too, left to check."""
    delete_failure: FailRequests
    exit_code: int
    out: str
    err: str
    key_name: str
    before: Inventory


def _run_with_key_delete_failing(
    failure: Callable[[], BaseException], local_backend: Backend, local_stack: LocalStack,
    credentials: DefaultAzureCredential, capsys: pytest.CaptureFixture,
) -> _KeyDeleteRun:
    """Run sample 3 as its main does, with the upload of the node's files failing (a connection
    lost) and then the key's deletion failing with `failure`."""
    settings = local_backend.settings(SAMPLE3)
    encryption = sample3.EncryptionSettings.load(settings.sample_configuration_path)
    upload_fails = FailRequests("PUT", r"/prepare_node\.sh$", connection_lost)
    delete_fails = FailRequests("DELETE", r"^/keys/sample3-key-[^/]+$", failure)
    key_client = _key_client(local_stack, credentials, per_call_policies=[delete_fails])
    management_client = sample3.create_management_client(
        credentials, encryption.subscription_id, local_stack.services_endpoint)
    resources = sample3.CreatedResources()
    before = take_inventory(local_backend)

    with create_blob_service_client(settings.storage, **upload_fails.as_storage_client_options()) as blob_service_client:
        exit_code = run_sample_main(SAMPLE3, lambda: sample3.run_encrypted_resource_files(
            local_backend.batch_client, blob_service_client, key_client, management_client, settings, encryption,
            credentials, local_stack=True, resources=resources), resources)

    printed = capsys.readouterr()
    [key_name] = [line.split()[3] for line in printed.out.splitlines() if line.startswith("Created RSA key ")]
    assert upload_fails.failed == 1, printed
    return _KeyDeleteRun(delete_fails, exit_code, printed.out, printed.err, key_name, before)


def test_a_key_that_cannot_be_deleted_is_reported_as_left_with_the_step_that_failed(
    local_backend: Backend, local_stack: LocalStack, stack_credentials: DefaultAzureCredential,
    capsys: pytest.CaptureFixture,
) -> None:
    """The vault refuses the delete: the last line names the failed step and the key still there, and says how to delete it."""
    run = _run_with_key_delete_failing(connection_lost, local_backend, local_stack, stack_credentials, capsys)

    key_name = run.key_name
    assert (run.delete_failure.failed, run.exit_code) == (1, 1), run.out + run.err
    [last_line] = run.err.splitlines()
    assert last_line.startswith(f"{SAMPLE3}: error: upload the node's files to container sample3-inputs-")
    assert last_line.endswith(f"ServiceRequestError: injected failure: connection lost; could not delete key {key_name}: "
                              "ServiceRequestError: injected failure: connection lost")
    assert f"Could not delete key {key_name}: " in run.out
    assert f"To delete key {key_name}: " in run.out
    assert "Deleted container sample3-inputs-" in run.out
    assert_left_behind(local_backend, run.before, NOTHING)
    key_client = _key_client(local_stack, stack_credentials)
    assert key_client.get_key(key_name).name == key_name  # still there, as reported
    sample3.delete_key(key_client, key_name, purge=True)
    assert key_name not in _sample3_keys(key_client)


def test_cleanup_stopped_at_once_during_the_key_deletion_says_the_key_is_left(
    local_backend: Backend, local_stack: LocalStack, stack_credentials: DefaultAzureCredential,
    capsys: pytest.CaptureFixture,
) -> None:
    """A Ctrl-C that stops the run while the key is being deleted (as a second one does): exit 130, key named."""
    run = _run_with_key_delete_failing(KeyboardInterrupt, local_backend, local_stack, stack_credentials, capsys)

    assert (run.delete_failure.failed, run.exit_code) == (1, 130), run.out + run.err
    assert run.err.splitlines() == [
        f"{SAMPLE3}: error: interrupted; cleanup was stopped before deleting key {run.key_name}"]
    assert_left_behind(local_backend, run.before, NOTHING)  # its container was deleted before the key
    key_client = _key_client(local_stack, stack_credentials)
    assert key_client.get_key(run.key_name).name == run.key_name
    sample3.delete_key(key_client, run.key_name, purge=True)


def test_runs_with_entra_id_everywhere_and_logs_no_token(entra_backend: Backend, https_stack: LocalStack,
                                                         tmp_path: Path) -> None:
    """Batch and Storage with Entra ID too (a user delegation SAS for the blob); no token printed or logged."""
    before = take_inventory(entra_backend)

    run = run_sample(SAMPLE3, entra_backend, tmp_path, "-v", extra_environment={
        environment_variable_name("KeyVault", "vault_url"): https_stack.services_endpoint,
        environment_variable_name("Management", "endpoint"): https_stack.services_endpoint,
    })

    assert run.returncode == 0, run.describe()
    assert f"Decrypted secret:\n{PLAINTEXT.decode().strip()}\n" in run.stdout
    assert "Entra ID (DefaultAzureCredential)" in run.stderr
    assert "eyJ" not in run.stdout + run.stderr  # no token (a JWT's header) printed or logged
    logs = "".join(path.read_text(errors="replace") for path in https_stack.data_directory.glob("*.log"))
    assert "eyJ" not in logs
    assert_left_behind(entra_backend, before, NOTHING)
