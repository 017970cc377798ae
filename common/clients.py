"""Build the Batch and Blob clients from the settings in configuration.cfg.

Shared key uses the account key; Entra ID uses ``DefaultAzureCredential`` (environment,
workload identity, managed identity, Azure CLI, ...). ``azure.identity`` is imported only when
Entra ID is configured, so the local path never needs it.

Every request gets a connect and a read timeout of ``request_timeout_seconds`` (the SDKs'
defaults are 300 s and 20/60 s), and every retry is logged as a warning, so a service that does
not answer shows up within seconds instead of minutes of silence.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential, TokenCredential
from azure.core.pipeline.policies import RetryPolicy
from azure.storage.blob import BlobServiceClient, ExponentialRetry

from common.config import BatchAccountSettings, StorageAccountSettings

logger = logging.getLogger(__name__)


def create_default_azure_credential() -> TokenCredential:
    """Return a ``DefaultAzureCredential``, importing azure-identity only when it is needed."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class LoggedRetryPolicy(RetryPolicy):
    """The Batch SDK's retry policy, with a warning before each retry saying what is retried and when."""

    def sleep(self, settings: Any, transport: Any, response: Any = None) -> None:
        _warn_before_retry("Batch", settings, self.get_backoff_time(settings))
        super().sleep(settings, transport, response)


class LoggedStorageRetry(ExponentialRetry):
    """The Storage SDK's exponential retry, with a warning before each retry saying what is retried and when."""

    def sleep(self, settings: Any, transport: Any) -> None:
        backoff = self.get_backoff_time(settings)  # randomised: computed once, so the warning says what is slept
        _warn_before_retry("Storage", settings, backoff)
        if backoff > 0:
            transport.sleep(backoff)


def _warn_before_retry(service: str, settings: Any, backoff_seconds: float) -> None:
    history = settings.get("history") or []
    if not history:
        return
    last = history[-1]
    request = getattr(last, "http_request", None)
    what = f"{request.method} {request.url.split('?')[0]}" if request is not None else "a request"
    if getattr(last, "error", None) is not None:
        reason = f"{type(last.error).__name__}: {' '.join(str(last.error).split())[:200]}"
    elif getattr(last, "http_response", None) is not None:
        reason = f"HTTP {last.http_response.status_code}"
    else:
        reason = "no answer"
    logger.warning("%s: %s failed (%s); retry %d in %.1f s", service, what, reason, len(history), backoff_seconds)


def request_timeout_options(request_timeout_seconds: float) -> dict[str, Any]:
    """Client options that bound each request: connect and read timeouts, in seconds."""
    return {"connection_timeout": request_timeout_seconds, "read_timeout": request_timeout_seconds}


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
    client_options = {**request_timeout_options(settings.request_timeout_seconds), **client_options}
    client_options.setdefault("retry_policy", LoggedRetryPolicy(**client_options))
    return BatchClient(endpoint=settings.endpoint, credential=credential, **client_options)


def create_blob_service_client(settings: StorageAccountSettings, **client_options: Any) -> BlobServiceClient:
    """Return a ``BlobServiceClient`` for the configured Storage account.

    A connection string wins; otherwise the blob endpoint with the account key or Entra ID.
    Retries wait about 2.5, 3.3 and 4.4 s (the SDK's default: 18, 24 and 42 s, each give or take 3) and are logged.
    """
    client_options = {**request_timeout_options(settings.request_timeout_seconds), **client_options}
    retry_options = {"initial_backoff": 1, "increment_base": 1.5, "random_jitter_range": 0.5, "retry_total": 3,
                     **client_options}
    client_options.setdefault("retry_policy", LoggedStorageRetry(**retry_options))
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
