"""Build the Batch and Blob clients from the settings in configuration.cfg.

Shared key uses the account key; Entra ID uses ``DefaultAzureCredential`` (environment,
workload identity, managed identity, Azure CLI, ...). ``azure.identity`` is imported only when
Entra ID is configured, so the local path never needs it.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential, TokenCredential
from azure.storage.blob import BlobServiceClient

from common.config import BatchAccountSettings, StorageAccountSettings

logger = logging.getLogger(__name__)


def create_default_azure_credential() -> TokenCredential:
    """Return a ``DefaultAzureCredential``, importing azure-identity only when it is needed."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def create_batch_client(settings: BatchAccountSettings, **client_options: Any) -> BatchClient:
    """Return a ``BatchClient`` for the configured account.

    ``client_options`` go to ``BatchClient`` unchanged (e.g. ``per_call_policies``,
    ``retry_total``, ``logging_enable``).
    """
    if settings.use_entra_id:
        logger.debug("Batch client for %s with Entra ID", settings.endpoint)
        credential: Any = create_default_azure_credential()
    else:
        logger.debug("Batch client for %s with the shared key of account %s", settings.endpoint, settings.account_name)
        credential = AzureNamedKeyCredential(settings.account_name, settings.account_key)
    return BatchClient(endpoint=settings.endpoint, credential=credential, **client_options)


def create_blob_service_client(settings: StorageAccountSettings, **client_options: Any) -> BlobServiceClient:
    """Return a ``BlobServiceClient`` for the configured Storage account.

    A connection string wins; otherwise the blob endpoint with the account key or Entra ID.
    """
    if settings.connection_string:
        logger.debug("Blob client from a connection string for account %s", settings.account_name)
        return BlobServiceClient.from_connection_string(settings.connection_string, **client_options)
    if settings.use_entra_id:
        logger.debug("Blob client for %s with Entra ID", settings.blob_endpoint)
        credential: Any = create_default_azure_credential()
    else:
        logger.debug("Blob client for %s with the shared key of account %s", settings.blob_endpoint, settings.account_name)
        credential = {"account_name": settings.account_name, "account_key": settings.account_key}
    return BlobServiceClient(account_url=settings.blob_endpoint, credential=credential, **client_options)
