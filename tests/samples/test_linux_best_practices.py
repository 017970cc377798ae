"""The Linux best practices of Azure Batch, shown as tasks on the local backend.

Each test runs real tasks on a localbatch pool and checks what Batch reports, which is what
README.md ("Azure Batch on Linux: best practices") explains:

- a bare command line is not run by a shell;
- ``set -e`` stops a script at the first failing command;
- background processes need ``wait``, or the task ends without them;
- tasks run under the POSIX locale unless LC_ALL is set on the job or the task;
- stdout.txt and stderr.txt are UTF-8.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterator, Optional

import pytest
from azure.batch import BatchClient, models

from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    create_pool_if_not_exists,
    enum_value,
    read_task_file_as_text,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
    wrap_commands_in_shell,
)
from tests.waiting import wait_for

WAIT = timedelta(minutes=2)
POLL_SECONDS = 0.1


@pytest.fixture(scope="module")
def pool_id(local_batch_client: BatchClient) -> Iterator[str]:
    """One node with room for several tasks at once."""
    pool_id = unique_resource_name("best-practices")
    create_pool_if_not_exists(local_batch_client, models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        target_dedicated_nodes=1,
        task_slots_per_node=4,
        virtual_machine_configuration=select_verified_linux_image(local_batch_client, sku_prefix="22_04"),
    ))
    try:
        wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, WAIT, poll_interval_seconds=POLL_SECONDS)
        yield pool_id
    finally:
        local_batch_client.begin_delete_pool(pool_id, polling_interval=POLL_SECONDS).result()


def create_job(batch_client: BatchClient, pool_id: str, environment: Optional[dict[str, str]] = None) -> str:
    job_id = unique_resource_name("best-practices")
    create_job_if_not_exists(batch_client, models.BatchJobCreateOptions(
        id=job_id,
        pool_info=models.BatchPoolInfo(pool_id=pool_id),
        common_environment_settings=[models.EnvironmentSetting(name=name, value=value)
                                     for name, value in (environment or {}).items()] or None,
    ))
    return job_id


@pytest.fixture(scope="module")
def job_id(local_batch_client: BatchClient, pool_id: str) -> Iterator[str]:
    job_id = create_job(local_batch_client, pool_id)
    try:
        yield job_id
    finally:
        local_batch_client.begin_delete_job(job_id, polling_interval=POLL_SECONDS).result()


def add_task(batch_client: BatchClient, job_id: str, command_line: str,
             environment: Optional[dict[str, str]] = None) -> str:
    task_id = unique_resource_name("task")
    add_tasks(batch_client, job_id, [models.BatchTaskCreateOptions(
        id=task_id,
        command_line=command_line,
        environment_settings=[models.EnvironmentSetting(name=name, value=value)
                              for name, value in (environment or {}).items()] or None,
    )])
    return task_id


def run_task(batch_client: BatchClient, job_id: str, command_line: str,
             environment: Optional[dict[str, str]] = None) -> tuple[models.BatchTask, str]:
    """Run one task to completion; return it and its stdout."""
    task_id = add_task(batch_client, job_id, command_line, environment)
    wait_for_task_state(batch_client, job_id, task_id, models.BatchTaskState.COMPLETED)
    task = batch_client.get_task(job_id, task_id)
    return task, read_task_file_as_text(batch_client, job_id, task_id, "stdout.txt")


def wait_for_task_state(batch_client: BatchClient, job_id: str, task_id: str, state: models.BatchTaskState) -> None:
    wait_for(lambda: enum_value(batch_client.get_task(job_id, task_id, select=["id", "state"]).state),
             f"task {task_id} to reach state {state.value}", WAIT.total_seconds(), poll=POLL_SECONDS,
             until=lambda current: current == state.value)


def wait_for_output(batch_client: BatchClient, job_id: str, task_id: str, text: str) -> str:
    """Wait until the task's stdout.txt holds ``text``; return it.

    Until the task starts on a node there is no stdout.txt: Batch answers 404 (FileNotFound), which
    wait_for takes as "not yet".
    """
    return wait_for(lambda: read_task_file_as_text(batch_client, job_id, task_id, "stdout.txt"),
                    f"task {task_id} to print {text!r} to stdout.txt", WAIT.total_seconds(), poll=POLL_SECONDS,
                    until=lambda output: text in output)


def exit_code(task: models.BatchTask) -> int:
    assert task.execution_info is not None
    return task.execution_info.exit_code


# ---- 1. wrap your commands in a shell ------------------------------------------------------------

def test_a_bare_command_line_is_not_run_by_a_shell(local_batch_client: BatchClient, job_id: str) -> None:
    task, output = run_task(local_batch_client, job_id, "echo $AZ_BATCH_TASK_ID && echo second")

    assert exit_code(task) == 0
    assert output == "$AZ_BATCH_TASK_ID && echo second\n"  # echo got the text as it was: no shell


def test_a_command_wrapped_in_a_shell_gets_variables_and_operators(local_batch_client: BatchClient, job_id: str) -> None:
    command_line = wrap_commands_in_shell(["echo $AZ_BATCH_TASK_ID && echo second"])
    task, output = run_task(local_batch_client, job_id, command_line)

    assert exit_code(task) == 0
    assert output == f"{task.id}\nsecond\n"


# ---- 2. check the exit code of every command -----------------------------------------------------

def test_without_set_e_a_script_runs_on_after_a_failure_and_reports_success(
    local_batch_client: BatchClient, job_id: str
) -> None:
    task, output = run_task(local_batch_client, job_id, "/bin/bash -c 'echo one; false; echo two'")

    assert output == "one\ntwo\n"
    assert exit_code(task) == 0  # the failure of `false` is lost
    assert task.execution_info.result == models.BatchTaskExecutionResult.SUCCESS


def test_set_e_stops_at_the_first_failing_command(local_batch_client: BatchClient, job_id: str) -> None:
    command_line = wrap_commands_in_shell(["echo one", "false", "echo two"])
    assert "set -e" in command_line

    task, output = run_task(local_batch_client, job_id, command_line)

    assert output == "one\n"
    assert exit_code(task) == 1
    assert task.execution_info.result == models.BatchTaskExecutionResult.FAILURE


# ---- 3. wait for background processes ------------------------------------------------------------

def background_command(release_file: Path) -> str:
    """A background job that can only finish once the test creates ``release_file``.

    Its polling loop is the task's own background work, which is what these tests are about; every
    test that starts one creates ``release_file`` in a ``finally``.
    """
    return f"(while [ ! -e {release_file} ]; do sleep 0.05; done; echo background-finished) &"


def test_without_wait_the_task_ends_before_its_background_work(
    local_batch_client: BatchClient, job_id: str, tmp_path: Path
) -> None:
    release_file = tmp_path / "release"
    try:
        command_line = wrap_commands_in_shell([background_command(release_file), "echo foreground-finished"])
        task, output = run_task(local_batch_client, job_id, command_line)

        # Batch reports the task complete and successful while its background work has not even finished.
        assert exit_code(task) == 0
        assert output == "foreground-finished\n"
    finally:
        release_file.touch()


def test_wait_keeps_the_task_running_until_its_background_work_is_done(
    local_batch_client: BatchClient, job_id: str, tmp_path: Path
) -> None:
    release_file = tmp_path / "release"
    try:
        command_line = wrap_commands_in_shell([background_command(release_file), "echo foreground-finished", "wait"])
        task_id = add_task(local_batch_client, job_id, command_line)
        wait_for_output(local_batch_client, job_id, task_id, "foreground-finished")

        # The foreground part is done, but `wait` holds the task open for the background part.
        assert enum_value(local_batch_client.get_task(job_id, task_id).state) == "running"
    finally:
        release_file.touch()
    wait_for_task_state(local_batch_client, job_id, task_id, models.BatchTaskState.COMPLETED)

    assert exit_code(local_batch_client.get_task(job_id, task_id)) == 0
    output = read_task_file_as_text(local_batch_client, job_id, task_id)
    assert output == "foreground-finished\nbackground-finished\n"


# ---- 4. set the locale you need ------------------------------------------------------------------

LOCALE_REPORT = ["locale charmap", "word=café", 'echo "${#word} characters in $word"']


def test_tasks_run_under_the_posix_locale_by_default(local_batch_client: BatchClient, job_id: str) -> None:
    task, output = run_task(local_batch_client, job_id, wrap_commands_in_shell(LOCALE_REPORT))

    assert exit_code(task) == 0
    charmap, length = output.splitlines()
    assert charmap == "ANSI_X3.4-1968"  # plain ASCII
    assert length == "5 characters in café"  # counted in bytes: é is two


def test_lc_all_on_the_task_sets_its_locale(local_batch_client: BatchClient, job_id: str) -> None:
    task, output = run_task(local_batch_client, job_id, wrap_commands_in_shell(LOCALE_REPORT), {"LC_ALL": "C.UTF-8"})

    assert exit_code(task) == 0
    assert output.splitlines() == ["UTF-8", "4 characters in café"]


def test_lc_all_on_the_job_sets_the_locale_of_all_its_tasks(local_batch_client: BatchClient, pool_id: str) -> None:
    job_id = create_job(local_batch_client, pool_id, environment={"LC_ALL": "C.UTF-8"})
    try:
        task_ids = [add_task(local_batch_client, job_id, wrap_commands_in_shell(LOCALE_REPORT)) for _ in range(2)]
        tasks = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, POLL_SECONDS)

        assert sorted(task.id for task in tasks) == sorted(task_ids)
        for task_id in task_ids:
            output = read_task_file_as_text(local_batch_client, job_id, task_id)
            assert output.splitlines() == ["UTF-8", "4 characters in café"]
    finally:
        local_batch_client.begin_delete_job(job_id, polling_interval=POLL_SECONDS).result()


# ---- 5. read stdout.txt and stderr.txt as UTF-8 --------------------------------------------------

@pytest.mark.parametrize("environment", [None, {"LC_ALL": "C.UTF-8"}], ids=["posix-locale", "utf8-locale"])
def test_stdout_and_stderr_are_utf8(
    local_batch_client: BatchClient, job_id: str, environment: Optional[dict[str, str]]
) -> None:
    command_line = wrap_commands_in_shell([r"printf 'caf\303\251 \342\234\223\n'", r"printf '\316\273\n' >&2"])
    task, output = run_task(local_batch_client, job_id, command_line, environment)

    raw = b"".join(local_batch_client.download_task_file(job_id, task.id, "stdout.txt"))
    assert raw == "café ✓\n".encode("utf-8")
    assert output == "café ✓\n"
    assert read_task_file_as_text(local_batch_client, job_id, task.id, "stderr.txt") == "λ\n"


def test_read_task_file_as_text_replaces_bytes_that_are_not_utf8(local_batch_client: BatchClient, job_id: str) -> None:
    task, output = run_task(local_batch_client, job_id, wrap_commands_in_shell([r"printf 'ok \377\n'"]))

    assert output == "ok \ufffd\n"

