"""The emulator's side of blob mounts: one helper process per mount of each node, started before
the node's start task, watched while it runs, and stopped (unmounted, its cache removed) when
the node is removed, rebooted or reimaged, its pool deleted, or the emulator stops.

A helper dies with the emulator (parent-death signal: it unmounts on SIGTERM); a mount a killed
helper left behind is detached before the same mount point is used again, and before any
removal walks the node's directories (layout.remove_node).
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit

from ..layout import MountPaths, NodeLayout
from .mountpoints import detach, mount_points_below

logger = logging.getLogger(__name__)

MOUNT_TIMEOUT = 60.0   # seconds a helper gets to check access and mount
STARTING_AT_ONCE = 4   # helpers starting at the same time (each is a Python process importing the SDK)
STOP_TIMEOUT = 20.0    # seconds it gets to upload what is dirty and exit once unmounted
_PR_SET_PDEATHSIG = 1
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


class MountError(Exception):
    """A mount could not be made; `path` is its relativeMountPath."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class BlobMount:
    """One azureBlobFileSystemConfiguration of a pool, as a node mounts it."""
    index: int
    relative_mount_path: str
    account_name: str
    container_name: str
    account_url: str
    # {"accountKey": ...}, {"sasKey": ...} (never logged) or {"identityResourceId": ..., "identityClientId": ...}
    credential: dict = field(repr=False)
    options: str = ""


@dataclass
class _Helper:
    mount: BlobMount
    paths: MountPaths
    process: asyncio.subprocess.Process
    generation: int
    stopping: bool = False
    watcher: Optional[asyncio.Task] = None


@functools.lru_cache(maxsize=1)
def fuse_unavailable_reason() -> Optional[str]:
    """Why blob containers cannot be mounted on this machine's nodes, or None when they can."""
    if os.geteuid() != 0:
        return (f"mounting needs root, and localbatch runs as uid {os.geteuid()}: blob containers cannot be "
                "mounted on this machine's nodes.")
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container): blob containers cannot be mounted."
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse cannot be opened: blob containers cannot be mounted."
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3): blob containers cannot be mounted."
    try:
        importlib.import_module("mfusepy")  # loads libfuse3
    except (ImportError, OSError) as exc:
        return f"libfuse3 cannot be loaded ({exc}; Debian package libfuse3-3, Python package mfusepy)."
    return None


def blob_endpoint_of(connection_string: str) -> str:
    """The blob endpoint a storage connection string names."""
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    if fields.get("BlobEndpoint"):
        return fields["BlobEndpoint"].rstrip("/")
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    return (f"{fields.get('DefaultEndpointsProtocol', 'https')}://{fields.get('AccountName', '')}.blob."
            f"{fields.get('EndpointSuffix', 'core.windows.net')}")


def account_url(blob_endpoint: str, account_name: str) -> str:
    """The blob endpoint of `account_name` beside the configured storage endpoint: path-style on an
    emulator (http://127.0.0.1:10000/<account>), host-style on Azure (https://<account>.blob.<suffix>)."""
    parts = urlsplit(blob_endpoint)
    host = parts.hostname or ""
    if ".blob." in host:
        suffix = host.split(".blob.", 1)[1]
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{account_name}.blob.{suffix}{port}"
    return f"{parts.scheme}://{parts.netloc}/{account_name}"


