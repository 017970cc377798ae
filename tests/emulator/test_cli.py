"""`python -m localbatch`: prints its URL, answers, and exits cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from azure.batch import models

from .support import (REPOSITORY_ROOT, WAIT, RunningEmulator, batch_client, crash_with_launchers, create_job,
                      create_pool_and_wait, persisted, process_alive, ubuntu_configuration, wait_for,
                      wait_for_nodes, wait_for_task)


@pytest.fixture
def emulator(tmp_path):
    running = RunningEmulator(tmp_path / "state")
    yield running
    running.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_prints_its_url_answers_and_exits_cleanly(emulator, signum):
    url = emulator.url()
    with urllib.request.urlopen(f"{url}/localbatch/status", timeout=WAIT) as response:
        status = json.load(response)
    assert response.status == 200 and status["status"] == "ok"
    with batch_client(url) as client:
        assert any(image.os_type == "linux" for image in client.list_supported_images())
    assert emulator.finish(signum) == 0
    assert "Traceback" not in emulator.stderr


def test_sigterm_ends_running_tasks_and_state_survives(tmp_path):
    location = tmp_path / "state"
    first = RunningEmulator(location, "--node-startup-seconds", "0.05")
    pid_file = tmp_path / "pid"
    try:
        with batch_client(first.url()) as client:
            create_pool_and_wait(client, "cli-pool", nodes=1)
            job_id = create_job(client, "cli-pool", "cli-job")
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="long", command_line=f"/bin/bash -c 'echo $$ > {pid_file}; exec sleep 60'"))
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the task to start")
            assert wait_for_task(client, job_id, "long", states=("running",))
        assert first.finish(signal.SIGTERM) == 0
    finally:
        first.kill()
    assert not process_alive(int(pid_file.read_text())), "SIGTERM must end the task's process too"

    second = RunningEmulator(location, "--node-startup-seconds", "0.05")
    try:
        with batch_client(second.url()) as client:
            task = client.get_task("cli-job", "long")
            assert task.execution_info.requeue_count == 1
            assert client.get_pool("cli-pool").id == "cli-pool"
        assert second.finish(signal.SIGTERM) == 0
    finally:
        second.kill()


def test_a_port_in_use_is_a_clear_error(emulator, tmp_path):
    port = emulator.url().rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "localbatch", "--port", port, "--location", str(tmp_path / "b")],
                            cwd=REPOSITORY_ROOT, env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_accounts_variable_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "localbatch", "--port", "0", "--location", str(tmp_path)],
                            cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=WAIT,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT),
                                 "LOCALBATCH_ACCOUNTS": "broken:not*base64"})
    assert result.returncode == 2
    assert "LOCALBATCH_ACCOUNTS" in result.stderr and "'broken'" in result.stderr
    assert "Traceback" not in result.stderr


def test_when_the_emulator_alone_crashes_its_launcher_ends_the_task_processes(tmp_path):
    pid_file = tmp_path / "pid"
    crashed = RunningEmulator(tmp_path / "state", "--node-startup-seconds", "0.05")
    try:
        with batch_client(crashed.url()) as client:
            create_pool_and_wait(client, "crash-pool", nodes=1)
            job_id = create_job(client, "crash-pool", "crash-job")
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="sleeper", command_line=f"/bin/bash -c 'echo $$ > {pid_file}; exec sleep 60'"))
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the task to start")
        crashed.process.kill()  # SIGKILL the emulator only
        crashed.process.wait(WAIT)
    finally:
        crashed.kill()
    pid = int(pid_file.read_text())
    wait_for(lambda: not process_alive(pid), "the launcher to end the orphaned task's process")


def test_after_a_crash_the_next_start_kills_leftover_task_processes_and_requeues(tmp_path):
    location = tmp_path / "state"
    pid_file = tmp_path / "pid"
    crashed = RunningEmulator(location, "--node-startup-seconds", "0.05")
    try:
        with batch_client(crashed.url()) as client:
            create_pool_and_wait(client, "crash-pool", nodes=1)
            job_id = create_job(client, "crash-pool", "crash-job")
            # First run: record the pid and sleep; a later run finds the file and succeeds.
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="orphaned", command_line=f"/bin/bash -c 'if [ -e {pid_file} ]; then exit 0; fi; "
                                            f"echo $$ > {pid_file}; exec sleep 60'"))
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the task to start")
            # Wait until the running task, with its process id, is in the state store.
            wait_for(lambda: (t := persisted(location, "task", f"{job_id.lower()}/orphaned")) and t.get("pid"),
                     "the running task to be persisted")
        launchers = crash_with_launchers(crashed)
        assert launchers, "precondition: the emulator runs its programs through a launcher"
    finally:
        crashed.kill()
    pid = int(pid_file.read_text())
    assert process_alive(pid), "precondition: a crash leaves the task's process behind"

    restarted = RunningEmulator(location, "--node-startup-seconds", "0.05")
    try:
        with batch_client(restarted.url()) as client:
            wait_for(lambda: not process_alive(pid), "the leftover process to be killed")
            task = wait_for_task(client, "crash-job", "orphaned")
            assert task.execution_info.requeue_count == 1
            assert task.execution_info.exit_code == 0
        assert restarted.finish(signal.SIGTERM) == 0
    finally:
        restarted.kill()


def test_after_a_crash_a_leftover_start_task_is_killed_and_run_again(tmp_path):
    location = tmp_path / "state"
    pid_file = tmp_path / "pid"
    crashed = RunningEmulator(location, "--node-startup-seconds", "0.05")
    try:
        with batch_client(crashed.url()) as client:
            client.create_pool(models.BatchPoolCreateOptions(
                id="crash-start", vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                virtual_machine_configuration=ubuntu_configuration(),
                start_task=models.BatchStartTask(command_line=(
                    f"/bin/bash -c 'if [ -e {pid_file} ]; then exit 0; fi; echo $$ > {pid_file}; exec sleep 60'"))))
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the start task to run")
            wait_for(lambda: (n := persisted(location, "node", "crash-start/%")) and n.get("startTaskPid"),
                     "the start task's process to be persisted")
        launchers = crash_with_launchers(crashed)
        assert launchers, "precondition: the emulator runs its programs through a launcher"
    finally:
        crashed.kill()
    pid = int(pid_file.read_text())
    assert process_alive(pid), "precondition: a crash leaves the start task's process behind"

    restarted = RunningEmulator(location, "--node-startup-seconds", "0.05")
    try:
        with batch_client(restarted.url()) as client:
            wait_for(lambda: not process_alive(pid), "the leftover start task to be killed")
            [node] = wait_for_nodes(client, "crash-start", 1, states=("idle",))
            assert node.start_task_info.exit_code == 0
        assert restarted.finish(signal.SIGTERM) == 0
    finally:
        restarted.kill()


def test_each_extra_account_gets_its_own_directory_under_the_location(tmp_path):
    key = "ZXh0cmEtYWNjb3VudC1rZXktZm9yLXRoZS1jbGktdGVzdA=="
    location = tmp_path / "state"
    emulator = RunningEmulator(location, env={"LOCALBATCH_ACCOUNTS": f"extra:{key}"})
    try:
        url = emulator.url()
        with batch_client(url, account="extra", key=key) as extra, batch_client(url) as well_known:
            extra.create_job(models.BatchJobCreateOptions(id="only-extra", pool_info=models.BatchPoolInfo(pool_id="p")))
            assert [job.id for job in extra.list_jobs()] == ["only-extra"]
            assert list(well_known.list_jobs()) == []
        assert emulator.finish(signal.SIGTERM) == 0
    finally:
        emulator.kill()
    assert (location / "accounts" / "extra" / "state" / "localbatch.sqlite3").is_file()
    assert (location / "accounts" / "extra" / "nodes").is_dir()
    assert (location / "state" / "localbatch.sqlite3").is_file()


@pytest.mark.parametrize("option, value", [("--max-connections", "0"), ("--max-connections-per-client", "x"),
                                           ("--idle-timeout", "0"), ("--body-timeout", "-1")])
def test_a_connection_limit_that_makes_no_sense_is_a_usage_error(tmp_path, option, value):
    result = subprocess.run([sys.executable, "-m", "localbatch", "--port", "0", "--location", str(tmp_path),
                             option, value], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=WAIT,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})
    assert result.returncode == 2
    assert option in result.stderr and repr(value) in result.stderr
    assert "Traceback" not in result.stderr
