"""The samples end to end with Microsoft Entra ID for Batch and Storage, on the local stack over https.

The stack here is its own (https endpoints, so the development CA and Azurite's ``--oauth basic``),
and the samples run as a user runs them with ``use_entra_id = true`` under ``[Batch]`` and
``[Storage]``: no key reaches them, DefaultAzureCredential gets its tokens from localbatch's
issuer, and sample 2 signs its SAS with a user delegation key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from common.config import environment_variable_name
from common.local import LocalStack
from localbatch.accounts import AZURITE_ACCOUNT_NAME
from tests.samples.support import (
    NOTHING,
    SAMPLE1,
    SAMPLE2,
    Backend,
    assert_left_behind,
    created_ids,
    environment_without_overrides,
    run_sample,
    take_inventory,
)

FAST_POLL_INTERVAL_SECONDS = "0.2"


@pytest.fixture(scope="module")
def https_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("entra-stack"), "https://127.0.0.1:0",
                    f"https://127.0.0.1:0/{AZURITE_ACCOUNT_NAME}", startup_timeout_seconds=120) as stack:
        yield stack


@pytest.fixture(scope="module")
def entra_backend(https_stack: LocalStack) -> Backend:
    """configuration.cfg as shipped, with Entra ID switched on and the keys taken away."""
    environment = environment_without_overrides()
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        environment.pop(name, None)  # what the sample trusts and where it gets tokens: its own stack's doing
    environment.update({
        environment_variable_name("Batch", "endpoint"): https_stack.batch_endpoint,
        environment_variable_name("Batch", "use_entra_id"): "true",
        environment_variable_name("Batch", "account_key"): "",
        environment_variable_name("Batch", "poll_interval_seconds"): FAST_POLL_INTERVAL_SECONDS,
        environment_variable_name("Storage", "connection_string"): "",
        environment_variable_name("Storage", "blob_endpoint"): https_stack.blob_endpoint,
        environment_variable_name("Storage", "use_entra_id"): "true",
        environment_variable_name("Storage", "account_key"): "",
        environment_variable_name("Local", "data_directory"): str(https_stack.data_directory),
    })
    return Backend("local-entra-id", environment)


def test_the_stack_serves_https_and_hands_out_tokens(https_stack: LocalStack) -> None:
    assert https_stack.batch_endpoint.startswith("https://")
    assert https_stack.blob_endpoint.startswith("https://")
    environment = https_stack.client_environment()
    assert environment["IDENTITY_ENDPOINT"] == f"{https_stack.batch_endpoint}/msi/token"
    assert environment["SSL_CERT_FILE"] == environment["REQUESTS_CA_BUNDLE"] == str(https_stack.trust_bundle)
    tls = https_stack.data_directory / "tls"
    for key in ("ca-key.pem", "server-key.pem"):
        assert (tls / key).stat().st_mode & 0o777 == 0o600
    assert (https_stack.data_directory / "localbatch" / "identity" / "signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_sample1_runs_with_entra_id(entra_backend: Backend, tmp_path: Path) -> None:
    before = take_inventory(entra_backend)

    run = run_sample(SAMPLE1, entra_backend, tmp_path, "-v")

    assert run.returncode == 0, run.describe()
    assert "Entra ID (DefaultAzureCredential)" in run.stderr
    assert "task hello-world: success, exit code 0" in run.stdout
    assert "Hello world from task hello-world" in run.stdout
    assert_left_behind(entra_backend, before, NOTHING)
    assert "eyJ" not in run.stdout + run.stderr  # no token (a JWT's header) printed or logged


def test_sample2_runs_with_entra_id_and_a_user_delegation_sas(entra_backend: Backend, tmp_path: Path,
                                                             https_stack: LocalStack) -> None:
    before = take_inventory(entra_backend)

    run = run_sample(SAMPLE2, entra_backend, tmp_path, "-v")

    assert run.returncode == 0, run.describe()
    [job_id] = created_ids(run.stdout, "job")
    assert "Entra ID (DefaultAzureCredential)" in run.stderr
    # The task's input came from Azurite over https, through a SAS signed with a user delegation key.
    assert f"simple_task.py: hello from task simple-task of job {job_id}" in run.stdout
    assert_left_behind(entra_backend, before, NOTHING)
    assert "eyJ" not in run.stdout + run.stderr
    logs = "".join(path.read_text(errors="replace") for path in https_stack.data_directory.glob("*.log"))
    assert "eyJ" not in logs


def test_tasks_trust_the_development_ca(entra_backend: Backend, https_stack: LocalStack) -> None:
    """A task's Python reaches the stack's https endpoints with the bundle it inherits."""
    from tests.emulator.support import create_job, create_pool_and_wait, read_task_file, run_task, unique_id

    client = entra_backend.batch_client
    pool_id = unique_id("trust")
    create_pool_and_wait(client, pool_id)
    job_id = create_job(client, pool_id)
    probe = ("import os, ssl, urllib.request; "
             "print(os.environ['SSL_CERT_FILE']); "
             f"print(urllib.request.urlopen('{https_stack.batch_endpoint}/localbatch/status').status)")
    try:
        task = run_task(client, job_id, f'python3 -c "{probe}"')
        assert task.execution_info.exit_code == 0
        lines = read_task_file(client, job_id, task.id).split()
        assert lines == [str(https_stack.trust_bundle), "200"]
    finally:
        client.begin_delete_job(job_id, polling_interval=0.2).result()
        client.begin_delete_pool(pool_id, polling_interval=0.2).result()


def test_azurite_takes_storage_tokens_and_refuses_others(https_stack: LocalStack) -> None:
    """Azurite runs with --oauth basic: a Storage token works, a Batch token (wrong audience) does not."""
    import time

    from azure.core.credentials import AccessToken
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from azure.storage.blob import BlobServiceClient

    from localbatch.identity import BATCH_AUDIENCE, STORAGE_AUDIENCE, TokenIssuer

    issuer = TokenIssuer.open(https_stack.data_directory / "localbatch" / "identity")

    class Token:
        def __init__(self, audience: str):
            self.token = issuer.issue(audience).access_token

        def get_token(self, *scopes, **kwargs) -> AccessToken:
            return AccessToken(self.token, int(time.time()) + 3600)

    with BlobServiceClient(https_stack.blob_endpoint, Token(STORAGE_AUDIENCE)) as storage:
        assert isinstance(list(storage.list_containers()), list)
    with BlobServiceClient(https_stack.blob_endpoint, Token(BATCH_AUDIENCE), retry_total=0) as wrong:
        with pytest.raises((ClientAuthenticationError, HttpResponseError)) as caught:
            list(wrong.list_containers())
    assert caught.value.status_code in (401, 403)
    assert "audience" in str(caught.value).lower()


def test_the_stack_keeps_the_users_roots_and_gives_back_the_environment_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import certifi

    own_bundle = tmp_path / "company-roots.pem"
    own_bundle.write_bytes(Path(certifi.where()).read_bytes() + b"# the company's proxy CA would be here\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(own_bundle))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    monkeypatch.delenv("IDENTITY_HEADER", raising=False)
    with LocalStack(tmp_path, "https://127.0.0.1:0", f"https://127.0.0.1:0/{AZURITE_ACCOUNT_NAME}",
                    startup_timeout_seconds=120) as stack:
        assert os.environ["REQUESTS_CA_BUNDLE"] == os.environ["SSL_CERT_FILE"] == str(stack.trust_bundle)
        assert os.environ["IDENTITY_ENDPOINT"] == f"{stack.batch_endpoint}/msi/token"
        assert stack.trust_bundle.read_bytes().startswith(own_bundle.read_bytes())  # still trusted, CA added
    assert os.environ["REQUESTS_CA_BUNDLE"] == str(own_bundle)
    for name in ("SSL_CERT_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        assert name not in os.environ
