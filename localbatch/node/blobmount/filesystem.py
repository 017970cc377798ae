"""The FUSE operations of one mounted container (mfusepy, libfuse3), as blobfuse2 answers them
on an account without hierarchical namespace:

- getattr: the blob's size and last-modified time; a directory is a common prefix or a marker
  blob; modes are blobfuse2's (files 0755, directories 0775; 0777 with allow_other), owned by
  the mounting user; chmod, chown and utimens succeed without effect
- readdir: the blobs and virtual directories directly below, and files created but not uploaded
- open/create/read/write/truncate: through the file cache; flush and release upload
- unlink, mkdir (a marker blob), rmdir (only when empty), rename (copy then delete, blob by blob
  for a directory: not atomic, as in blobfuse2)
- errors as errno: ENOENT, EEXIST, EACCES (refused by Storage), ENOTEMPTY, EROFS, EIO
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import Any, Callable, Optional

from mfusepy import FuseOSError, Operations

from .cache import FileCache
from .options import MountOptions
from .storage import BlobStore, Entry, StorageError

logger = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


class BlobFileSystem(Operations):
    use_ns = True

    def __init__(self, store: BlobStore, cache: FileCache, options: MountOptions,
                 on_mounted: Callable[[], None] = lambda: None):
        self.store = store
        self.cache = cache
        self.options = options
        self.on_mounted = on_mounted
        self.uid, self.gid = os.getuid(), os.getgid()
        self.mounted_at = time.time_ns()

    # ---- lifecycle ----------------------------------------------------------------------------------
    def init(self, path: str) -> None:
        self.on_mounted()

    def destroy(self, path: str) -> None:
        self.cache.close()

    # ---- attributes and listings ------------------------------------------------------------------------
    def getattr(self, path: str, fh: Optional[int] = None) -> dict[str, Any]:
        name = _name(path)
        if not name:
            return self._attributes(Entry("", True))
        cached = self.cache.local(name)
        if cached is not None:
            return self._attributes(Entry(name, False, self.cache.size(cached)))
        entry = _call(self.store.stat, name)
        if entry is None:
            raise FuseOSError(errno.ENOENT)
        return self._attributes(entry)

    def readdir(self, path: str, fh: int) -> list:
        name = _name(path)
        entries = {entry.name: entry for entry in _call(lambda: list(self.store.list_directory(name)))}
        for pending in self.cache.pending(name):
            entries.setdefault(pending.name, pending)
        if name and not entries and _call(self.store.stat, name) is None:
            raise FuseOSError(errno.ENOENT)
        return [".", "..", *((entry.name, self._attributes(entry), 0) for entry in entries.values())]

    def statfs(self, path: str) -> dict[str, int]:
        blocks = 1 << 30  # Blob storage has no meaningful capacity to report: a large one, as blobfuse2 does
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks, "f_bavail": blocks,
                "f_files": 1 << 24, "f_ffree": 1 << 24, "f_favail": 1 << 24, "f_namemax": 255}

    def chmod(self, path: str, mode: int) -> int:
        return 0  # no permissions without hierarchical namespace: accepted, without effect

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: Optional[tuple[int, int]] = None) -> int:
        return 0

    # ---- files ---------------------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            self._writable()
        return _call(self.cache.open, _name(path), bool(flags & os.O_TRUNC))

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        self._writable()
        return _call(self.cache.create, _name(path))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return _call(self.cache.read, fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._writable()
        return _call(self.cache.write, fh, data, offset)

    def truncate(self, path: str, length: int, fh: Optional[int] = None) -> int:
        self._writable()
        if fh is not None:
            _call(self.cache.truncate, fh, length)
            return 0
        handle = _call(self.cache.open, _name(path))
        try:
            _call(self.cache.truncate, handle, length)
        finally:
            _call(self.cache.release, handle)
        return 0

    def flush(self, path: str, fh: int) -> int:
        _call(self.cache.flush, fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        _call(self.cache.flush, fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        _call(self.cache.release, fh)
        return 0

    def unlink(self, path: str) -> int:
        self._writable()
        name = _name(path)
        cached = self.cache.local(name)
        try:
            self.store.delete(name)
        except StorageError as exc:
            if exc.errno != errno.ENOENT or cached is None:  # a file not uploaded yet exists only here
                raise FuseOSError(exc.errno) from None
        self.cache.unlinked(name)
        return 0

    # ---- directories ------------------------------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        self._writable()
        name = _name(path)
        if _call(self.store.stat, name) is not None:
            raise FuseOSError(errno.EEXIST)
        _call(self.store.make_directory, name)
        return 0

    def rmdir(self, path: str) -> int:
        self._writable()
        name = _name(path)
        entry = _call(self.store.stat, name)
        if entry is None:
            raise FuseOSError(errno.ENOENT)
        if not entry.is_directory:
            raise FuseOSError(errno.ENOTDIR)
        if self.cache.pending(name) or any(not below.endswith("/") for below in _call(self.store.names_below, name)):
            raise FuseOSError(errno.ENOTEMPTY)
        try:
            self.store.delete(name)  # its marker blob, when it has one
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise FuseOSError(exc.errno) from None
        return 0

    def rename(self, old: str, new: str) -> int:
        self._writable()
        source, target = _name(old), _name(new)
        cached = self.cache.local(source)
        if cached is not None:
            _call(self.cache.upload, cached)
        entry = _call(self.store.stat, source)
        if entry is None:
            raise FuseOSError(errno.ENOENT)
        if not entry.is_directory:
            self._move(source, target)
            return 0
        existing = _call(self.store.stat, target)
        if existing is not None and (not existing.is_directory or _call(self.store.has_children, target)):
            raise FuseOSError(errno.ENOTEMPTY if existing.is_directory else errno.ENOTDIR)
        for below in [*_call(self.store.names_below, source), *([source] if _call(self.store.blob_exists, source) else [])]:
            self._move(below, target + below[len(source):])
        return 0

    # ---- internals ----------------------------------------------------------------------------------
    def _move(self, source: str, target: str) -> None:
        scratch = os.path.join(self.cache.directory, ".rename")
        try:
            _call(self.store.copy, source, target, scratch)
        finally:
            if os.path.exists(scratch):
                os.remove(scratch)
        _call(self.store.delete, source)
        self.cache.renamed(source, target)

    def _writable(self) -> None:
        if self.options.read_only:
            raise FuseOSError(errno.EROFS)

    def _attributes(self, entry: Entry) -> dict[str, Any]:
        modified = int(entry.modified.timestamp() * 1e9) if entry.modified is not None else self.mounted_at
        if entry.is_directory:
            mode, links, size = stat.S_IFDIR | self.options.directory_mode, 2, 4096
        else:
            mode, links, size = stat.S_IFREG | self.options.file_mode, 1, entry.size
        return {"st_mode": mode, "st_nlink": links, "st_size": size, "st_uid": self.uid, "st_gid": self.gid,
                "st_mtime": modified, "st_ctime": modified, "st_atime": modified,
                "st_blocks": (size + 511) // 512, "st_blksize": 4096}


def _name(path: str) -> str:
    return path.strip("/")


def _call(function: Callable, *arguments):
    """Run a storage or cache step; its failure becomes the errno the caller gets."""
    try:
        return function(*arguments)
    except FuseOSError:
        raise
    except OSError as exc:
        if isinstance(exc, StorageError):
            logger.warning("%s: %s", getattr(function, "__name__", "storage"), exc.strerror)
        raise FuseOSError(exc.errno or errno.EIO) from None
