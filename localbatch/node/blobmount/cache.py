"""blobfuse2's file cache: a file is downloaded whole when opened, read and written locally, and
uploaded when flushed or closed; after its last close it stays cached for `timeout` seconds, and
an open within that time uses the cached copy without asking Blob storage again.
"""
from __future__ import annotations

import errno
import itertools
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional

from .storage import BlobStore, Entry


@dataclass
class CachedFile:
    name: str                    # the blob's name
    path: str                    # the local copy
    opens: int = 0
    dirty: bool = False          # written (or created) since it was last uploaded
    deleted: bool = False        # unlinked while open: never uploaded again
    released_at: Optional[float] = None  # monotonic time of its last close


class FileCache:
    def __init__(self, directory: str, store: BlobStore, timeout: float):
        self.directory = directory
        self.store = store
        self.timeout = timeout
        self._files: dict[str, CachedFile] = {}
        self._handles: dict[int, tuple[CachedFile, int]] = {}   # handle -> (file, local descriptor)
        self._next_handle = itertools.count(1)
        os.makedirs(directory, mode=0o700, exist_ok=True)

    # ---- what the file system asks ----------------------------------------------------------------
    def local(self, name: str) -> Optional[CachedFile]:
        """The cached copy of `name` when it must win over Blob storage (open, or not uploaded yet)."""
        cached = self._files.get(name)
        return cached if cached is not None and (cached.opens or cached.dirty) else None

    def open(self, name: str, truncate: bool = False) -> int:
        self.evict_expired()
        cached = self._files.get(name)
        if cached is None or not self._fresh(cached):
            cached = CachedFile(name, self._local_path(name))
            self.store.download(name, cached.path)
            self._files[name] = cached
        if truncate:
            os.truncate(cached.path, 0)
            cached.dirty = True
        return self._new_handle(cached)

    def create(self, name: str) -> int:
        self.evict_expired()
        cached = CachedFile(name, self._local_path(name), dirty=True)
        with open(cached.path, "wb"):
            pass
        self._files[name] = cached
        return self._new_handle(cached)

    def read(self, handle: int, size: int, offset: int) -> bytes:
        return os.pread(self._descriptor(handle), size, offset)

    def write(self, handle: int, data: bytes, offset: int) -> int:
        cached, descriptor = self._handle(handle)
        written = os.pwrite(descriptor, data, offset)
        cached.dirty = True
        return written

    def truncate(self, handle: int, length: int) -> None:
        cached, descriptor = self._handle(handle)
        os.ftruncate(descriptor, length)
        cached.dirty = True

    def flush(self, handle: int) -> None:
        cached, _ = self._handle(handle)
        self.upload(cached)

    def release(self, handle: int) -> None:
        cached, descriptor = self._handles.pop(handle, (None, None))
        if cached is None:
            return
        os.close(descriptor)
        cached.opens -= 1
        try:
            self.upload(cached)
        finally:
            if cached.opens == 0:
                cached.released_at = time.monotonic()
                if cached.deleted:
                    _remove(cached.path)
                elif self.timeout <= 0:
                    self.forget(cached.name)

    def upload(self, cached: CachedFile) -> None:
        if cached.dirty and not cached.deleted:
            self.store.upload(cached.name, cached.path)
            cached.dirty = False

    def size(self, cached: CachedFile) -> int:
        return os.stat(cached.path).st_size

    # ---- renames and removals -----------------------------------------------------------------------
    def renamed(self, old: str, new: str) -> None:
        """The blob was renamed: its cached copy (and its open handles) follow it."""
        cached = self._files.pop(old, None)
        self.unlinked(new)  # what the target was is replaced
        if cached is not None:
            path = self._local_path(new)
            os.replace(cached.path, path)
            cached.name, cached.path = new, path
            self._files[new] = cached

    def forget(self, name: str) -> None:
        """Drop the cached copy of `name`, unless it is open."""
        cached = self._files.get(name)
        if cached is not None and not cached.opens:
            del self._files[name]
            _remove(cached.path)

    def unlinked(self, name: str) -> None:
        """`name` was deleted: a handle still open keeps its data (as POSIX has it) but the blob
        is never uploaded again, and new opens do not see it."""
        cached = self._files.pop(name, None)
        if cached is None:
            return
        cached.deleted, cached.dirty = True, False
        if not cached.opens:
            _remove(cached.path)

    def names_below(self, directory: str) -> list[str]:
        prefix = f"{directory}/" if directory else ""
        return [name for name in self._files if name.startswith(prefix)]

    def pending(self, directory: str) -> list[Entry]:
        """Files in `directory` that exist only here so far (created, not uploaded yet)."""
        prefix = f"{directory}/" if directory else ""
        found = []
        for name, cached in self._files.items():
            relative = name[len(prefix):]
            if name.startswith(prefix) and "/" not in relative and (cached.opens or cached.dirty):
                found.append(Entry(relative, False, self.size(cached)))
        return found

    def evict_expired(self) -> None:
        now = time.monotonic()
        for name, cached in list(self._files.items()):
            if not cached.opens and not cached.dirty and not self._fresh(cached, now):
                self.forget(name)

    def close(self) -> None:
        """Unmounting: upload what is still dirty, then drop the whole cache."""
        for handle in list(self._handles):
            try:
                self.release(handle)
            except OSError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- internals -----------------------------------------------------------------------------------
    def _fresh(self, cached: CachedFile, now: Optional[float] = None) -> bool:
        if cached.opens or cached.dirty or cached.released_at is None:
            return True
        return (now if now is not None else time.monotonic()) - cached.released_at < self.timeout

    def _new_handle(self, cached: CachedFile) -> int:
        handle = next(self._next_handle)
        self._handles[handle] = (cached, os.open(cached.path, os.O_RDWR))
        cached.opens += 1
        cached.released_at = None
        return handle

    def _handle(self, handle: int) -> tuple[CachedFile, int]:
        try:
            return self._handles[handle]
        except KeyError:
            raise OSError(errno.EBADF, "unknown file handle") from None

    def _descriptor(self, handle: int) -> int:
        return self._handle(handle)[1]

    def _local_path(self, name: str) -> str:
        path = os.path.join(self.directory, "files", name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return path


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
