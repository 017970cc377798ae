"""Each function a sample defines, copied out as a reader would and run on its own against the local stack.

``copy_function`` defines the function again from its source text alone, in a namespace holding
only the Azure SDK names its sample imports and the helpers it names: a function that needs a
settings object, a module constant or another function of the sample fails here.
"""

from __future__ import annotations

import contextlib
import urllib.request
from datetime import timedelta
from typing import Iterator

import pytest
from azure.batch import BatchClient
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

import sample1_helloworld
import sample2_pools_and_resourcefiles
from common import REPOSITORY_ROOT
from common.helpers import enum_value, select_verified_linux_image, unique_resource_name, wait_for_tasks_to_complete
from tests.copyability import copy_function, copyable_functions

WAIT = timedelta(minutes=2)
TESTED = {
    sample1_helloworld: {"create_job_with_auto_pool", "add_hello_world_task"},
    sample2_pools_and_resourcefiles: {"upload_task_script", "create_pool_with_start_task", "create_job_on_pool",
                                      "add_simple_task"},
}


def test_every_copyable_function_of_the_samples_is_exercised_here() -> None:
    for module, tested in TESTED.items():
        assert {function.__name__ for function in copyable_functions(module)} == tested


@pytest.fixture
def job_ids(local_batch_client: BatchClient) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for job_id in created:  # a job the function under test failed to create is not an error here
        with contextlib.suppress(ResourceNotFoundError):
            local_batch_client.begin_delete_job(job_id, polling_interval=0.1).result()


def test_sample1_functions_on_their_own(local_batch_client: BatchClient, job_ids: list[str]) -> None:
    create_job_with_auto_pool = copy_function(sample1_helloworld, "create_job_with_auto_pool")
    add_hello_world_task = copy_function(sample1_helloworld, "add_hello_world_task")
    image = select_verified_linux_image(local_batch_client, offer="0001-com-ubuntu-server-jammy")
    job_id = unique_resource_name("copied-sample1")
    job_ids.append(job_id)

    assert create_job_with_auto_pool(local_batch_client, job_id, "standard_d2s_v3", 1, image) is True
    assert create_job_with_auto_pool(local_batch_client, job_id, "standard_d2s_v3", 1, image) is False
    assert add_hello_world_task(local_batch_client, job_id, "greeting") == "greeting"

    spec = local_batch_client.get_job(job_id).pool_info.auto_pool_specification
    assert (spec.pool.vm_size, spec.pool.target_dedicated_nodes) == ("standard_d2s_v3", 1)
    [task] = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.1)
    assert (task.id, task.execution_info.exit_code) == ("greeting", 0)
    stdout = b"".join(local_batch_client.download_task_file(job_id, "greeting", "stdout.txt")).decode()
    assert stdout.startswith("Hello world from task greeting on node ")


def test_sample2_functions_on_their_own(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient, job_ids: list[str]
) -> None:
    upload_task_script = copy_function(sample2_pools_and_resourcefiles, "upload_task_script")
    create_pool_with_start_task = copy_function(sample2_pools_and_resourcefiles, "create_pool_with_start_task")
    create_job_on_pool = copy_function(sample2_pools_and_resourcefiles, "create_job_on_pool")
    add_simple_task = copy_function(sample2_pools_and_resourcefiles, "add_simple_task")
    script = REPOSITORY_ROOT / "resources" / "simple_task.py"
    container_name = unique_resource_name("copied-sample2")
    pool_id, job_id = unique_resource_name("copied-sample2-pool"), unique_resource_name("copied-sample2-job")
    try:
        url = upload_task_script(local_blob_service_client, container_name, script, timedelta(minutes=5))
        with urllib.request.urlopen(url, timeout=30) as answer:  # the SAS URL alone reads the script
            assert answer.read() == script.read_bytes()

        image = select_verified_linux_image(local_batch_client, offer="0001-com-ubuntu-server-jammy")
        assert create_pool_with_start_task(local_batch_client, pool_id, "standard_d2s_v3", 1, image, url, script.name)
        job_ids.append(job_id)
        assert create_job_on_pool(local_batch_client, job_id, pool_id) is True
        assert add_simple_task(local_batch_client, job_id, script.name, "copied-task") == "copied-task"

        start_task = local_batch_client.get_pool(pool_id).start_task
        assert start_task.resource_files[0].http_url == url and start_task.wait_for_success
        assert enum_value(start_task.user_identity.auto_user.scope) == "pool"
        [task] = wait_for_tasks_to_complete(local_batch_client, job_id, WAIT, 0.1)
        assert (task.id, task.execution_info.exit_code) == ("copied-task", 0)
    finally:
        with contextlib.suppress(ResourceNotFoundError):
            local_batch_client.begin_delete_pool(pool_id, polling_interval=0.1).result()
        with contextlib.suppress(ResourceNotFoundError):
            local_blob_service_client.delete_container(container_name)
