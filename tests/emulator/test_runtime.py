"""The node runtime: start tasks (success and failure), retries, wall-clock limits, the task
environment (AZ_BATCH_*, no shell, POSIX locale) and how output and exit codes are reported."""
from __future__ import annotations

import datetime as dt
import os
import shutil

import pytest
from azure.batch import models

from .support import (create_job, create_pool_and_wait, pool_options, read_task_file, run_task, unique_id,
                      wait_for, wait_for_nodes)


def _environment(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# ---- start tasks ------------------------------------------------------------------------------------
def test_failing_start_task_leaves_the_node_starttaskfailed(client):
    pool = unique_id("stfail")
    client.create_pool(pool_options(pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/bash -c 'echo cannot-start >&2; exit 7'", max_task_retry_count=2,
        wait_for_success=True)))
    [node] = wait_for_nodes(client, pool, 1, states=("starttaskfailed",))
    info = node.start_task_info
    assert info.state == "completed"
    assert info.exit_code == 7
    assert info.result == "failure"
    assert info.retry_count == 2
    assert info.failure_info.category == "usererror"
    assert info.failure_info.code == "FailureExitCode"
    assert info.start_time is not None and info.end_time is not None
    assert b"".join(client.download_node_file(pool, node.id, "startup/stderr.txt")) == b"cannot-start\n"
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}[pool]
    assert counts.dedicated.start_task_failed == 1

    # No task is scheduled onto a node whose start task failed.
    job_id = create_job(client, pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="stuck", command_line="/bin/true"))
    assert client.get_task(job_id, "stuck").state == "active"
    assert client.get_node(pool, node.id).state == "starttaskfailed"


