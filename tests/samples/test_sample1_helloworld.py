"""sample1_helloworld.py end to end: what it prints, what it leaves behind, and how it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

import sample1_helloworld
from common import REPOSITORY_ROOT
from common.clients import create_batch_client
from common.local import AZURITE_ACCOUNT_KEY, LOCALBATCH_ACCOUNT_KEY
from tests.samples.support import (
    NOTHING,
    SAMPLE1,
    SAMPLE_RUN_TIMEOUT_SECONDS,
    Backend,
    FailRequests,
    Inventory,
    assert_left_behind,
    connection_lost,
    created_ids,
    run_sample,
    take_inventory,
)


def test_prints_the_task_output_and_leaves_nothing_behind(backend: Backend, tmp_path: Path) -> None:
    before = take_inventory(backend)

    run = run_sample(SAMPLE1, backend, tmp_path)

    assert run.returncode == 0, run.describe()
    assert "Hello world from task hello-world on node " in run.stdout
    stdout_section = run.stdout.split("---- stdout.txt of task hello-world ----")[1]
    stderr_section = stdout_section.split("---- stderr.txt of task hello-world ----")[1]
    assert "This line went to stderr" in stderr_section
    assert "This line went to stderr" not in stdout_section.split("---- stderr.txt")[0]
    assert "task hello-world: success, exit code 0" in run.stdout
    [job_id] = created_ids(run.stdout, "job")
    assert f"Deleted job {job_id}" in run.stdout
    assert run.stderr == ""
    assert_left_behind(backend, before, NOTHING)


def test_keep_resources_keeps_the_job_and_its_auto_pool(local_backend: Backend, tmp_path: Path) -> None:
    before = take_inventory(local_backend)

    run = run_sample(SAMPLE1, local_backend, tmp_path, "--keep-resources")

    assert run.returncode == 0, run.describe()
    [job_id] = created_ids(run.stdout, "job")
    left = take_inventory(local_backend).minus(before)
    assert left.job_ids == {job_id}
    [auto_pool_id] = left.pool_ids
    assert local_backend.batch_client.get_job(job_id).execution_info.pool_id == auto_pool_id
    # The auto-pool, a billed VM on Azure, is named with its nodes; then how to look and how to delete.
    assert (f"Kept job {job_id} and its auto-pool {auto_pool_id} (1 of 1 node(s) of standard_d2s_v3, active): "
            "the nodes stay, and on Azure are billed, until the job is deleted\n") in run.stdout
    assert "To look at them: 'make stack' in " in run.stdout
    [delete_line] = [line for line in run.stdout.splitlines() if line.startswith("To delete them: ")]
    assert delete_line.endswith(f" -m common.delete_resources --job {job_id}")
    command = delete_line.removeprefix("To delete them: ").split(" && ", 1)[1].split()
    deleted = subprocess.run([sys.executable, *command[1:]], cwd=REPOSITORY_ROOT, env=local_backend.environment,
                             capture_output=True, text=True, timeout=SAMPLE_RUN_TIMEOUT_SECONDS)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"Deleted job {job_id}\n"
    assert_left_behind(local_backend, before, NOTHING)


def test_verbose_output_never_shows_the_account_keys(local_backend: Backend, tmp_path: Path) -> None:
    run = run_sample(SAMPLE1, local_backend, tmp_path, "-v")

    assert run.returncode == 0, run.describe()
    assert "Batch endpoint: http://127.0.0.1:" in run.stderr  # the settings were logged...
    for secret in (LOCALBATCH_ACCOUNT_KEY, AZURITE_ACCOUNT_KEY, LOCALBATCH_ACCOUNT_KEY[:20]):
        assert secret not in run.stdout + run.stderr  # ...without their keys


@pytest.mark.parametrize(
    ("step", "method", "path", "when", "error"),
    [
        ("select the image", "GET", r"^/supportedimages$", "request", connection_lost),
        ("create the job", "POST", r"^/jobs$", "request", connection_lost),
        ("create the job (answer lost)", "POST", r"^/jobs$", "response", connection_lost),
        ("add the task", "POST", r"^/jobs/[^/]+/addtaskcollection$", "request", connection_lost),
        ("wait for the task", "GET", r"^/jobs/[^/]+/tasks$", "request", connection_lost),
        ("Ctrl-C while waiting", "GET", r"^/jobs/[^/]+/tasks$", "request", KeyboardInterrupt),
        ("read the output", "GET", r"/files/stdout\.txt$", "request", connection_lost),
    ],
)
def test_a_failure_at_any_step_still_cleans_up(
    local_backend: Backend, step: str, method: str, path: str, when: str, error: Callable[[], BaseException]
) -> None:
    settings = local_backend.settings(SAMPLE1)
    failure = FailRequests(method, path, error, when)
    before = take_inventory(local_backend)

    with create_batch_client(settings.batch, per_call_policies=[failure]) as batch_client:
        with pytest.raises(BaseException) as raised:
            sample1_helloworld.run_hello_world(batch_client, settings)

    assert failure.failed >= 1, f"the failure was never injected at step {step!r}"
    if error is KeyboardInterrupt:
        assert isinstance(raised.value, KeyboardInterrupt)
    else:
        assert "injected failure" in str(raised.value)
    assert_left_behind(local_backend, before, NOTHING)


def test_a_task_the_service_refuses_still_cleans_up(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = local_backend.settings(SAMPLE1)
    monkeypatch.setattr(sample1_helloworld, "HELLO_WORLD_TASK_ID", "not a valid id!")
    before = take_inventory(local_backend)

    with pytest.raises(Exception) as raised:
        sample1_helloworld.run_hello_world(local_backend.batch_client, settings)

    assert "InvalidPropertyValue" in str(raised.value) or "not a valid id!" in str(raised.value)
    assert "Deleted job " in capsys.readouterr().out
    assert_left_behind(local_backend, before, NOTHING)


def test_a_failing_task_fails_the_sample_after_printing_its_output(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = local_backend.settings(SAMPLE1)
    monkeypatch.setattr(sample1_helloworld, "wrap_commands_in_shell",
                        lambda commands: "/bin/bash -c 'echo partial output; exit 3'")
    before = take_inventory(local_backend)

    with pytest.raises(RuntimeError, match=r"^task hello-world: failure, exit code 3 "):
        sample1_helloworld.run_hello_world(local_backend.batch_client, settings)

    printed = capsys.readouterr().out
    assert "---- stdout.txt of task hello-world ----\npartial output\n" in printed
    assert "Deleted job " in printed
    assert_left_behind(local_backend, before, NOTHING)


def test_inventory_sees_what_a_sample_leaves(local_backend: Backend) -> None:
    """The leftover check itself must notice a job that was not cleaned up."""
    from azure.batch import models

    before = take_inventory(local_backend)
    local_backend.batch_client.create_job(
        models.BatchJobCreateOptions(id="inventory-check", pool_info=models.BatchPoolInfo(pool_id="no-such-pool"))
    )
    try:
        assert take_inventory(local_backend).minus(before) == Inventory(frozenset({"inventory-check"}), frozenset(), frozenset())
        with pytest.raises(AssertionError, match="inventory-check"):
            local_backend.inventory_timeout_seconds = 0.5
            assert_left_behind(local_backend, before, NOTHING)
    finally:
        local_backend.batch_client.begin_delete_job("inventory-check", polling_interval=0.2).result()
