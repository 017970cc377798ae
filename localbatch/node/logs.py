"""A node's logs, gathered and uploaded to a blob container (upload_node_logs).

A node's logs are its agent's log (agentlog.py), uploaded as `agent-debug.log` with the lines
of the requested time range, and its programs' output: the start task's `startup/stdout.txt`
and `stderr.txt` and every task's, under `workitems/`, those written within the time range,
each with its path relative to the node root. All go under the upload's virtual directory.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from .layout import STDERR, STDOUT
from .storage_identity import SslOption

UPLOAD_TIMEOUT_SECONDS = 120


class LogUploadError(Exception):
    """The container refused an upload or could not be reached (the message never quotes the SAS)."""


def node_log_files(root: str, start: dt.datetime, end: Optional[dt.datetime]) -> list[str]:
    """Paths (relative to the node root) of the output files written between `start` and `end`."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            if name not in (STDOUT, STDERR):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if not (relative.startswith("startup" + os.sep) or relative.startswith("workitems" + os.sep)):
                continue
            if relative.count(os.sep) > (1 if relative.startswith("startup") else 4):
                continue  # a file a program wrote in its working directory, not its output
            modified = dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.timezone.utc)
            if modified >= start and (end is None or modified <= end):
                found.append(relative.replace(os.sep, "/"))
    return sorted(found)


async def upload(container_url: str, virtual_directory: str, root: str, files: list[str],
                 headers: Optional[dict[str, str]] = None, trust: SslOption = True,
                 contents: Optional[dict[str, bytes]] = None) -> None:
    """PUT each file as a block blob `<virtual_directory>/<file>`, and each of `contents` (blob
    name -> bytes) likewise, through the container's SAS, or with `headers` (a node identity's
    bearer token), trusting `trust` for https."""
    timeout = aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT_SECONDS, sock_connect=30)
    blobs: list[tuple[str, Optional[bytes]]] = [*(contents or {}).items(), *((relative, None) for relative in files)]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for relative, data in blobs:
            if data is None:
                with open(os.path.join(root, relative), "rb") as handle:
                    data = handle.read()
            url = _blob_url(container_url, f"{virtual_directory}/{relative}")
            try:
                async with session.put(url, data=data, ssl=trust, headers={
                        "x-ms-blob-type": "BlockBlob", "Content-Type": "text/plain", **(headers or {})}) as response:
                    if response.status >= 300:
                        raise LogUploadError(f"the container answered {response.status} {response.reason} "
                                             f"to the upload of {relative}")
            except aiohttp.ClientError as exc:
                raise LogUploadError(f"the container could not be reached: {type(exc).__name__}") from None


def _blob_url(container_url: str, blob_name: str) -> str:
    parts = urlsplit(container_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + quote(blob_name), parts.query, ""))
