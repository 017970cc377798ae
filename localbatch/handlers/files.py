"""Files of tasks and of compute nodes: list, download (with ocp-range), properties, delete.

Everything that touches the file system (resolving, stat, open, walking, deleting) runs in the
default executor, never on the event loop; a download is streamed by the pipeline from an open
file (`FileRange`), a chunk at a time. Only regular files and directories are served: a named
pipe, socket or device answers FileNotFound (404), as if it were not there, and is never opened
in a way that could block.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import errno
import mimetypes
import os
import re
import shutil
import stat
from typing import BinaryIO, Iterator, Optional
from urllib.parse import quote

from .. import wire
from ..errors import BatchServiceError
from ..http import Call, FileRange, Reply
from .common import bool_query, list_reply
from .views import job_url, pool_url

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Never block on open (a FIFO swapped in after the stat), never follow a symlink swapped in for the
# resolved last component, never acquire a controlling terminal.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


# ---- resolving a directory and a path inside it ----------------------------------------------
def _task_root(call: Call) -> tuple[str, str]:
    directory = call.service.tasks.task_files_root(call.params["jobId"], call.params["taskId"])
    return directory, f"{job_url(call, call.params['jobId'])}/tasks/{quote(call.params['taskId'], safe='')}/files"


def _node_root(call: Call) -> tuple[str, str]:
    root = call.service.nodes.node_files_root(call.params["poolId"], call.params["nodeId"])
    return root, f"{pool_url(call, call.params['poolId'])}/nodes/{call.params['nodeId']}/files"


def _inside(root: str, relative: str) -> str:
    """The absolute path of `relative` under `root`; never a path outside it."""
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith("/") or ".." in parts or "\x00" in relative:
        raise BatchServiceError("InvalidUri", "The file path must stay inside its directory.",
                                values={"FilePath": relative})
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *[p for p in parts if p]))
    if target != real_root and not target.startswith(real_root + os.sep):
        raise BatchServiceError("InvalidUri", "The file path must stay inside its directory.",
                                values={"FilePath": relative})
    return target


def _existing(root: str, relative: str) -> tuple[str, os.stat_result]:
    path = _inside(root, relative)
    try:
        return path, os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise BatchServiceError("FileNotFound") from None


# ---- entries and headers ----------------------------------------------------------------------
def _time(epoch: float) -> str:
    return wire.iso(dt.datetime.fromtimestamp(epoch, dt.timezone.utc))


def _mode(info: os.stat_result) -> str:
    return "0" + format(info.st_mode, "o")


def _content_type(path: str) -> str:
    if path.endswith(".txt"):
        return "text/plain"
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _entry(base_url: str, name: str, path: str, info: os.stat_result) -> dict:
    entry = {"name": name, "url": f"{base_url}/{quote(name)}", "isDirectory": stat.S_ISDIR(info.st_mode)}
    if not entry["isDirectory"]:
        entry["properties"] = {"creationTime": _time(info.st_ctime), "lastModified": _time(info.st_mtime),
                               "contentLength": str(info.st_size), "contentType": _content_type(path),
                               "fileMode": _mode(info)}
    return entry


def _walk(root: str, recursive: bool) -> Iterator[tuple[str, str]]:
    real_root = os.path.realpath(root)
    if not recursive:
        for name in sorted(os.listdir(real_root)):
            yield name, os.path.join(real_root, name)
        return
    for directory, dirnames, filenames in os.walk(real_root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(directory, name)
            yield os.path.relpath(path, real_root).replace(os.sep, "/"), path


def _file_headers(base_url: str, relative: str, path: str, info: os.stat_result) -> dict[str, str]:
    is_directory = stat.S_ISDIR(info.st_mode)
    headers = {
        "ocp-creation-time": wire.rfc1123(dt.datetime.fromtimestamp(info.st_ctime, dt.timezone.utc)),
        "ocp-batch-file-isdirectory": "True" if is_directory else "False",
        "ocp-batch-file-url": quote(f"{base_url}/{relative}", safe=":/"),
        "ocp-batch-file-mode": _mode(info),
        "Last-Modified": wire.rfc1123(dt.datetime.fromtimestamp(info.st_mtime, dt.timezone.utc)),
    }
    return headers


def _not_a_regular_file(relative: str) -> BatchServiceError:
    return BatchServiceError("FileNotFound", "The path names neither a file nor a directory "
                             "(a named pipe, socket or device).", values={"FilePath": relative})


def _parse_range(requested: Optional[str], size: int) -> tuple[int, int]:
    """[start, end) of the file to send for an ocp-range header (the whole file without one)."""
    start, end = 0, size
    if requested:
        match = _RANGE.match(requested.strip())
        if not match or not (match.group(1) or match.group(2)):
            raise BatchServiceError("InvalidHeaderValue", values={"HeaderName": "ocp-range", "HeaderValue": requested})
        if match.group(1):
            start = int(match.group(1))
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
        else:
            start = max(0, size - int(match.group(2)))
    return start, end


# ---- blocking work, run in the executor ----------------------------------------------------------
def _scan(root: str, base_url: str, recursive: bool) -> list[dict]:
    if not os.path.isdir(root):
        return []
    entries = []
    try:
        for name, path in _walk(root, recursive):
            try:
                entries.append(_entry(base_url, name, path, os.stat(path)))
            except FileNotFoundError:
                continue  # removed while listing
    except FileNotFoundError:
        pass  # the directory itself went away while listing
    return entries


def _resolve_for_download(root: str, relative: str, reading: bool
                          ) -> tuple[str, os.stat_result, Optional[BinaryIO]]:
    """The path, its stat and, when `reading` a regular file, the file opened for reading."""
    path, info = _existing(root, relative)
    if stat.S_ISDIR(info.st_mode):
        return path, info, None
    if not stat.S_ISREG(info.st_mode):
        raise _not_a_regular_file(relative)
    if not reading:
        return path, info, None
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise BatchServiceError("FileNotFound") from None  # removed since the stat
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BatchServiceError("FileNotFound") from None  # became a symlink since it was resolved
        raise
    handle = os.fdopen(descriptor, "rb", buffering=0)
    try:
        opened = os.fstat(descriptor)  # what was opened, whatever the path names by now
        if not stat.S_ISREG(opened.st_mode):
            raise _not_a_regular_file(relative)
    except BaseException:
        handle.close()
        raise
    return path, opened, handle


def _remove(call: Call, root: str, relative: str) -> None:
    path, info = _existing(root, relative)
    if os.path.realpath(path) == os.path.realpath(root):
        raise BatchServiceError("InvalidUri", "The root directory cannot be deleted.")
    if stat.S_ISDIR(info.st_mode):
        if bool_query(call, "recursive"):
            shutil.rmtree(path)
        elif os.listdir(path):
            raise BatchServiceError("OperationInvalidForCurrentState",
                                    "The directory is not empty; pass recursive=true to delete it.")
        else:
            os.rmdir(path)
    else:
        os.remove(path)


# ---- operations ----------------------------------------------------------------------------------
async def _list(call: Call, root: str, base_url: str) -> Reply:
    recursive = bool(bool_query(call, "recursive"))

    def listing() -> Reply:  # filtering, sorting and paging thousands of entries is work too
        return list_reply(call, _scan(root, base_url, recursive), "files", key=lambda entry: entry["name"])
    return await asyncio.to_thread(listing)


async def _download(call: Call, root: str, base_url: str) -> Reply:
    relative = call.params["filePath"]
    reading = call.method != "HEAD"
    path, info, handle = await asyncio.to_thread(_resolve_for_download, root, relative, reading)
    try:
        headers = _file_headers(base_url, relative, path, info)
        if stat.S_ISDIR(info.st_mode):
            if call.method == "HEAD":
                headers["Content-Length"] = "0"
                return Reply(200, None, headers)
            raise BatchServiceError("FileNotFound", "The path names a directory, not a file.")
        start, end = _parse_range(call.headers.get("ocp-range"), info.st_size)
        if call.method == "HEAD":
            headers["Content-Length"] = str(info.st_size)
            return Reply(200, None, headers, content_type=_content_type(path))
        assert handle is not None
        return Reply(200, None, headers, content_type=_content_type(path),
                     stream=FileRange(handle, start, max(0, end - start), path))
    except BaseException:
        if handle is not None:
            handle.close()
        raise


async def _delete(call: Call, root: str) -> Reply:
    await asyncio.to_thread(_remove, call, root, call.params["filePath"])
    return Reply(200)


async def list_task_files(call: Call) -> Reply:
    return await _list(call, *_task_root(call))


async def get_task_file(call: Call) -> Reply:
    return await _download(call, *_task_root(call))


async def delete_task_file(call: Call) -> Reply:
    return await _delete(call, _task_root(call)[0])


async def list_node_files(call: Call) -> Reply:
    return await _list(call, *_node_root(call))


async def get_node_file(call: Call) -> Reply:
    return await _download(call, *_node_root(call))


async def delete_node_file(call: Call) -> Reply:
    return await _delete(call, _node_root(call)[0])
