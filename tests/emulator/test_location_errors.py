"""`python -m localbatch` with a --location it cannot use says what is wrong with it, in one line.

A location problem (read-only, full, a file, not ours) exits 2 with
`localbatch: cannot use --location DIR: <problem>`; a state database that cannot be opened
exits 2 naming the database; only a bind failure says `cannot listen`, and exits 1.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from localbatch.__main__ import describe_location_problem

from .support import WAIT

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def run_localbatch(location: Path, *arguments: str, wrapper: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run `python -m localbatch --port 0 --location LOCATION` (after `wrapper`), expecting it to give up at once.

    Had it started instead, it would run until the timeout, which fails the test.
    """
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "localbatch", "--port", "0", "--location", str(location), *arguments],
        cwd=REPOSITORY_ROOT, env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT)


def mount_tmpfs(directory: Path, options: str) -> None:
    directory.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs with the given options on a fresh directory; unmounts every one afterwards."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        directory = tmp_path / f"tmpfs{len(mounted)}"
        mount_tmpfs(directory, options)
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=True)


def assert_one_line_error(completed: subprocess.CompletedProcess, expected: str, exit_code: int = 2) -> None:
    assert (completed.returncode, completed.stderr) == (exit_code, f"localbatch: {expected}\n")
    assert "listening" not in completed.stdout


def test_a_read_only_file_system_is_named(tmpfs) -> None:
    location = tmpfs("ro") / "localbatch"

    completed = run_localbatch(location)

    assert_one_line_error(completed, f"cannot use --location {location}: read-only file system")


def test_existing_state_on_a_file_system_made_read_only_is_named(tmpfs) -> None:
    location = tmpfs("rw,size=1m")
    (location / "state").mkdir()
    (location / "nodes").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(location)], check=True)

    completed = run_localbatch(location)

    assert_one_line_error(completed, f"cannot use --location {location}: read-only file system")


def test_a_full_file_system_is_named(tmpfs) -> None:
    full = tmpfs("rw,size=64k")
    filler = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as filling:
            while True:
                os.write(filler, b"\0" * 4096)
    finally:
        os.close(filler)
    assert filling.value.errno == errno.ENOSPC
    location = full / "localbatch"

    completed = run_localbatch(location)

    assert_one_line_error(completed, f"cannot use --location {location}: no space left on device")


@pytest.mark.parametrize("where", ["the location", "a parent", "a subdirectory"])
def test_a_file_where_a_directory_should_be_is_named(tmp_path: Path, where: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    location, expected = {
        "the location": (file, f"cannot use --location {file}: not a directory"),
        "a parent": (file / "localbatch", f"cannot use --location {file / 'localbatch'}: not a directory ({file})"),
        "a subdirectory": (tmp_path, f"cannot use --location {tmp_path}: not a directory ({tmp_path / 'state'})"),
    }[where]
    if where == "a subdirectory":
        file.rename(tmp_path / "state")

    completed = run_localbatch(location)

    assert_one_line_error(completed, expected)


def test_a_location_it_may_not_write_to_is_named(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux), to run localbatch as a root that file modes do bind")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    location = locked / "localbatch"

    completed = run_localbatch(location, wrapper=[setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"])

    assert_one_line_error(completed, f"cannot use --location {location}: permission denied")


@pytest.mark.parametrize("code, problem", [
    (errno.EPERM, "permission denied"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.ENAMETOOLONG, "file name too long"),
    (errno.EMLINK, os.strerror(errno.EMLINK).lower()),  # any other error: its own words
])
def test_other_file_system_errors_are_named_in_words(code: int, problem: str) -> None:
    assert describe_location_problem(OSError(code, os.strerror(code), "/x/y"), "/x/y") == problem


def test_a_corrupt_state_database_is_named_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "state" / "localbatch.sqlite3"
    database.parent.mkdir()
    database.write_bytes(b"this is not SQLite\n" * 1000)

    completed = run_localbatch(tmp_path)

    assert_one_line_error(completed, f"cannot open the state database {database}: file is not a database "
                                     f"(move it away to start with no state)")


def test_only_a_port_it_cannot_bind_says_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        completed = run_localbatch(tmp_path / "localbatch", "--port", str(port))

    assert completed.returncode == 1
    assert completed.stderr.startswith(f"localbatch: cannot listen on 127.0.0.1:{port}: ")
    assert completed.stderr.endswith("address already in use\n") and completed.stderr.count("\n") == 1
