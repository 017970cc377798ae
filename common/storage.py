"""Blob Storage building blocks: containers, uploads and read-only, short-lived SAS URLs.

Batch nodes download resource files over plain HTTP(S), so inputs in a private container
are handed to Batch as SAS URLs: read-only, and expiring soon after the job needs them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Union

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)

logger = logging.getLogger(__name__)

CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)
"""SAS tokens start this long in the past so a node whose clock runs behind accepts them."""


def create_container_if_not_exists(blob_service_client: BlobServiceClient, container_name: str) -> bool:
    """Create a blob container unless it exists. Return True if this call created it."""
    try:
        blob_service_client.create_container(container_name)
    except ResourceExistsError:
        logger.info("Container %s already exists; reusing it", container_name)
        return False
    logger.info("Created container %s", container_name)
    return True


def delete_container_if_exists(blob_service_client: BlobServiceClient, container_name: str) -> bool:
    """Delete a blob container and its blobs. Return False if it did not exist."""
    try:
        blob_service_client.delete_container(container_name)
    except ResourceNotFoundError:
        return False
    logger.info("Deleted container %s", container_name)
    return True


def upload_file_to_container(
    blob_service_client: BlobServiceClient,
    container_name: str,
    file_path: Union[str, Path],
    blob_name: Optional[str] = None,
) -> str:
    """Upload a local file as a block blob, replacing any blob of that name. Return the blob name.

    ``blob_name`` defaults to the file's name.
    """
    file_path = Path(file_path)
    blob_name = blob_name or file_path.name
    blob_client = blob_service_client.get_blob_client(container_name, blob_name)
    with file_path.open("rb") as data:
        blob_client.upload_blob(data, overwrite=True)
    logger.info("Uploaded %s to container %s as %s", file_path, container_name, blob_name)
    return blob_name


def _sas_window(valid_for: timedelta) -> tuple[datetime, datetime]:
    if valid_for <= timedelta(0):
        raise ValueError(f"a SAS must be valid for a positive time, got {valid_for}")
    now = datetime.now(timezone.utc)
    return now - CLOCK_SKEW_ALLOWANCE, now + valid_for


def _signing_material(
    blob_service_client: BlobServiceClient, start: datetime, expiry: datetime
) -> tuple[Optional[str], Optional[UserDelegationKey]]:
    """Return (account key, None) for shared-key clients or (None, user delegation key) for Entra ID."""
    account_key = getattr(blob_service_client.credential, "account_key", None)
    if account_key:
        return account_key, None
    # An Entra ID client has no account key: ask the service for a user delegation key,
    # which needs the 'Storage Blob Delegator' role (or any role that includes it).
    return None, blob_service_client.get_user_delegation_key(start, expiry)


def create_read_only_blob_sas_url(
    blob_service_client: BlobServiceClient,
    container_name: str,
    blob_name: str,
    valid_for: timedelta,
) -> str:
    """Return a URL that lets its holder read one blob, and nothing else, for ``valid_for``.

    The SAS is signed with the account key, or with a user delegation key when the client uses
    Entra ID. Treat the URL as a secret until it expires: never log it whole.
    """
    start, expiry = _sas_window(valid_for)
    account_key, user_delegation_key = _signing_material(blob_service_client, start, expiry)
    token = generate_blob_sas(
        account_name=blob_service_client.account_name,
        container_name=container_name,
        blob_name=blob_name,
        account_key=account_key,
        user_delegation_key=user_delegation_key,
        permission=BlobSasPermissions(read=True),
        start=start,
        expiry=expiry,
    )
    return f"{blob_service_client.get_blob_client(container_name, blob_name).url}?{token}"


def create_read_only_container_sas_url(
    blob_service_client: BlobServiceClient,
    container_name: str,
    valid_for: timedelta,
) -> str:
    """Return a URL that lets its holder list and read the blobs of one container for ``valid_for``.

    This is the form ``ResourceFile(storage_container_url=...)`` expects.
    """
    start, expiry = _sas_window(valid_for)
    account_key, user_delegation_key = _signing_material(blob_service_client, start, expiry)
    token = generate_container_sas(
        account_name=blob_service_client.account_name,
        container_name=container_name,
        account_key=account_key,
        user_delegation_key=user_delegation_key,
        permission=ContainerSasPermissions(read=True, list=True),
        start=start,
        expiry=expiry,
    )
    return f"{blob_service_client.get_container_client(container_name).url}?{token}"
