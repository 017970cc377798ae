"""Each account is its own world, as separate Batch accounts are: pools, jobs, tasks, nodes, node
files and state of one are invisible to another, through the SDK and raw HTTP, and a restart
keeps each account's world apart."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError

from localbatch import LocalBatchServer
from localbatch.accounts import AccountConfigError, load_accounts

from .conftest import fast_timings
from .support import (LRO_POLLING, RawClient, batch_client, create_job, create_pool_and_wait, pool_options, run_task,
                      unique_id)
from .test_auth_and_protocol import _assert_batch_error

SECOND = "second"
SECOND_KEY = "c2Vjb25kLWFjY291bnQta2V5LWZvci10ZXN0cy1vbmx5LTAxMjM0NTY3ODk="
THIRD = "third3"
THIRD_KEY = "dGhpcmQtYWNjb3VudC1rZXktZm9yLXRlc3RzLW9ubHktOTg3NjU0MzIxMA=="
ACCOUNTS = f"{SECOND}:{SECOND_KEY};{THIRD}:{THIRD_KEY}"


@pytest.fixture(scope="module")
def location(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("accounts")


@pytest.fixture(scope="module")
def accounts_environment() -> Iterator[None]:
    previous = os.environ.get("LOCALBATCH_ACCOUNTS")
    os.environ["LOCALBATCH_ACCOUNTS"] = ACCOUNTS
    yield
    if previous is None:
        del os.environ["LOCALBATCH_ACCOUNTS"]
    else:
        os.environ["LOCALBATCH_ACCOUNTS"] = previous


@pytest.fixture(scope="module")
def multi(location: Path, accounts_environment: None) -> Iterator[LocalBatchServer]:
    with LocalBatchServer(str(location), timings=fast_timings()) as running:
        yield running


@pytest.fixture(scope="module")
def first_client(multi: LocalBatchServer):
    with batch_client(multi.url) as client:
        yield client


@pytest.fixture(scope="module")
def second_client(multi: LocalBatchServer):
    with batch_client(multi.url, account=SECOND, key=SECOND_KEY) as client:
        yield client


def test_a_job_of_one_account_is_not_found_by_another(multi, first_client, second_client):
    pool = unique_id("pool")
    second_client.create_pool(_pool_without_nodes(pool))
    job = create_job(second_client, pool)
    assert second_client.get_job(job).id == job
    with pytest.raises(ResourceNotFoundError):
        first_client.get_job(job)
    with pytest.raises(ResourceNotFoundError):
        first_client.get_pool(pool)
    _assert_batch_error(RawClient(multi.url).request("GET", f"/jobs/{job}"), 404, "JobNotFound")
    _assert_batch_error(RawClient(multi.url, THIRD, THIRD_KEY).request("GET", f"/jobs/{job}"), 404, "JobNotFound")
    assert RawClient(multi.url, SECOND, SECOND_KEY).request("GET", f"/jobs/{job}").status == 200


def test_the_same_ids_live_side_by_side_and_lists_differ(multi, first_client, second_client):
    pool = unique_id("pool")
    for client in (first_client, second_client):
        client.create_pool(_pool_without_nodes(pool))  # no PoolExists: another account's pool is not seen
    first_job = create_job(first_client, pool, job_id=unique_id("job"))
    second_only = create_job(second_client, pool, job_id=unique_id("job"))
    first_jobs = {job.id for job in first_client.list_jobs()}
    second_jobs = {job.id for job in second_client.list_jobs()}
    assert first_job in first_jobs and first_job not in second_jobs
    assert second_only in second_jobs and second_only not in first_jobs
    third = RawClient(multi.url, THIRD, THIRD_KEY)
    assert third.request("GET", "/jobs").json()["value"] == []
    assert third.request("GET", "/pools").json()["value"] == []
    first_client.begin_delete_pool(pool, polling_interval=LRO_POLLING).result()  # the other account keeps its pool
    assert second_client.get_pool(pool).state == "active"


def test_nodes_and_their_files_are_separate(multi, first_client, second_client):
    pool = unique_id("pool")
    first_nodes = create_pool_and_wait(first_client, pool, nodes=1)
    second_nodes = create_pool_and_wait(second_client, pool, nodes=1)
    assert {node.id for node in first_nodes}.isdisjoint(node.id for node in second_nodes)
    with pytest.raises(ResourceNotFoundError):
        first_client.get_node(pool, second_nodes[0].id)

    job = create_job(second_client, pool)
    command = ("/bin/sh -c 'echo $AZ_BATCH_ACCOUNT_NAME > $AZ_BATCH_NODE_SHARED_DIR/marker.txt; "
               "echo $AZ_BATCH_NODE_ROOT_DIR'")
    task = run_task(second_client, job, command)
    assert task.execution_info.exit_code == 0
    root = b"".join(second_client.download_task_file(job, task.id, "stdout.txt")).decode().strip()
    assert root.startswith(str(Path(multi.location) / "accounts" / SECOND)), root
    marker = b"".join(second_client.download_node_file(pool, second_nodes[0].id, "shared/marker.txt"))
    assert marker == f"{SECOND}\n".encode()

    first_files = {entry.name for entry in first_client.list_node_files(pool, first_nodes[0].id, recursive=True)}
    assert "shared/marker.txt" not in first_files
    with pytest.raises(ResourceNotFoundError):
        first_client.get_task(job, task.id)
    with pytest.raises(ResourceNotFoundError):
        b"".join(first_client.download_node_file(pool, second_nodes[0].id, "shared/marker.txt"))


def test_the_signed_status_describes_only_the_signing_account(multi, second_client):
    create_job(second_client, unique_id("pool"))
    second = RawClient(multi.url, SECOND, SECOND_KEY).request("GET", "/localbatch/status", api_version=None).json()
    third = RawClient(multi.url, THIRD, THIRD_KEY).request("GET", "/localbatch/status", api_version=None).json()
    assert second["account"] == SECOND and third["account"] == THIRD
    assert second["jobs"] >= 1 and third["jobs"] == 0
    assert "create_job" in second["requests"] and "create_job" not in third["requests"]
    assert second["location"] != third["location"]


def test_a_restart_keeps_each_account_in_its_own_world(tmp_path, accounts_environment):
    pool = unique_id("pool")
    with LocalBatchServer(str(tmp_path), timings=fast_timings()) as before:
        with batch_client(before.url, account=SECOND, key=SECOND_KEY) as second, batch_client(before.url) as first:
            second.create_pool(_pool_without_nodes(pool))
            job = create_job(second, pool)
            first_only = create_job(first, pool)
    with LocalBatchServer(str(tmp_path), timings=fast_timings()) as after:
        with batch_client(after.url, account=SECOND, key=SECOND_KEY) as second, batch_client(after.url) as first:
            assert second.get_job(job).id == job
            assert second.get_pool(pool).id == pool
            assert first.get_job(first_only).id == first_only
            with pytest.raises(ResourceNotFoundError):
                first.get_job(job)
            with pytest.raises(ResourceNotFoundError):
                first.get_pool(pool)
            with pytest.raises(ResourceNotFoundError):
                second.get_job(first_only)
    # The well-known account keeps the top of --location, as before there were several accounts.
    assert (tmp_path / "state" / "localbatch.sqlite3").is_file()
    assert (tmp_path / "accounts" / SECOND / "state" / "localbatch.sqlite3").is_file()


@pytest.mark.parametrize("name", ["ab", "Upper", "with-dash", "a" * 25, "../up"])
def test_an_account_name_azure_would_refuse_is_a_configuration_error(name):
    with pytest.raises(AccountConfigError, match="lower-case letters and digits"):
        load_accounts({"LOCALBATCH_ACCOUNTS": f"{name}:{SECOND_KEY}"})


def _pool_without_nodes(pool_id: str):
    return pool_options(pool_id, nodes=0)