class BlobMounts:
    """The mount helpers of every node of one account's world."""

    def __init__(self, layout: NodeLayout):
        self.layout = layout
        self._helpers: dict[str, list[_Helper]] = {}       # node key -> its helpers
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: Optional[asyncio.Semaphore] = None  # made on the loop that uses it

    def _lock(self, node_key: str) -> asyncio.Lock:
        return self._locks.setdefault(node_key, asyncio.Lock())

    def mounted(self, node_key: str) -> list[str]:
        """The mount points a node has (helpers running)."""
        return [helper.paths.mount_point for helper in self._helpers.get(node_key, [])
                if helper.process.returncode is None]

    async def mount_node(self, node_key: str, pool_id: str, node_id: str, mounts: list[BlobMount],
                         generation: int, still_wanted: Callable[[], bool],
                         on_lost: Callable[[str, str], None],
                         environment: Optional[dict[str, str]] = None) -> None:
        """Mount each of `mounts` on the node, in order; MountError for the first that fails (the
        ones before it stay mounted, as on a node that Batch marks unusable). `on_lost(path,
        reason)` is called when a helper dies while its mount is wanted. `environment`: what the
        node gives its programs that a helper needs too: the CA bundle (SSL_CERT_FILE,
        REQUESTS_CA_BUNDLE) for https Storage, the managed identity endpoint (IDENTITY_ENDPOINT,
        IDENTITY_HEADER) for a mount through the node's identity."""
        async with self._lock(node_key):
            for mount in mounts:
                if not still_wanted():
                    return
                paths = self.layout.mount(pool_id, node_id, mount.index, mount.relative_mount_path)
                if self._starting is None:
                    self._starting = asyncio.Semaphore(STARTING_AT_ONCE)
                async with self._starting:  # a pool of many nodes does not start all its helpers at once
                    if not still_wanted():
                        return
                    helper = await self._start(mount, paths, generation, environment or {})
                self._helpers.setdefault(node_key, []).append(helper)
                helper.watcher = asyncio.get_running_loop().create_task(self._watch(helper, on_lost))

    async def unmount_node(self, node_key: str, generation: Optional[int] = None) -> None:
        """Unmount the node's mounts (only those made by boot `generation`, when given), stop
        their helpers and remove their caches."""
        async with self._lock(node_key):
            helpers = self._helpers.get(node_key, [])
            leaving = [h for h in helpers if generation is None or h.generation == generation]
            self._helpers[node_key] = [h for h in helpers if h not in leaving]
            if not self._helpers[node_key]:
                del self._helpers[node_key]
            await asyncio.gather(*(self._stop(helper) for helper in reversed(leaving)))

    async def close(self) -> None:
        """Unmount everything (the emulator stops)."""
        await asyncio.gather(*(self.unmount_node(key) for key in list(self._helpers)), return_exceptions=True)

    # ---- one helper ---------------------------------------------------------------------------------------
    async def _start(self, mount: BlobMount, paths: MountPaths, generation: int,
                     environment: dict[str, str]) -> _Helper:
        loop = asyncio.get_running_loop()
        settings = await loop.run_in_executor(None, _prepare, mount, paths)
        with open(paths.log, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "localbatch.node.blobmount.helper", settings,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                env={**{name: os.environ[name] for name in _INHERITED if name in os.environ}, **environment},
                start_new_session=True, preexec_fn=_die_with_parent)
        helper = _Helper(mount, paths, process, generation)
        try:
            line = await asyncio.wait_for(process.stdout.readline(), MOUNT_TIMEOUT)
        except asyncio.TimeoutError:
            line = f"error: the mount did not complete within {MOUNT_TIMEOUT:.0f} s".encode()
        except asyncio.CancelledError:  # the emulator stops while this mount is being made
            helper.stopping = True
            if process.returncode is None:
                process.kill()
            _clean_up(paths)
            raise
        text = line.decode("utf-8", "replace").strip()
        if text == "mounted":
            logger.info("mounted container %s of account %s at %s", mount.container_name, mount.account_name,
                        paths.mount_point)
            return helper
        await self._stop(helper)
        reason = text[len("error: "):] if text.startswith("error: ") else \
            f"blobfuse exited with code {process.returncode} before mounting; see {os.path.basename(paths.log)}"
        logger.warning("mount %s failed: %s", mount.relative_mount_path, reason)
        raise MountError(mount.relative_mount_path, reason)

    async def _watch(self, helper: _Helper, on_lost: Callable[[str, str], None]) -> None:
        code = await helper.process.wait()
        if helper.stopping:
            return
        logger.warning("the blobfuse helper of %s exited with code %s", helper.paths.mount_point, code)
        await asyncio.get_running_loop().run_in_executor(None, _clean_up, helper.paths)
        on_lost(helper.mount.relative_mount_path,
                f"the blobfuse process serving the mount exited with code {code}; the mount is gone")

    async def _stop(self, helper: _Helper) -> None:
        helper.stopping = True
        process = helper.process
        loop = asyncio.get_running_loop()
        if process.returncode is None:
            unmount = await asyncio.create_subprocess_exec(
                "fusermount3", "-u", "-z", helper.paths.mount_point, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await unmount.wait()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 2)
                except asyncio.TimeoutError:
                    process.kill()
                    await process.wait()
        if helper.watcher is not None and helper.watcher is not asyncio.current_task():
            await helper.watcher
        await loop.run_in_executor(None, _clean_up, helper.paths)


# ---- blocking helpers (off the event loop) ---------------------------------------------------------------
def _prepare(mount: BlobMount, paths: MountPaths) -> str:
    """Detach what a killed helper left at the mount point, make the directories, and write the
    helper's settings (credential included) to a 0600 file it deletes once read."""
    _clean_up(paths)
    os.makedirs(paths.mount_point, exist_ok=True)
    os.makedirs(paths.directory, mode=0o700, exist_ok=True)
    settings = {"mountPoint": paths.mount_point, "cacheDir": paths.cache_dir, "log": paths.log,
                "accountUrl": mount.account_url, "accountName": mount.account_name,
                "containerName": mount.container_name, "credential": mount.credential, "options": mount.options}
    descriptor = os.open(paths.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    return paths.credentials


def _clean_up(paths: MountPaths) -> None:
    """No mount left at the mount point, no cache and no credentials file."""
    for point in mount_points_below(paths.mount_point):
        detach(point)
    shutil.rmtree(paths.directory, ignore_errors=True)


def _die_with_parent() -> None:
    """In the helper before exec: SIGTERM (which unmounts) when the emulator dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
