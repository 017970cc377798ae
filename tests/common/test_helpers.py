"""common.helpers, through the real SDK against localbatch."""

from __future__ import annotations

import re
import shlex
import subprocess
from datetime import timedelta
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.batch import BatchClient, models
from azure.core.exceptions import ResourceNotFoundError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy

from common.clients import create_batch_client
from common.config import SampleSettings
from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    create_pool_if_not_exists,
    describe_batch_error,
    describe_task_result,
    enum_value,
    failed_tasks,
    pool_exists,
    print_task_output,
    raise_if_any_task_failed,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
    wrap_commands_in_shell,
)

WAIT = timedelta(minutes=2)
POLL_SECONDS = 0.1


class RecordRequests(SansIOHTTPPolicy):
    """Remembers (method, path, query) of every request the client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []

    def on_request(self, request: PipelineRequest) -> None:
        url = urlsplit(request.http_request.url)
        self.requests.append((request.http_request.method, url.path, parse_qs(url.query)))


def image(batch_client: BatchClient) -> models.VirtualMachineConfiguration:
    return select_verified_linux_image(batch_client, offer="0001-com-ubuntu-server-jammy", sku_prefix="22_04-lts")


@pytest.fixture(scope="module")
def pool_id(local_batch_client: BatchClient) -> Iterator[str]:
    pool_id = unique_resource_name("helpers")
    create_pool_if_not_exists(local_batch_client, models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=2, task_slots_per_node=4,
        virtual_machine_configuration=image(local_batch_client),
    ))
    try:
        wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, WAIT, poll_interval_seconds=POLL_SECONDS)
        yield pool_id
    finally:
        local_batch_client.begin_delete_pool(pool_id, polling_interval=POLL_SECONDS).result()


@pytest.fixture
def job_id(local_batch_client: BatchClient, pool_id: str) -> Iterator[str]:
    job_id = unique_resource_name("helpers")
    create_job_if_not_exists(local_batch_client, models.BatchJobCreateOptions(
        id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    try:
        yield job_id
    finally:
        local_batch_client.begin_delete_job(job_id, polling_interval=POLL_SECONDS).result()


# ---- pure helpers --------------------------------------------------------------------------------

def test_unique_resource_names_differ_and_are_valid_ids_and_container_names() -> None:
    names = {unique_resource_name("sample-x") for _ in range(50)}

    assert len(names) == 50
    for name in names:
        assert re.fullmatch(r"sample-x-\d{8}t\d{6}-[0-9a-f]{6}", name)
        assert len(name) <= 63


@pytest.mark.parametrize("prefix", ["", "Upper", "under_score", "-leading", "double--hyphen", "x" * 41])
def test_unique_resource_name_refuses_prefixes_that_cannot_name_a_container(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        unique_resource_name(prefix)


def test_wrap_commands_in_shell_quotes_the_script_as_one_argument() -> None:
    command_line = wrap_commands_in_shell(["echo 'it''s'", 'echo "$HOME" > out.txt', "sleep 1 &", "wait"])

    arguments = shlex.split(command_line)
    assert arguments[:2] == ["/bin/bash", "-c"]
    assert arguments[2] == "set -e; echo 'it''s'; echo \"$HOME\" > out.txt; sleep 1 & wait"
    assert len(arguments) == 3


def test_a_wrapped_script_runs_in_bash_and_stops_at_the_first_failure() -> None:
    command_line = wrap_commands_in_shell(["echo first", "exit 7", "echo never"])

    completed = subprocess.run(shlex.split(command_line), capture_output=True, text=True)

    assert (completed.returncode, completed.stdout) == (7, "first\n")


def test_wrap_commands_in_shell_needs_a_command() -> None:
    with pytest.raises(ValueError):
        wrap_commands_in_shell([])


# ---- images, pools, nodes --------------------------------------------------------------------------

def test_select_verified_linux_image_returns_an_image_with_its_node_agent(local_batch_client: BatchClient) -> None:
    configuration = select_verified_linux_image(local_batch_client, offer="ubuntu-24_04-lts")

    assert configuration.image_reference.publisher == "canonical"
    assert configuration.image_reference.version == "latest"
    assert configuration.node_agent_sku_id == "batch.node.ubuntu 24.04"


def test_select_verified_linux_image_filters_on_a_capability(local_batch_client: BatchClient) -> None:
    configuration = select_verified_linux_image(
        local_batch_client, publisher="microsoft-dsvm", required_capability="DockerCompatible")

    assert (configuration.image_reference.offer, configuration.image_reference.sku) == ("ubuntu-hpc", "2204")


@pytest.mark.parametrize("criteria", [
    {"publisher": "microsoftwindowsserver"},  # listed, but not Linux
    {"offer": "no-such-offer"},
    {"sku_prefix": "18.04"},
    {"required_capability": "NoSuchCapability"},
])
def test_select_verified_linux_image_says_what_it_could_not_find(local_batch_client: BatchClient, criteria: dict) -> None:
    with pytest.raises(LookupError, match="no verified Linux image"):
        select_verified_linux_image(local_batch_client, **criteria)


def test_pool_exists_is_false_for_a_missing_pool(local_batch_client: BatchClient, pool_id: str) -> None:
    assert pool_exists(local_batch_client, pool_id) is True
    assert pool_exists(local_batch_client, "no-such-pool") is False


def test_create_pool_if_not_exists_reuses_an_existing_pool(local_batch_client: BatchClient, pool_id: str) -> None:
    again = models.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d4s_v3", target_dedicated_nodes=5,
                                          virtual_machine_configuration=image(local_batch_client))

    assert create_pool_if_not_exists(local_batch_client, again) is False
    assert local_batch_client.get_pool(pool_id).target_dedicated_nodes == 2


def test_wait_for_all_nodes_returns_the_idle_nodes(local_batch_client: BatchClient, pool_id: str) -> None:
    nodes = wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, WAIT, poll_interval_seconds=POLL_SECONDS)

    assert len(nodes) == 2
    assert {enum_value(node.state) for node in nodes} == {"idle"}


def test_wait_for_all_nodes_raises_as_soon_as_a_start_task_fails(local_batch_client: BatchClient) -> None:
    pool_id = unique_resource_name("failing-start")
    create_pool_if_not_exists(local_batch_client, models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=image(local_batch_client),
        start_task=models.BatchStartTask(command_line="/bin/bash -c 'exit 3'", wait_for_success=True),
    ))
    try:
        with pytest.raises(RuntimeError, match=r"is starttaskfailed; its start task exited with code 3"):
            wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, WAIT, poll_interval_seconds=POLL_SECONDS)
    finally:
        local_batch_client.begin_delete_pool(pool_id, polling_interval=POLL_SECONDS).result()


def test_wait_for_all_nodes_times_out_with_what_it_saw(local_batch_client: BatchClient) -> None:
    pool_id = unique_resource_name("slow-start")
    create_pool_if_not_exists(local_batch_client, models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=image(local_batch_client),
        start_task=models.BatchStartTask(command_line="/bin/sleep 60", wait_for_success=True),
    ))
    progress: list[str] = []
    try:
        with pytest.raises(TimeoutError, match=rf"waiting for the 1 node\(s\) of pool {pool_id} to be idle"):
            wait_for_all_nodes_to_reach_state(local_batch_client, pool_id, timedelta(seconds=0.5),
                                              poll_interval_seconds=POLL_SECONDS, report_progress=progress.append)
        # One line per change of state, not one per poll.
        assert progress and all(line.startswith(f"pool {pool_id}: allocation ") for line in progress)
        assert all(earlier != later for earlier, later in zip(progress, progress[1:]))
        assert progress[-1] == f"pool {pool_id}: allocation steady, nodes: 1 waitingforstarttask"
    finally:
        local_batch_client.begin_delete_pool(pool_id, polling_interval=POLL_SECONDS).result()


# ---- jobs and tasks --------------------------------------------------------------------------------

def test_wait_for_tasks_polls_with_one_filtered_list_call(
    local_settings: SampleSettings, job_id: str
) -> None:
    recorder = RecordRequests()
    with create_batch_client(local_settings.batch, per_call_policies=[recorder]) as batch_client:
        task_ids = add_tasks(batch_client, job_id, [
            models.BatchTaskCreateOptions(id=f"task-{number}", command_line=f"/bin/sleep 0.{number}")
            for number in range(1, 8)
        ])
        recorder.requests.clear()

        tasks = wait_for_tasks_to_complete(batch_client, job_id, WAIT, POLL_SECONDS)

    assert sorted(task.id for task in tasks) == sorted(task_ids)
    assert all(enum_value(task.state) == "completed" and task.execution_info.exit_code == 0 for task in tasks)
    assert len(recorder.requests) >= 2
    for method, path, _query in recorder.requests:  # never one call per task
        assert (method, path) == ("GET", f"/jobs/{job_id}/tasks")
    *polls, final = recorder.requests
    for _method, _path, query in polls:
        assert query["$filter"] == ["state ne 'completed'"]
        assert query["$select"] == ["id,state"]
    assert "$filter" not in final[2]


def test_wait_for_tasks_times_out_naming_the_tasks_still_running(local_batch_client: BatchClient, job_id: str) -> None:
    add_tasks(local_batch_client, job_id, [
        models.BatchTaskCreateOptions(id="quick", command_line="/bin/true"),
        models.BatchTaskCreateOptions(id="slow", command_line="/bin/sleep 60"),
    ])

    progress: list[str] = []
    with pytest.raises(TimeoutError, match=rf"tasks of job {job_id} to complete; 1 still not completed: slow \("):
        wait_for_tasks_to_complete(local_batch_client, job_id, timedelta(seconds=1), POLL_SECONDS,
                                   report_progress=progress.append)
    local_batch_client.terminate_task(job_id, "slow")
    # One line per change of state, not one per poll (about ten polls ran).
    assert progress and progress[-1] == f"job {job_id}: 1 task(s) not completed yet (1 running)"
    assert all(earlier != later for earlier, later in zip(progress, progress[1:])) and len(progress) <= 3


def test_failed_tasks_and_their_description(local_batch_client: BatchClient, job_id: str) -> None:
    add_tasks(local_batch_client, job_id, [
        models.BatchTaskCreateOptions(id="fine", command_line="/bin/true"),
        models.BatchTaskCreateOptions(id="broken", command_line="/bin/bash -c 'exit 4'"),
    ])

    tasks = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, POLL_SECONDS)

    [failed] = failed_tasks(tasks)
    assert failed.id == "broken"
    assert describe_task_result(failed).startswith("task broken: failure, exit code 4 (FailureExitCode:")
    with pytest.raises(RuntimeError, match=r"^task broken: failure, exit code 4 "):
        raise_if_any_task_failed(tasks)
    raise_if_any_task_failed([task for task in tasks if task.id == "fine"])


def test_add_tasks_treats_a_task_that_exists_as_added(local_batch_client: BatchClient, job_id: str) -> None:
    task = models.BatchTaskCreateOptions(id="once", command_line="/bin/true")

    assert add_tasks(local_batch_client, job_id, [task]) == ["once"]
    assert add_tasks(local_batch_client, job_id, [task]) == ["once"]
    assert add_tasks(local_batch_client, job_id, []) == []


def test_print_task_output_prints_both_files_and_reports_a_missing_one(
    local_batch_client: BatchClient, job_id: str, capsys: pytest.CaptureFixture
) -> None:
    add_tasks(local_batch_client, job_id, [models.BatchTaskCreateOptions(
        id="talker", command_line=wrap_commands_in_shell(["echo out", "echo err >&2"]))])
    wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, POLL_SECONDS)

    texts = print_task_output(local_batch_client, job_id, "talker", ["stdout.txt", "stderr.txt", "wd/none.txt"])

    assert texts == {"stdout.txt": "out\n", "stderr.txt": "err\n"}
    assert capsys.readouterr().out == (
        "---- stdout.txt of task talker ----\nout\n"
        "---- stderr.txt of task talker ----\nerr\n"
        "---- wd/none.txt of task talker: not found ----\n"
    )


def test_create_job_if_not_exists_reuses_a_job(local_batch_client: BatchClient, job_id: str, pool_id: str) -> None:
    job = models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))

    assert create_job_if_not_exists(local_batch_client, job) is False


# ---- errors ----------------------------------------------------------------------------------------

def test_describe_batch_error_gives_code_status_message_and_request_id(local_batch_client: BatchClient) -> None:
    with pytest.raises(ResourceNotFoundError) as raised:
        local_batch_client.get_job("no-such-job")

    description = describe_batch_error(raised.value)

    assert re.fullmatch(
        r"JobNotFound \(HTTP 404\): The specified job does not exist\. \(request id [0-9a-f-]+\)", description)


def test_describe_batch_error_lists_the_details(local_batch_client: BatchClient) -> None:
    windows = models.BatchPoolCreateOptions(
        id=unique_resource_name("windows"), vm_size="standard_d2s_v3",
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="microsoftwindowsserver", offer="nope", sku="nope"),
            node_agent_sku_id="batch.node.windows amd64"))
    with pytest.raises(Exception) as raised:
        local_batch_client.create_pool(windows)

    description = describe_batch_error(raised.value)

    assert description.startswith("InvalidPropertyValue (HTTP 400): ")
    assert "[PropertyName=virtualMachineConfiguration.imageReference" in description
    assert "\n" not in description


def test_describe_batch_error_explains_refused_tasks(local_batch_client: BatchClient, job_id: str) -> None:
    with pytest.raises(models.CreateTasksError) as raised:
        add_tasks(local_batch_client, job_id, [models.BatchTaskCreateOptions(id="no spaces", command_line="/bin/true")])

    assert describe_batch_error(raised.value).startswith(
        "could not add tasks: task no spaces: InvalidPropertyValue: ")


def test_describe_batch_error_redacts_signatures() -> None:
    error = ValueError("cannot read https://a.blob.core.windows.net/c/b?sv=1&sig=c2VjcmV0&se=2")

    assert describe_batch_error(error) == "ValueError: cannot read https://a.blob.core.windows.net/c/b?sv=1&sig=REDACTED&se=2"
