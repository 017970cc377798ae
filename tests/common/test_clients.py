"""common.clients: shared key by default, Entra ID on request, azure-identity only when needed."""

from __future__ import annotations

import os
import subprocess
import sys

from common import REPOSITORY_ROOT

PROBE = """
import sys
from common.clients import create_batch_client, create_blob_service_client
from common.config import load_settings, sample_configuration_path
settings = load_settings(None, sample_configuration_path("sample1_helloworld.py"), environ={mode!r})
batch = create_batch_client(settings.batch)
blob = create_blob_service_client(settings.storage)
signs_with_account_key = bool(getattr(blob.credential, "account_key", None))  # what common.storage signs SAS with
print("azure.identity" in sys.modules, type(batch._config.credential).__name__, type(blob.credential).__name__,
      signs_with_account_key)
"""

ENTRA_ID = {
    "BATCHSAMPLES_LOCAL_START_LOCAL_STACK": "false",
    "BATCHSAMPLES_BATCH_ENDPOINT": "https://mybatch.westeurope.batch.azure.com",
    "BATCHSAMPLES_BATCH_USE_ENTRA_ID": "true",
    "BATCHSAMPLES_STORAGE_USE_ENTRA_ID": "true",
    "BATCHSAMPLES_STORAGE_BLOB_ENDPOINT": "https://mystorage.blob.core.windows.net",
}


def probe(mode: dict[str, str]) -> list[str]:
    """Build both clients in a fresh interpreter (nothing imported yet) and report what was used."""
    completed = subprocess.run(
        [sys.executable, "-c", PROBE.format(mode=mode)], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}, check=True,
    )
    return completed.stdout.split()


def test_shared_key_clients_never_import_azure_identity() -> None:
    imported_identity, batch_credential, _blob_credential, signs_with_account_key = probe({})

    assert (imported_identity, batch_credential, signs_with_account_key) == ("False", "AzureNamedKeyCredential", "True")


def test_entra_id_clients_use_default_azure_credential() -> None:
    assert probe(ENTRA_ID) == ["True", "DefaultAzureCredential", "DefaultAzureCredential", "False"]