def test_start_task_without_wait_for_success_does_not_hold_the_node(client):
    pool = unique_id("stnowait")
    client.create_pool(pool_options(pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/false", wait_for_success=False)))
    [node] = wait_for_nodes(client, pool, 1, states=("idle",))
    job_id = create_job(client, pool)
    assert run_task(client, job_id, "/bin/true").execution_info.exit_code == 0
    info = wait_for(lambda: (i := client.get_node(pool, node.id).start_task_info) and i.state == "completed" and i,
                    "the start task to finish")
    assert info.exit_code == 1 and info.result == "failure"


def test_start_task_environment_and_directory(client):
    pool = unique_id("stenv")
    [node] = create_pool_and_wait(client, pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/usr/bin/env", environment_settings=[models.EnvironmentSetting(name="FROM_POOL", value="yes")]))
    env = _environment(b"".join(client.download_node_file(pool, node.id, "startup/stdout.txt")).decode())
    assert env["FROM_POOL"] == "yes"
    assert env["AZ_BATCH_POOL_ID"] == pool
    assert env["AZ_BATCH_NODE_ID"] == node.id
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == os.path.join(env["AZ_BATCH_NODE_ROOT_DIR"], "startup")
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == os.path.join(env["AZ_BATCH_NODE_ROOT_DIR"], "startup", "wd")
    assert "AZ_BATCH_TASK_ID" not in env and "AZ_BATCH_JOB_ID" not in env
    assert node.start_task_info.exit_code == 0 and node.start_task_info.result == "success"


def test_start_task_output_is_shared_with_tasks_on_the_node(client):
    pool = unique_id("stshare")
    create_pool_and_wait(client, pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/bash -c 'echo prepared > $AZ_BATCH_NODE_SHARED_DIR/ready.txt'"))
    job_id = create_job(client, pool)
    task = run_task(client, job_id, "/bin/bash -c 'cat $AZ_BATCH_NODE_SHARED_DIR/ready.txt'")
    assert read_task_file(client, job_id, task.id) == "prepared\n"


# ---- retries and wall clock -------------------------------------------------------------------------
def test_a_failing_task_is_retried_up_to_max_task_retry_count(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id)
    runs = tmp_path / "runs"
    task = run_task(client, job_id, f"/bin/bash -c 'echo run >> {runs}; exit 5'",
                    constraints=models.BatchTaskConstraints(max_task_retry_count=2))
    assert task.execution_info.retry_count == 2
    assert task.execution_info.last_retry_time is not None
    assert task.execution_info.exit_code == 5
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code == "FailureExitCode"
    assert runs.read_text().count("run") == 3


def test_the_job_retry_count_applies_to_its_tasks(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id, constraints=models.BatchJobConstraints(max_task_retry_count=1))
    runs = tmp_path / "runs"
    task = run_task(client, job_id, f"/bin/bash -c 'echo run >> {runs}; exit 1'")
    assert task.constraints.max_task_retry_count == 1
    assert task.execution_info.retry_count == 1
    assert runs.read_text().count("run") == 2


def test_a_task_that_succeeds_on_retry_ends_successfully(client, pool_id, tmp_path):
    job_id = create_job(client, pool_id)
    flag = tmp_path / "flag"
    task = run_task(client, job_id, f"/bin/bash -c 'if [ -e {flag} ]; then exit 0; fi; touch {flag}; exit 1'",
                    constraints=models.BatchTaskConstraints(max_task_retry_count=3))
    assert task.execution_info.retry_count == 1
    assert task.execution_info.exit_code == 0
    assert task.execution_info.result == "success"
    assert task.execution_info.failure_info is None


def test_max_wall_clock_time_kills_the_task(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'echo started; sleep 60; echo never'",
                    constraints=models.BatchTaskConstraints(max_wall_clock_time=dt.timedelta(seconds=0.5),
                                                            max_task_retry_count=2))
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert task.execution_info.failure_info.code == "MaxWallClockTimeExpiry"
    assert task.execution_info.retry_count == 0  # a timed-out task is not retried
    assert read_task_file(client, job_id, task.id) == "started\n"


def test_a_task_killed_by_a_signal_reports_128_plus_the_signal(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'kill -9 $$'")
    assert task.execution_info.exit_code == 137
    assert task.execution_info.failure_info.code == "FailureExitCode"


# ---- environment ----------------------------------------------------------------------------------
def test_task_environment_has_the_batch_variables(client, server, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/usr/bin/env", task_id="envtask")
    env = _environment(read_task_file(client, job_id, "envtask"))
    root = env["AZ_BATCH_NODE_ROOT_DIR"]
    assert env["AZ_BATCH_ACCOUNT_NAME"] == "localbatch"
    assert env["AZ_BATCH_ACCOUNT_URL"].rstrip("/") == server.url
    assert env["AZ_BATCH_POOL_ID"] == pool_id
    assert env["AZ_BATCH_NODE_ID"] == task.node_info.node_id
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "true"
    assert env["AZ_BATCH_JOB_ID"] == job_id
    assert env["AZ_BATCH_TASK_ID"] == "envtask"
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == os.path.join(root, "shared")
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == os.path.join(root, "startup")
    assert env["AZ_BATCH_TASK_DIR"] == os.path.join(root, "workitems", job_id, "job-1", "envtask")
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == os.path.join(env["AZ_BATCH_TASK_DIR"], "wd")
    assert env["AZ_BATCH_JOB_PREP_WORKING_DIR"].startswith(os.path.join(root, "workitems", job_id))
    assert "AZ_BATCH_CERTIFICATES_DIR" not in env
    for directory in ("AZ_BATCH_NODE_SHARED_DIR", "AZ_BATCH_TASK_WORKING_DIR"):
        assert os.path.isdir(env[directory])


def test_the_task_runs_in_its_working_directory(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'pwd; echo $AZ_BATCH_TASK_WORKING_DIR'")
    cwd, working_dir = read_task_file(client, job_id, task.id).splitlines()
    assert os.path.realpath(cwd) == os.path.realpath(working_dir)


def test_the_emulator_environment_does_not_leak_into_tasks(client, pool_id, monkeypatch):
    monkeypatch.setenv("LOCALBATCH_TEST_SECRET", "must-not-leak")
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/usr/bin/env")
    assert "must-not-leak" not in read_task_file(client, job_id, task.id)


@pytest.mark.parametrize("command_line, expected", [
    ("echo $HOME", "$HOME\n"),
    ("echo a && echo b", "a && echo b\n"),
    ("echo *", "*\n"),
    ("echo 'a  b'   \"c d\"", "a  b c d\n"),
    ("echo ~ $(id) `id` > out.txt", "~ $(id) `id` > out.txt\n"),
], ids=["variable", "and", "glob", "quotes", "substitution-and-redirect"])
def test_the_command_line_is_not_run_by_a_shell(client, pool_id, command_line, expected):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, command_line)
    assert task.execution_info.exit_code == 0
    assert read_task_file(client, job_id, task.id) == expected


def test_a_shell_is_there_when_the_command_asks_for_one(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'echo $AZ_BATCH_TASK_ID && echo two'", task_id="shelled")
    assert read_task_file(client, job_id, "shelled") == "shelled\ntwo\n"
    assert task.execution_info.exit_code == 0


@pytest.mark.skipif(shutil.which("locale") is None, reason="the locale program is not installed")
def test_tasks_run_in_the_posix_locale_unless_the_job_or_task_sets_one(client, pool_id):
    job_id = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
        common_environment_settings=[models.EnvironmentSetting(name="LC_ALL", value="C.UTF-8"),
                                     models.EnvironmentSetting(name="FROM_JOB", value="job")]))
    plain_job = create_job(client, pool_id)
    run_task(client, plain_job, "locale", task_id="plain")
    run_task(client, job_id, "locale", task_id="from-job")
    run_task(client, job_id, "/usr/bin/env", task_id="overridden",
             environment_settings=[models.EnvironmentSetting(name="FROM_JOB", value="task"),
                                   models.EnvironmentSetting(name="LC_ALL", value="POSIX")])
    plain = read_task_file(client, plain_job, "plain")
    assert 'LC_CTYPE="POSIX"' in plain
    assert "LANG=\n" in plain and "LC_ALL=\n" in plain
    from_job = read_task_file(client, job_id, "from-job")
    assert "LC_ALL=C.UTF-8" in from_job
    assert 'LC_CTYPE="C.UTF-8"' in from_job
    overridden = _environment(read_task_file(client, job_id, "overridden"))
    assert overridden["FROM_JOB"] == "task" and overridden["LC_ALL"] == "POSIX"


def test_the_plain_environment_has_no_locale_variables(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/usr/bin/env")
    env = _environment(read_task_file(client, job_id, task.id))
    assert not [name for name in env if name == "LANG" or name.startswith("LC_")]


def test_output_bytes_are_kept_as_written(client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "printf 'caf\\303\\251 \\342\\234\\223\\n'")
    assert b"".join(client.download_task_file(job_id, task.id, "stdout.txt")) == "café ✓\n".encode()


def test_the_job_max_wall_clock_time_ends_the_job_not_each_task(client, pool_id):
    job_id = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
        constraints=models.BatchJobConstraints(max_wall_clock_time=dt.timedelta(seconds=1))))
    client.create_task(job_id, models.BatchTaskCreateOptions(id="long", command_line="sleep 60"))
    task = client.get_task(job_id, "long")
    assert task.constraints.max_wall_clock_time > dt.timedelta(days=10000)  # tasks are not limited by it
    job = wait_for(lambda: (j := client.get_job(job_id)).state == "completed" and j, "the job's time to run out")
    assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    task = client.get_task(job_id, "long")
    assert task.state == "completed" and task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code != "MaxWallClockTimeExpiry"  # the task's own limit did not fire


@pytest.mark.parametrize("prepare, command_line, code", [
    (None, "echo 'unterminated", "CommandLineInvalid"),
    (None, "   ", "CommandLineInvalid"),
    (lambda d: _write(d / "script.sh", "#!/bin/sh\necho hi\n", 0o644), "{d}/script.sh", "CommandProgramNotExecutable"),
    (lambda d: _write(d / "noshebang", "echo hi\n", 0o755), "{d}/noshebang", "CommandProgramNotExecutable"),
    (lambda d: (d / "adir").mkdir(), "{d}/adir", "CommandProgramNotFound"),
], ids=["unbalanced-quote", "blank", "not-executable", "no-shebang", "directory"])
def test_command_lines_that_cannot_start_are_user_errors(client, pool_id, tmp_path, prepare, command_line, code):
    if prepare:
        prepare(tmp_path)
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, command_line.format(d=tmp_path))
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert task.execution_info.failure_info.code == code


def _write(path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)
