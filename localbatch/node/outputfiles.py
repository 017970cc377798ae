"""Upload a task's output files to Blob containers after its process exits, as the node agent does.

A file pattern is relative to the task's working directory (`../stdout.txt` reaches the task
directory) or absolute; `*` and `?` match within a name, `**` any number of directories, `[...]`
a set (which also escapes a wildcard). With no wildcard, `path` is the blob's whole name (default:
the file's name); with one, `path` is a virtual directory in front of each file's path below the
pattern's fixed leading directories. Every attempt is logged to `fileuploadout.txt`, and every
failure to `fileuploaderr.txt`, in the task directory. SAS signatures are never written anywhere.
"""
from __future__ import annotations

import asyncio
import glob
import os
import posixpath
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from .layout import TaskPaths
from .storage_identity import NodeStorageCredential, StorageIdentityError

STORAGE_SERVICE_VERSION = "2021-08-06"
WILDCARDS = set("*?[")


class OutputFileError(Exception):
    """An upload failed; `code` is the task's failureInfo code (FileUpload...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def applies(output_file: dict, exit_code: int) -> bool:
    """Whether the file is uploaded after a process that exited with `exit_code`."""
    condition = ((output_file.get("uploadOptions") or {}).get("uploadCondition") or "taskcompletion").lower()
    return condition == "taskcompletion" or (condition == "tasksuccess") == (exit_code == 0)


@dataclass(frozen=True)
class Upload:
    local_path: str
    blob_name: str


def plan(pattern: str, destination_path: Optional[str], working_dir: str) -> list[Upload]:
    """The files a pattern matches, with the blob name each one gets."""
    absolute = pattern if os.path.isabs(pattern) else os.path.normpath(os.path.join(working_dir, pattern))
    segments = absolute.split("/")
    first_wild = next((i for i, segment in enumerate(segments) if WILDCARDS & set(segment)), None)
    if first_wild is None:
        if not os.path.isfile(absolute):
            return []
        return [Upload(absolute, destination_path or os.path.basename(absolute))]
    base = "/".join(segments[:first_wild]) or "/"
    uploads = []
    for match in sorted(glob.glob(absolute, recursive=True, include_hidden=True)):
        if os.path.isfile(match):
            relative = os.path.relpath(match, base)
            uploads.append(Upload(match, posixpath.join(destination_path, relative) if destination_path else relative))
    return uploads


class OutputFileUploader:
    def __init__(self) -> None:
        self._session: Optional[aiohttp.ClientSession] = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600, sock_connect=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def upload_all(self, output_files: list[dict], exit_code: int, paths: TaskPaths,
                         storage: Optional[NodeStorageCredential] = None) -> None:
        """Upload what applies after this exit code; the first failure raises OutputFileError. A
        container with an identityReference is written with a Storage token of that identity of the
        node's pool (`storage`)."""
        chosen = [output_file for output_file in output_files if applies(output_file, exit_code)]
        if not chosen:
            return
        log: list[str] = []
        try:
            for output_file in chosen:
                container = output_file["destination"]["container"]
                uploads = await asyncio.get_running_loop().run_in_executor(
                    None, plan, output_file["filePattern"], container.get("path"), paths.working_dir)
                if not uploads:
                    log.append(f"No file matched {output_file['filePattern']!r}.")
                for upload in uploads:
                    await self._put(container, upload, storage)
                    log.append(f"Uploaded {upload.local_path} to {_redact(_blob_url(container['containerUrl'], upload.blob_name))}")
        except OutputFileError as exc:
            await _write(paths.upload_errors, exc.message)
            raise
        finally:
            await _write(paths.upload_log, "\n".join(log))

    async def _put(self, container: dict, upload: Upload, storage: Optional[NodeStorageCredential]) -> None:
        url = _blob_url(container["containerUrl"], upload.blob_name)
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": STORAGE_SERVICE_VERSION}
        reference = container.get("identityReference")
        try:
            if reference and storage is None:
                raise StorageIdentityError("Identity not found: this node has no managed identity endpoint.")
            headers.update(storage.headers(reference) if reference and storage else {})
        except StorageIdentityError as exc:
            raise OutputFileError("FileUploadMiscError", f"Could not upload {upload.local_path} to {_redact(url)} "
                                  f"through the node identity: {exc}") from None
        for header in container.get("uploadHeaders") or []:
            headers[header["name"]] = header.get("value") or ""
        try:
            source = await asyncio.get_running_loop().run_in_executor(None, open, upload.local_path, "rb")
        except OSError as exc:
            raise OutputFileError("FileUploadMiscError",
                                  f"Could not read {upload.local_path}: {exc.strerror or exc}") from None
        try:
            # aiohttp streams an open file in chunks with its size as Content-Length: never whole in memory.
            async with self._http().put(url, data=source, headers=headers,
                                        ssl=storage.ssl if storage else True) as response:
                body = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise OutputFileError("FileUploadMiscError",
                                  f"Could not upload {upload.local_path} to {_redact(url)}: {type(exc).__name__}") from None
        finally:
            source.close()
        if response.status == 404 and b"ContainerNotFound" in body:
            raise OutputFileError("FileUploadContainerNotFound", "One of the specified Azure container(s) was not "
                                  "found while attempting to upload an output file")
        if response.status not in (200, 201):
            raise OutputFileError("FileUploadMiscError", f"Could not upload {upload.local_path} to {_redact(url)}: "
                                  f"HTTP {response.status} {_storage_error_code(body)}".rstrip())


def _storage_error_code(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    start = text.find("<Code>")
    end = text.find("</Code>")
    return text[start + 6:end] if 0 <= start < end else ""


def _blob_url(container_url: str, blob_name: str) -> str:
    parts = urlsplit(container_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + quote(blob_name, safe="/")))


def _redact(url: str) -> str:
    """A URL without its query string: a SAS token is a secret and is never reported."""
    return urlunsplit(urlsplit(url)._replace(query=""))


async def _write(path: str, text: str) -> None:
    def append() -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text + "\n" if text else "")
    await asyncio.get_running_loop().run_in_executor(None, append)
