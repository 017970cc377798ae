"""A Docker engine per node of a container pool: dockerd started, checked, stopped and cleaned up.

Each engine is Debian's dockerd with its own data root, exec root, pidfile, unix socket and
cgroup parent (all from NodeLayout.engine), without iptables, masquerading or a bridge (so
engines never touch the machine's network set-up), and, when the node has an address of its
own, listening on tcp://<address>:2375 too, as the old swarm sample's start task made dockerd
do on an Azure node. An engine dies with the emulator (parent-death signal); whatever a killed
run left (processes, mounts, the exec root) is cleaned up before the engine starts again.

Images come from containerimages.py: nothing is ever pulled from a registry.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
from typing import Optional

from .containerimages import ImageCache, ImageUnavailable, provided_image, unavailable_message
from .layout import EnginePaths

logger = logging.getLogger(__name__)

ENGINE_PORT = 2375
START_TIMEOUT = 60.0        # seconds dockerd gets to answer on its socket
STOP_TIMEOUT = 20.0         # seconds it gets to stop its containers and exit before it is killed
SHUTDOWN_TIMEOUT = 2        # dockerd's own grace period for running containers at shutdown
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_PDEATHSIG = 1
_MNT_DETACH = 2
_CLONE_NEWUTS = 0x04000000


class EngineError(Exception):
    """The node's engine could not be started or did not answer."""


@functools.lru_cache(maxsize=1)
def docker_unavailable_reason() -> Optional[str]:
    """Why no node of this machine can run a Docker engine, or None when they can."""
    if os.geteuid() != 0:
        return (f"Docker engines need root, and localbatch runs as uid {os.geteuid()}: container pools cannot be "
                "emulated on this machine.")
    for program, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("containerd", "containerd"),
                             ("runc", "runc")):
        if shutil.which(program, path=_SYSTEM_PATH) is None:
            return f"{program} is not installed (Debian package {package}): container pools cannot be emulated."
    if not os.path.isdir("/sys/fs/cgroup") or not os.listdir("/sys/fs/cgroup"):
        return "The kernel has no cgroup file system mounted: container pools cannot be emulated."
    if "overlay" not in _read("/proc/filesystems"):
        return "The kernel has no overlay file system: container pools cannot be emulated."
    return None


def docker_cli() -> str:
    return shutil.which("docker", path=_SYSTEM_PATH) or "docker"


def cgroup_parent(paths: EnginePaths) -> str:
    """The cgroup every container of this engine is put under (one per engine)."""
    return "localbatch-" + os.path.basename(paths.run_dir)


class DockerEngines:
    """The engines of every container node this emulator runs."""

    def __init__(self, images: ImageCache):
        self.images = images
        self._engines: dict[str, tuple[EnginePaths, asyncio.subprocess.Process]] = {}  # by engine directory
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, paths: EnginePaths) -> asyncio.Lock:
        return self._locks.setdefault(paths.directory, asyncio.Lock())

    def running(self, paths: EnginePaths) -> bool:
        engine = self._engines.get(paths.directory)
        return engine is not None and engine[1].returncode is None

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self, paths: EnginePaths, tcp_address: Optional[str], hostname: str) -> None:
        """Start the node's engine (cleaning up what an earlier run left) and wait until it answers.

        The engine runs in a UTS namespace of its own with the node's host name, which is what
        its swarm shows for the node and what containers on the host network see.
        """
        async with self._lock(paths):
            if self.running(paths):
                return
            try:
                process = await self._launch(paths, tcp_address, hostname)
            except OSError as exc:  # e.g. an unwritable /run, or dockerd cannot be executed
                raise EngineError(f"dockerd could not be started: {exc}") from None
            self._engines[paths.directory] = (paths, process)
            try:
                await asyncio.wait_for(self._until_answering(paths, process), START_TIMEOUT)
            except (asyncio.TimeoutError, EngineError) as exc:
                await self._stop(paths)
                reason = str(exc) or f"dockerd did not answer within {START_TIMEOUT:.0f} s"
                raise EngineError(f"{reason}; see {paths.log}") from None

    @staticmethod
    async def _launch(paths: EnginePaths, tcp_address: Optional[str], hostname: str) -> asyncio.subprocess.Process:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, clean_up_engine, paths)
        await loop.run_in_executor(None, _prepare_directories, paths)
        argv = [shutil.which("dockerd", path=_SYSTEM_PATH) or "dockerd",
                "--config-file", os.path.join(paths.directory, "daemon.json"),
                "--data-root", paths.data_root, "--exec-root", paths.exec_root, "--pidfile", paths.pidfile,
                "--host", paths.docker_host, "--iptables=false", "--ip-masq=false", "--bridge=none",
                "--cgroup-parent", cgroup_parent(paths), f"--shutdown-timeout={SHUTDOWN_TIMEOUT}"]
        if tcp_address:
            argv += ["--host", f"tcp://{tcp_address}:{ENGINE_PORT}"]
        with open(paths.log, "ab") as log:
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env={"PATH": _SYSTEM_PATH, "HOME": "/root"},
                start_new_session=True, preexec_fn=functools.partial(_prepare_engine_process, hostname))

    async def _until_answering(self, paths: EnginePaths, process: asyncio.subprocess.Process) -> None:
        while True:
            if process.returncode is not None:
                raise EngineError(f"dockerd exited with code {process.returncode}: {_last_line(paths.log)}")
            if await _ping(paths.socket):
                return
            await asyncio.sleep(0.05)

    async def stop(self, paths: EnginePaths) -> None:
        """Stop the engine and leave nothing running or mounted; its data (swarm state) stays."""
        async with self._lock(paths):
            await self._stop(paths)

    async def _stop(self, paths: EnginePaths) -> None:
        _, process = self._engines.pop(paths.directory, (paths, None))
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                logger.warning("dockerd of %s did not stop in %.0f s; killing it", paths.directory, STOP_TIMEOUT)
                process.kill()
                await process.wait()
        await asyncio.get_running_loop().run_in_executor(None, clean_up_engine, paths)

    async def close(self) -> None:
        """Stop every engine (the emulator stops)."""
        await asyncio.gather(*(self.stop(paths) for paths, _ in list(self._engines.values())),
                             return_exceptions=True)

    # ---- images and containers -------------------------------------------------------------------
    async def provide_image(self, paths: EnginePaths, name: str) -> None:
        """Make `name` present in the engine, as a pull would; ImageUnavailable when it cannot be."""
        if (await self.docker(paths, "image", "inspect", "--format", "{{.Id}}", name))[0] == 0:
            return
        image = provided_image(name)
        if image is None:
            raise ImageUnavailable(unavailable_message(name))
        tarball = await asyncio.get_running_loop().run_in_executor(None, self.images.tarball, image)
        code, output = await self.docker(paths, "import", "--change", image.command, tarball, name)
        if code != 0:
            raise ImageUnavailable(output.strip() or f"docker import exited with {code}")

    async def docker(self, paths: EnginePaths, *args: str, environment: Optional[dict[str, str]] = None
                     ) -> tuple[int, str]:
        """Run the docker client against the engine: (exit code, what it printed)."""
        process = await asyncio.create_subprocess_exec(
            docker_cli(), "--host", paths.docker_host, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**(environment or {}), "PATH": _SYSTEM_PATH, "DOCKER_CONFIG": self.client_config(paths)})
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode("utf-8", "replace")

    @staticmethod
    def client_config(paths: EnginePaths) -> str:
        """The docker client's configuration directory for this engine (never the machine user's)."""
        return os.path.join(paths.directory, "client")


