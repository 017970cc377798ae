"""sample2_pools_and_resourcefiles.py end to end: output, leftovers, kept pools and failures."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

import sample2_pools_and_resourcefiles as sample2
from common.cli import StepFailed
from common.clients import create_batch_client, create_blob_service_client
from common.config import environment_variable_name
from tests.samples.support import (
    NOTHING,
    SAMPLE2,
    Backend,
    FailRequests,
    Inventory,
    assert_left_behind,
    connection_lost,
    created_ids,
    run_sample,
    take_inventory,
)


def test_runs_the_script_from_the_start_task_and_leaves_nothing_behind(backend: Backend, tmp_path: Path) -> None:
    before = take_inventory(backend)

    run = run_sample(SAMPLE2, backend, tmp_path)

    assert run.returncode == 0, run.describe()
    [pool_id] = created_ids(run.stdout, "pool")
    [job_id] = created_ids(run.stdout, "job")
    [container_name] = created_ids(run.stdout, "container")
    assert "task simple-task: success, exit code 0" in run.stdout
    assert f"simple_task.py: hello from task simple-task of job {job_id}" in run.stdout
    assert f"of pool {pool_id}, Python 3." in run.stdout
    shared_listing = run.stdout.split("node shared directory: ")[1].split("task working directory: ")[0]
    assert "  simple_task.py  " in shared_listing  # delivered to the node by the start task
    for name in (f"job {job_id}", f"pool {pool_id}", f"container {container_name}"):
        assert f"Deleted {name}" in run.stdout
    assert run.stderr == ""
    assert_left_behind(backend, before, NOTHING)


def test_keeps_the_pool_when_its_config_says_so(local_backend: Backend, tmp_path: Path) -> None:
    before = take_inventory(local_backend)

    run = run_sample(
        SAMPLE2, local_backend, tmp_path,
        extra_environment={environment_variable_name("Cleanup", "delete_pool"): "false"},
    )

    assert run.returncode == 0, run.describe()
    [pool_id] = created_ids(run.stdout, "pool")
    assert f"Kept pool {pool_id} (1 node(s) of standard_d2s_v3): they stay, and on Azure are billed, " \
           "until the pool is deleted\n" in run.stdout
    assert "To look at them: 'make stack' in " in run.stdout
    assert f" -m common.delete_resources --pool {pool_id}\n" in run.stdout
    assert_left_behind(local_backend, before, Inventory(frozenset(), frozenset({pool_id}), frozenset()))
    local_backend.batch_client.begin_delete_pool(pool_id, polling_interval=0.2).result()
    assert_left_behind(local_backend, before, NOTHING)


def test_reuses_a_named_pool_and_leaves_it_when_asked(local_backend: Backend, tmp_path: Path) -> None:
    before = take_inventory(local_backend)
    keep_named_pool = {
        environment_variable_name("Pool", "pool_id"): "sample2-test-named-pool",
        environment_variable_name("Cleanup", "delete_pool"): "no",
    }

    first = run_sample(SAMPLE2, local_backend, tmp_path, extra_environment=keep_named_pool)
    second = run_sample(SAMPLE2, local_backend, tmp_path, extra_environment=keep_named_pool)

    assert first.returncode == 0, first.describe()
    assert second.returncode == 0, second.describe()
    assert "Created pool sample2-test-named-pool " in first.stdout
    assert "Reusing pool sample2-test-named-pool " in second.stdout
    assert "simple_task.py: hello from task simple-task" in second.stdout
    assert_left_behind(local_backend, before, Inventory(frozenset(), frozenset({"sample2-test-named-pool"}), frozenset()))
    local_backend.batch_client.begin_delete_pool("sample2-test-named-pool", polling_interval=0.2).result()


BATCH, BLOB = "batch", "blob"


@pytest.mark.parametrize(
    ("step", "client", "method", "path", "when", "error"),
    [
        ("create the container", BLOB, "PUT", r"^/devstoreaccount1/sample2-resources-[^/]+$", "request", connection_lost),
        ("upload the script (answer lost)", BLOB, "PUT", r"/simple_task\.py$", "response", connection_lost),
        ("create the pool", BATCH, "POST", r"^/pools$", "request", connection_lost),
        ("create the pool (answer lost)", BATCH, "POST", r"^/pools$", "response", connection_lost),
        ("wait for the nodes", BATCH, "GET", r"^/pools/[^/]+/nodes$", "request", connection_lost),
        ("Ctrl-C while waiting for the nodes", BATCH, "GET", r"^/pools/[^/]+/nodes$", "request", KeyboardInterrupt),
        ("create the job (answer lost)", BATCH, "POST", r"^/jobs$", "response", connection_lost),
        ("add the task", BATCH, "POST", r"^/jobs/[^/]+/addtaskcollection$", "request", connection_lost),
        ("wait for the task", BATCH, "GET", r"^/jobs/[^/]+/tasks$", "request", connection_lost),
        ("Ctrl-C while waiting for the task", BATCH, "GET", r"^/jobs/[^/]+/tasks$", "request", KeyboardInterrupt),
        ("read the output", BATCH, "GET", r"/files/stdout\.txt$", "request", connection_lost),
    ],
)
def test_a_failure_at_any_step_still_cleans_up(
    local_backend: Backend, step: str, client: str, method: str, path: str, when: str, error: Callable[[], BaseException]
) -> None:
    settings = local_backend.settings(SAMPLE2)
    failure = FailRequests(method, path, error, when)
    batch_options = {"per_call_policies": [failure]} if client == BATCH else {}
    blob_options = failure.as_storage_client_options() if client == BLOB else {}
    before = take_inventory(local_backend)

    with create_batch_client(settings.batch, **batch_options) as batch_client, \
            create_blob_service_client(settings.storage, **blob_options) as blob_service_client:
        with pytest.raises(BaseException) as raised:
            sample2.run_pools_and_resource_files(batch_client, blob_service_client, settings)

    assert failure.failed >= 1, f"the failure was never injected at step {step!r}"
    if error is KeyboardInterrupt:
        assert isinstance(raised.value, KeyboardInterrupt)
    else:
        assert "injected failure" in str(raised.value)
    assert_left_behind(local_backend, before, NOTHING)


def test_a_task_the_service_refuses_still_cleans_up(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = local_backend.settings(SAMPLE2)
    monkeypatch.setattr(sample2, "SIMPLE_TASK_ID", "not a valid id!")
    before = take_inventory(local_backend)

    with pytest.raises(Exception, match="InvalidPropertyValue|not a valid id"):
        sample2.run_pools_and_resource_files(local_backend.batch_client, local_backend.blob_service_client, settings)

    printed = capsys.readouterr().out
    assert "Deleted job " in printed and "Deleted pool " in printed and "Deleted container " in printed
    assert_left_behind(local_backend, before, NOTHING)


def test_a_start_task_that_cannot_download_fails_the_sample_with_the_reason_and_cleans_up(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resource file behind a SAS that Storage refuses leaves the node starttaskfailed: the sample must say so."""
    settings = local_backend.settings(SAMPLE2)
    create_pool_with_start_task = sample2.create_pool_with_start_task

    def create_pool_with_a_forged_signature(batch_client, pool_id, vm_size, node_count, image, script_url, script_name):  # type: ignore[no-untyped-def]
        forged_url = script_url.replace("sig=", "sig=forged")
        return create_pool_with_start_task(batch_client, pool_id, vm_size, node_count, image, forged_url, script_name)

    monkeypatch.setattr(sample2, "create_pool_with_start_task", create_pool_with_a_forged_signature)
    before = take_inventory(local_backend)

    with pytest.raises(StepFailed, match=r"^wait for the nodes of pool sample2-pool-\S+: RuntimeError: .*starttaskfailed") as raised:
        sample2.run_pools_and_resource_files(local_backend.batch_client, local_backend.blob_service_client, settings)

    assert "start task" in str(raised.value)
    assert_left_behind(local_backend, before, NOTHING)
