"""The mounted container, through azure-storage-blob: what the file system asks of Blob storage.

Paths are blob names ('a/b.txt'); directories are virtual (a common prefix) or, when made
through the mount, a zero-length marker blob with the metadata blobfuse2 writes
(`hdi_isfolder: true`), so an empty directory survives.
"""
from __future__ import annotations

import datetime as dt
import errno
from dataclasses import dataclass
from typing import Iterator, Optional

from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError, ResourceExistsError,
                                   ResourceNotFoundError, ServiceRequestError, ServiceResponseError)
from azure.storage.blob import ContainerClient

FOLDER_METADATA = "hdi_isfolder"
REQUEST_TIMEOUT = 30  # seconds a request may take to connect, and to answer


@dataclass(frozen=True)
class Entry:
    """A file or directory as Blob storage has it."""
    name: str                       # the last path segment
    is_directory: bool
    size: int = 0
    modified: Optional[dt.datetime] = None


class StorageError(OSError):
    """A Blob storage request failed; `errno` is what the file system answers."""


def storage_error(exc: Exception) -> StorageError:
    """The errno a failed request becomes, with the service's reason (never a secret)."""
    if isinstance(exc, ResourceNotFoundError):
        code = errno.ENOENT
    elif isinstance(exc, ResourceExistsError):
        code = errno.EEXIST
    elif isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) == 403:
        code = errno.EACCES
    elif isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        code = errno.EIO
    else:
        code = errno.EIO
    return StorageError(code, describe(exc))


def describe(exc: Exception) -> str:
    """A one-line reason from a storage exception: its error code and first message line."""
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None)
        reason = getattr(code, "value", code) or getattr(exc, "reason", None) or type(exc).__name__
        first = (exc.message or "").strip().splitlines()
        return f"{reason} (HTTP {exc.status_code}): {first[0] if first else ''}".rstrip(": ")
    if isinstance(exc, AzureError):
        first = (exc.message or str(exc)).strip().splitlines()
        return f"{type(exc).__name__}: {first[0] if first else ''}"
    return f"{type(exc).__name__}: {exc}"


class BlobStore:
    """One container of one account."""

    def __init__(self, container: ContainerClient):
        self.container = container

    @classmethod
    def connect(cls, account_url: str, container_name: str, account_name: str,
                account_key: Optional[str] = None, sas: Optional[str] = None,
                token_credential: Optional[object] = None) -> "BlobStore":
        if token_credential is not None:
            credential: object = token_credential
        elif account_key is not None:
            credential = {"account_name": account_name, "account_key": account_key}
        else:
            credential = (sas or "").lstrip("?")
        return cls(ContainerClient(account_url, container_name, credential=credential,
                                   connection_timeout=REQUEST_TIMEOUT, read_timeout=REQUEST_TIMEOUT,
                                   retry_total=2))

    def check_access(self) -> None:
        """List one blob, as blobfuse2 does when it mounts: a wrong key, an unknown account or a
        container that does not exist fails here."""
        try:
            next(iter(self.container.list_blobs(results_per_page=1).by_page()), None)
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    # ---- reading the tree ----------------------------------------------------------------------
    def list_directory(self, name: str) -> Iterator[Entry]:
        """The files and directories directly in directory `name` ('' for the root)."""
        prefix = f"{name}/" if name else ""
        seen: set[str] = set()
        try:
            for item in self.container.walk_blobs(name_starts_with=prefix or None, delimiter="/",
                                                  include=["metadata"]):
                relative = item.name[len(prefix):]
                if item.name.endswith("/"):  # a BlobPrefix: a virtual directory
                    child = relative.rstrip("/")
                    if child and child not in seen:
                        seen.add(child)
                        yield Entry(child, True)
                    continue
                if not relative or relative in seen:
                    continue
                seen.add(relative)
                yield _entry(relative, item)
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def stat(self, name: str) -> Optional[Entry]:
        """The file or directory `name`, or None when Blob storage has neither."""
        leaf = name.rsplit("/", 1)[-1]
        try:
            properties = self.container.get_blob_client(name).get_blob_properties()
            return _entry(leaf, properties)
        except ResourceNotFoundError:
            pass
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None
        return Entry(leaf, True) if self.has_children(name) else None

    def blob_exists(self, name: str) -> bool:
        """Whether a blob of exactly this name exists (a file, or a directory's marker)."""
        try:
            return self.container.get_blob_client(name).exists()
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def has_children(self, name: str) -> bool:
        try:
            page = next(iter(self.container.list_blobs(name_starts_with=f"{name}/", results_per_page=1).by_page()),
                        [])
            return any(True for _ in page)
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def names_below(self, name: str) -> list[str]:
        """Every blob name inside directory `name`, markers included."""
        try:
            return [blob.name for blob in self.container.list_blobs(name_starts_with=f"{name}/")]
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    # ---- contents ------------------------------------------------------------------------------
    def download(self, name: str, path: str) -> Entry:
        """Write blob `name` to the local file `path`; its properties as they were downloaded."""
        try:
            stream = self.container.get_blob_client(name).download_blob()
            with open(path, "wb") as target:
                stream.readinto(target)
            return _entry(name.rsplit("/", 1)[-1], stream.properties)
        except OSError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def upload(self, name: str, path: str) -> None:
        """Put the local file `path` as blob `name` (replacing it)."""
        try:
            with open(path, "rb") as source:
                self.container.get_blob_client(name).upload_blob(source, overwrite=True)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(exc.errno or errno.EIO, str(exc)) from None
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def make_directory(self, name: str) -> None:
        try:
            self.container.get_blob_client(name).upload_blob(b"", overwrite=False,
                                                             metadata={FOLDER_METADATA: "true"})
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def delete(self, name: str) -> None:
        try:
            self.container.get_blob_client(name).delete_blob()
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None

    def copy(self, source: str, target: str, scratch: str) -> None:
        """Copy blob `source` to `target` through a local scratch file (Blob storage has no rename)."""
        self.download(source, scratch)
        try:
            properties = self.container.get_blob_client(source).get_blob_properties()
            with open(scratch, "rb") as data:
                self.container.get_blob_client(target).upload_blob(data, overwrite=True,
                                                                   metadata=properties.metadata or None)
        except OSError as exc:
            raise StorageError(exc.errno or errno.EIO, str(exc)) from None
        except Exception as exc:  # pylint: disable=broad-except
            raise storage_error(exc) from None


def _entry(name: str, properties) -> Entry:
    metadata = getattr(properties, "metadata", None) or {}
    is_folder = str(metadata.get(FOLDER_METADATA, "")).lower() == "true"
    return Entry(name, is_folder, 0 if is_folder else int(properties.size or 0), properties.last_modified)
