"""pyproject.toml: the project installs into a virtual environment, and then localbatch runs from any directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from common import REPOSITORY_ROOT
from tests.waiting import wait_for

INSTALL_TIMEOUT_SECONDS = 300


def test_pip_install_editable_gives_a_localbatch_command_and_module_that_work_from_any_directory(tmp_path: Path) -> None:
    environment_directory = tmp_path / "venv"
    venv.create(environment_directory, with_pip=False)
    python = environment_directory / "bin" / "python"
    # The new environment sees this one's packages (the SDK, aiohttp, setuptools): no download needed.
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    Path(site_packages, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}

    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", "-e", str(REPOSITORY_ROOT)],
        cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS,
    )
    assert installed.returncode == 0, installed.stderr

    imported = subprocess.run([str(python), "-c", "import common, localbatch; print(common.REPOSITORY_ROOT)"],
                              cwd=elsewhere, env=environment, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == str(REPOSITORY_ROOT)
    usage = subprocess.run([str(python), "-m", "localbatch", "--help"], cwd=elsewhere, env=environment,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "--location" in usage.stdout, usage.stderr
    assert usage.stdout.startswith("usage: python -m localbatch ["), usage.stdout
    command_usage = subprocess.run([str(environment_directory / "bin" / "localbatch"), "--help"], cwd=elsewhere,
                                   env=environment, capture_output=True, text=True, timeout=60)
    assert command_usage.returncode == 0 and command_usage.stdout.startswith("usage: localbatch ["), command_usage.stdout
    assert command_usage.stdout.partition("\noptions:")[2] == usage.stdout.partition("\noptions:")[2] != ""

    log = tmp_path / "localbatch.log"
    with log.open("wb") as output:
        command = subprocess.Popen([str(environment_directory / "bin" / "localbatch"), "--port", "0",
                                    "--location", str(tmp_path / "state")],
                                   cwd=elsewhere, env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "localbatch listening on http://127.0.0.1:" in log.read_text(), "the localbatch command to listen", 60)
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 0, log.read_text()
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(timeout=60)
