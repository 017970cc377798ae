"""A full or read-only --location: `python -m localbatch` never acknowledges what it cannot keep.

On a small tmpfs filled up by a filler file, a request whose change cannot be made durable is
answered with a 5xx (which the SDK retries), every request answered 2xx is still there after
space returns and the emulator restarts, and once space returns new requests succeed without a
restart. A read-only location stops `python -m localbatch` at start with one line naming it.

Mounting needs root (or CAP_SYS_ADMIN): elsewhere these tests are skipped, saying so.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from .support import RunningEmulator, batch_client, pool_options, wait_for

DISK_SIZE = "2m"
HEADROOM = 64 * 1024       # bytes left free next to the filler: a few commits' worth, not more
MAX_ATTEMPTS = 400         # creates tried on the nearly full disk; any store is full long before
REFUSALS_WANTED = 3        # refused creates to see before space is given back
PADDING = "x" * 1000       # pool metadata that makes every pool take room in the store


# ---- a small file system of our own -------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """Mounts a DISK_SIZE tmpfs on a fresh directory per call; unmounts each one afterwards.

    Skips the test when it cannot mount (not root, no CAP_SYS_ADMIN, no tmpfs).
    """
    mounted: list[Path] = []

    def mount() -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        directory = tmp_path / f"disk{len(mounted)}"
        directory.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(directory)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs on {directory}: {result.stderr.strip() or result.returncode}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)  # never leave a mount behind


@pytest.fixture
def started(tmpfs) -> Iterator[Callable[[Path], RunningEmulator]]:
    """Starts `python -m localbatch` on a location; each is killed before the tmpfs is unmounted."""
    running: list[RunningEmulator] = []

    def start(location: Path) -> RunningEmulator:
        running.append(RunningEmulator(location))
        return running[-1]

    yield start
    for emulator in running:
        emulator.kill()


def free_bytes(directory: Path) -> int:
    status = os.statvfs(directory)
    return status.f_bavail * status.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """A filler file that takes all but `leave` bytes of the disk's free space."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(free_bytes(disk) - leave, 1))
    return filler


def padded_pool(pool_id: str) -> models.BatchPoolCreateOptions:
    return pool_options(pool_id, nodes=0, metadata=[models.BatchMetadataItem(name="padding", value=PADDING)])


# ---- full disk -----------------------------------------------------------------------------------
def test_on_a_full_disk_only_what_is_durable_is_acknowledged(tmpfs, started):
    disk = tmpfs()
    location = disk / "localbatch"
    emulator = started(location)
    url = emulator.url()
    acknowledged: list[str] = []
    refused: list[tuple[str, int, str]] = []
    with batch_client(url, retry_total=0) as client:  # each answer as it is, not after the SDK's retries
        for n in range(3):  # room enough: these must simply work
            client.create_pool(padded_pool(f"roomy-{n}"))
            acknowledged.append(f"roomy-{n}")

        filler = fill(disk, leave=HEADROOM)
        for n in range(MAX_ATTEMPTS):
            pool_id = f"cramped-{n:03d}"
            try:
                client.create_pool(padded_pool(pool_id))
            except HttpResponseError as error:
                code = error.error.code if error.error else None
                assert error.status_code >= 500, (
                    f"create {pool_id} on a full disk must be a 5xx the SDK retries, not {error.status_code} {code}")
                refused.append((pool_id, error.status_code, code))
                if len(refused) == REFUSALS_WANTED:
                    break
            else:
                acknowledged.append(pool_id)
        assert refused, (f"all {len(acknowledged)} creates were acknowledged, the last ones with "
                         f"{free_bytes(disk)} bytes free: some of them cannot have been made durable")
        # A read is refused too while changes are pending that cannot be saved: its answer could
        # reveal them (a refused create is in memory), and what a client has seen must survive a crash.
        with pytest.raises(HttpResponseError) as caught:
            client.get_pool("roomy-0")
        assert (caught.value.status_code, caught.value.error.code) == (503, "ServerBusy")

        filler.unlink()  # space returns; no restart
        client.create_pool(padded_pool("after-space-returns"))
        acknowledged.append("after-space-returns")
        client.create_job(models.BatchJobCreateOptions(
            id="job-after-space-returns", pool_info=models.BatchPoolInfo(pool_id="after-space-returns")))
    assert emulator.finish(signal.SIGTERM) == 0, emulator.stderr

    restarted = started(location)
    with batch_client(restarted.url()) as client:
        kept = {pool.id for pool in client.list_pools(select=["id"])}
        lost = [pool_id for pool_id in acknowledged if pool_id not in kept]
        assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged pools are gone after the restart: {lost[:5]}"
        assert client.get_job("job-after-space-returns").pool_info.pool_id == "after-space-returns"
    assert restarted.finish(signal.SIGTERM) == 0, restarted.stderr


# ---- read-only location ------------------------------------------------------------------------
def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)


@pytest.mark.parametrize("history", ["new", "used before"])
def test_a_read_only_location_stops_it_with_a_message_naming_the_location(tmpfs, started, history):
    disk = tmpfs()
    location = disk / "localbatch"
    location.mkdir()
    if history == "used before":
        earlier = started(location)
        with batch_client(earlier.url()) as client:
            client.create_pool(pool_options("kept", nodes=0))
        assert earlier.finish(signal.SIGTERM) == 0, earlier.stderr
    remount_read_only(disk)

    emulator = started(location)
    wait_for(lambda: emulator.process.poll() is not None or not emulator.lines.empty(),
             "localbatch to either give up or start listening")
    assert emulator.lines.empty(), f"localbatch started on a read-only location: {emulator.lines.get()!r}"
    emulator.kill()  # it has exited: this reaps it and collects all of stderr
    assert emulator.process.returncode != 0
    assert "Traceback" not in emulator.stderr, emulator.stderr
    assert str(location) in emulator.stderr, f"the message must name {location}: {emulator.stderr!r}"
    assert "read-only" in emulator.stderr.lower(), f"the message must say what is wrong: {emulator.stderr!r}"
