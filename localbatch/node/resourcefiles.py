"""Download a task's resource files into its working directory, as the node agent does."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import posixpath
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from ..accounts import azurite_connection_string
from . import agentlog
from .storage_identity import NodeStorageCredential, SslOption, StorageIdentityError

DEFAULT_FILE_MODE = 0o770
AZURITE_CONNECTION_STRING = azurite_connection_string()


class ResourceFileError(Exception):
    """A resource file could not be downloaded; `code` is the failure code the task reports."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def check_relative_path(path: str) -> Optional[str]:
    """Why `path` may not be used inside a task directory, or None when it is fine."""
    if not path:
        return None
    if "\x00" in path:
        return "The path may not contain a NUL character."
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return "The path must be relative to the task working directory."
    if ".." in path.replace("\\", "/").split("/"):
        return "The path may not contain '..' segments."
    return None


def _target(working_dir: str, relative: str) -> str:
    reason = check_relative_path(relative)
    if reason:
        raise ResourceFileError("BlobDownloadMiscError", f"{relative!r}: {reason}")
    target = os.path.realpath(os.path.join(working_dir, relative))
    if os.path.commonpath([target, os.path.realpath(working_dir)]) != os.path.realpath(working_dir):
        raise ResourceFileError("BlobDownloadMiscError", f"{relative!r} escapes the working directory.")
    return target


@dataclass
class AutoStorage:
    """The storage account that `autoStorageContainerName` refers to (Azurite by default)."""
    connection_string: str = AZURITE_CONNECTION_STRING

    def container_sas_url(self, container: str) -> str:
        from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
        service = BlobServiceClient.from_connection_string(self.connection_string)
        sas = generate_container_sas(
            service.account_name, container, account_key=service.credential.account_key,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        return f"{service.url.rstrip('/')}/{container}?{sas}"


class ResourceFileDownloader:
    def __init__(self, auto_storage: AutoStorage):
        self._auto_storage = auto_storage
        self._session: Optional[aiohttp.ClientSession] = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600, sock_connect=30))
        return self._session

    async def download_all(self, resource_files: list[dict], working_dir: str,
                           storage: Optional[NodeStorageCredential] = None) -> None:
        """Download every resource file; any failure is a ResourceFileError naming it (never its SAS).
        A file with an identityReference is read with a Storage token of that identity of the node's
        pool (`storage`)."""
        for resource_file in resource_files:
            source = _redact(resource_file.get("httpUrl") or resource_file.get("storageContainerUrl")
                             or resource_file.get("autoStorageContainerName") or "")
            try:
                await self.download(resource_file, working_dir, storage)
                agentlog.note(f"downloaded resource file {source} to "
                              f"{resource_file.get('filePath') or '.'}" + (" through the node identity"
                                                                          if resource_file.get("identityReference") else ""))
            except ResourceFileError:
                raise
            except StorageIdentityError as exc:
                raise ResourceFileError("BlobAccessDenied", f"Could not download from {source} through the "
                                        f"node identity: {exc}") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise ResourceFileError("BlobDownloadMiscError",
                                        f"Could not download from {source}: {_describe(exc)}") from None
            except ElementTree.ParseError:
                raise ResourceFileError("BlobDownloadMiscError",
                                        f"{source} did not answer with a blob container listing.") from None
            except OSError as exc:
                raise ResourceFileError("FileIOError", f"Could not write the files from {source} into the "
                                        f"working directory: {exc.strerror or exc}") from None

    async def download(self, resource_file: dict, working_dir: str,
                       storage: Optional[NodeStorageCredential] = None) -> None:
        mode = int(resource_file["fileMode"], 8) if resource_file.get("fileMode") else DEFAULT_FILE_MODE
        reference = resource_file.get("identityReference")
        if reference and storage is None:
            raise StorageIdentityError("Identity not found: this node has no managed identity endpoint.")
        access = _Access(storage.headers(reference) if reference else {}, storage.ssl if storage else True)
        if resource_file.get("httpUrl"):
            target = _target(working_dir, resource_file.get("filePath", ""))
            await self._fetch(resource_file["httpUrl"], target, mode, access)
            return
        if resource_file.get("autoStorageContainerName"):
            # Read through the auto-storage account's own SAS (the account is this stack's, not the identity's).
            container_url = self._auto_storage.container_sas_url(resource_file["autoStorageContainerName"])
            access = _Access({}, access.ssl)
        else:
            container_url = resource_file["storageContainerUrl"]
        base_dir = resource_file.get("filePath", "")
        names = await self._list_blobs(container_url, resource_file.get("blobPrefix", ""), access)
        for name in names:
            target = _target(working_dir, posixpath.join(base_dir, name) if base_dir else name)
            await self._fetch(_blob_url(container_url, name), target, mode, access)

    async def _list_blobs(self, container_url: str, prefix: str, access: "_Access") -> list[str]:
        names: list[str] = []
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list"}
            if prefix:
                query["prefix"] = prefix
            if marker:
                query["marker"] = marker
            async with self._http().get(_with_query(container_url, query), headers=access.headers,
                                        ssl=access.ssl) as response:
                body = await response.read()
                if response.status != 200:
                    raise _download_error(response.status, _redact(container_url), "list the container")
            root = ElementTree.fromstring(body)
            names += [element.text or "" for element in root.iter("Name") if element.text]
            marker = (root.findtext("NextMarker") or "").strip()
            if not marker:
                return names

    async def _fetch(self, url: str, target: str, mode: int, access: "_Access") -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            async with self._http().get(url, headers=access.headers, ssl=access.ssl) as response:
                if response.status != 200:
                    raise _download_error(response.status, _redact(url), "download")
                with open(target, "wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        out.write(chunk)
        except aiohttp.ClientError as exc:
            raise ResourceFileError("BlobDownloadMiscError",
                                    f"Could not download {_redact(url)}: {_describe(exc)}") from None
        os.chmod(target, mode)


@dataclass(frozen=True)
class _Access:
    """How one resource file is read: its identity's headers (none with a SAS), and what https trusts."""
    headers: dict
    ssl: SslOption


def _describe(exc: BaseException) -> str:
    """An exception's text without any URL query it may quote."""
    text = str(exc) or type(exc).__name__
    return text.split("?", 1)[0] if "sig=" in text else text


def _download_error(status: int, safe_url: str, action: str) -> ResourceFileError:
    code = {403: "BlobAccessDenied", 404: "BlobNotFound"}.get(status, "BlobDownloadMiscError")
    return ResourceFileError(code, f"Could not {action} {safe_url}: HTTP {status}")


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urlsplit(url)
    added = "&".join(f"{k}={quote(v, safe='')}" for k, v in extra.items())
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def _blob_url(container_url: str, blob_name: str) -> str:
    parts = urlsplit(container_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + quote(blob_name, safe="/")))


def _redact(url: str) -> str:
    """A URL without its query string: a SAS token is a secret and is never reported."""
    return urlunsplit(urlsplit(url)._replace(query=""))