# ---- blocking helpers (run them off the event loop) ----------------------------------------------
def _prepare_directories(paths: EnginePaths) -> None:
    os.makedirs(paths.data_root, exist_ok=True)
    os.makedirs(paths.exec_root, exist_ok=True)
    with open(os.path.join(paths.directory, "daemon.json"), "w", encoding="utf-8") as config:
        json.dump({}, config)  # this machine's /etc/docker/daemon.json is not the node's


def clean_up_engine(paths: EnginePaths) -> None:
    """Kill whatever of this engine still runs (dockerd, containerd, shims, containers), unmount
    what it mounted, and remove its runtime directory. Its data directory is kept."""
    pid = _read(paths.pidfile).strip()
    if pid.isdigit() and paths.exec_root in _read(f"/proc/{pid}/cmdline").replace("\0", " "):
        _kill(int(pid))
    for pid in _processes_mentioning(paths.exec_root) | _processes_in_cgroup(cgroup_parent(paths)):
        _kill(pid)
    _unmount_below(paths.run_dir)
    _unmount_below(paths.data_root)
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    for leftover in (paths.pidfile,):
        if os.path.exists(leftover):
            os.remove(leftover)
    _remove_cgroups(cgroup_parent(paths))


def _processes_mentioning(text: str) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and text in _read(f"/proc/{name}/cmdline").replace("\0", " "):
            found.add(int(name))
    return found


def _cgroup_directories(parent: str) -> list[str]:
    roots = ["/sys/fs/cgroup", *(os.path.join("/sys/fs/cgroup", name) for name in _listdir("/sys/fs/cgroup"))]
    return [os.path.join(root, parent) for root in roots if os.path.isdir(os.path.join(root, parent))]


def _processes_in_cgroup(parent: str) -> set[int]:
    found = set()
    for directory in _cgroup_directories(parent):
        for current, _, files in os.walk(directory):
            if "cgroup.procs" in files:
                members = _read(os.path.join(current, "cgroup.procs")).split()
                found.update(int(member) for member in members if member.isdigit())
    return found


def _remove_cgroups(parent: str) -> None:
    for directory in _cgroup_directories(parent):
        for current, _, _ in sorted(os.walk(directory), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(current)
            except OSError:
                pass


def _unmount_below(directory: str) -> None:
    prefix = os.path.realpath(directory) if os.path.exists(directory) else directory
    mount_points = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                mount_points.append(point)
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted(mount_points, key=len, reverse=True):
        if libc.umount2(point.encode(), _MNT_DETACH) != 0:
            logger.warning("cannot unmount %s: %s", point, os.strerror(ctypes.get_errno()))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _prepare_engine_process(hostname: str) -> None:
    """In the child before exec: dockerd gets SIGTERM if the emulator dies, and the node's host
    name in a UTS namespace of its own (left as it is if the kernel refuses)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    name = hostname.encode()
    if libc.unshare(_CLONE_NEWUTS) == 0:
        libc.sethostname(name, len(name))


async def _ping(socket_path: str) -> bool:
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path)
    except OSError:
        return False
    try:
        writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        return b" 200 " in status
    except OSError:
        return False
    finally:
        writer.close()


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _last_line(path: str) -> str:
    lines = [line for line in _read(path).splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"
