"""The container images the local stack provides, since no registry is reachable from here.

Each provided image is built once from this machine's Debian packages into a root file system
tarball, cached under `<location>/images/`, and imported into a node's engine (`docker import`)
under the name a pool or task asks for. Today that is busybox, from `busybox-static`: one
static binary and a link per applet, a 2 MB image whose default command is `sh`.
"""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from typing import Callable, Optional

BUSYBOX = "/bin/busybox"
ROOT_DIRECTORIES = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev",
                    "home", "var", "var/tmp")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


class ImageUnavailable(Exception):
    """The image cannot be provided: it is not one the local stack builds, or it cannot be built here."""


@dataclass(frozen=True)
class ProvidedImage:
    repository: str                     # canonical, as docker normalises it: docker.io/library/busybox
    tag: str
    build: Callable[[str], None]        # writes the root file system tarball to the given path
    command: str                        # the image's CMD, as a `docker import --change` instruction
    needs: str                          # what the machine must have to build it


def _add_entry(archive: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"",
               link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    archive.addfile(info, io.BytesIO(data) if data else None)


def build_busybox_rootfs(path: str) -> None:
    """A busybox root file system: /bin/busybox, a symbolic link per applet, /etc/passwd and group."""
    if not os.path.isfile(BUSYBOX):
        raise ImageUnavailable(f"{BUSYBOX} is missing (install the Debian package busybox-static)")
    with open(BUSYBOX, "rb") as binary:
        if b"ld-linux" in binary.read(4096):  # it names a dynamic loader: it needs a libc the image lacks
            raise ImageUnavailable(f"{BUSYBOX} is dynamically linked (install the Debian package busybox-static)")
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with tarfile.open(temporary, "w") as archive:
        for directory in ROOT_DIRECTORIES:
            _add_entry(archive, directory, tarfile.DIRTYPE, 0o1777 if directory.endswith("tmp") else 0o755)
        archive.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "bin/busybox":
                _add_entry(archive, applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        _add_entry(archive, "etc/passwd", tarfile.REGTYPE, 0o644, PASSWD)
        _add_entry(archive, "etc/group", tarfile.REGTYPE, 0o644, GROUP)
    os.replace(temporary, path)


PROVIDED_IMAGES = (
    ProvidedImage("docker.io/library/busybox", "latest", build_busybox_rootfs, 'CMD ["sh"]', "busybox-static"),
)


def canonical_name(name: str) -> tuple[str, str]:
    """(repository, tag) as docker normalises an image reference: busybox -> docker.io/library/busybox, latest."""
    name = name.strip()
    reference, _, digest = name.partition("@")
    repository, tag = reference, "latest"
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = reference.rsplit(":", 1)
    if digest:
        tag = "@" + digest
    parts = repository.split("/")
    if len(parts) == 1 or not ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if len(parts) == 1:
            parts = ["library", *parts]
        parts = ["docker.io", *parts]
    return "/".join(parts).lower(), tag


def provided_image(name: str) -> Optional[ProvidedImage]:
    repository, tag = canonical_name(name)
    return next((image for image in PROVIDED_IMAGES if (image.repository, image.tag) == (repository, tag)), None)


def provided_names() -> str:
    return ", ".join(f"{image.repository.rsplit('/', 1)[-1]}:{image.tag}" for image in PROVIDED_IMAGES)


def unavailable_message(name: str) -> str:
    return (f"Error response from daemon: pull access denied for {name}: no registry is reachable from the "
            f"local stack, which provides only these images: {provided_names()}")


class ImageCache:
    """Root file system tarballs of the provided images, built once per location."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self._lock = threading.Lock()

    def tarball(self, image: ProvidedImage) -> str:
        """The image's tarball, built on first use (blocking: call it off the event loop)."""
        path = os.path.join(self.directory, image.repository.replace("/", "_") + f"_{image.tag}.tar")
        with self._lock:
            if not os.path.isfile(path):
                os.makedirs(self.directory, exist_ok=True)
                try:
                    image.build(path)
                except (OSError, subprocess.CalledProcessError) as exc:
                    raise ImageUnavailable(f"cannot build {image.repository}:{image.tag} here "
                                           f"(it needs {image.needs}): {exc}") from None
        return path
