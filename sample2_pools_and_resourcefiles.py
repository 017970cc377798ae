"""Pools and resource files: a fixed pool whose start task delivers a script to every node.

The sample picks a verified Linux image from ``list_supported_images()``, uploads
``resources/simple_task.py`` to a blob container, and creates a pool whose start task downloads
it (through a read-only, short-lived SAS URL) and copies it into the node's shared directory.
Once the nodes are idle, a job's task runs the script from there, and the sample prints what it
printed. At the end it deletes the job, pool and container, as its configuration says.

    python sample2_pools_and_resourcefiles.py [--config PATH] [--sample-config PATH] [--keep-resources] [-v]
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

from azure.batch import BatchClient, models
from azure.storage.blob import BlobServiceClient

from common import REPOSITORY_ROOT
from common.cleanup import CreatedResources, clean_up_resources
from common.cli import configure_logging, parse_sample_arguments, run_sample_main
from common.clients import create_batch_client, create_blob_service_client
from common.config import PoolSettings, SampleSettings, load_settings, sample_configuration_path
from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    create_pool_if_not_exists,
    describe_task_result,
    print_task_output,
    raise_if_any_task_failed,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
    wrap_commands_in_shell,
)
from common.local import local_stack_if_configured
from common.storage import create_container_if_not_exists, create_read_only_blob_sas_url, upload_file_to_container

logger = logging.getLogger(__name__)

TASK_SCRIPT_PATH = REPOSITORY_ROOT / "resources" / "simple_task.py"
SIMPLE_TASK_ID = "simple-task"

# The start task and the tasks run as the same non-admin, pool-wide automatic user, so the
# files the start task leaves in the shared directory belong to the user the tasks run as.
POOL_AUTO_USER = models.UserIdentity(
    auto_user=models.AutoUserSpecification(
        scope=models.AutoUserScope.POOL,
        elevation_level=models.ElevationLevel.NON_ADMIN,
    )
)


def upload_task_script(
    blob_service_client: BlobServiceClient, container_name: str, script_path: Path, valid_for: timedelta
) -> str:
    """Upload the script to the container (created if needed). Return a read-only SAS URL for it."""
    create_container_if_not_exists(blob_service_client, container_name)
    blob_name = upload_file_to_container(blob_service_client, container_name, script_path)
    return create_read_only_blob_sas_url(blob_service_client, container_name, blob_name, valid_for)


def create_pool_with_start_task(
    batch_client: BatchClient,
    pool_id: str,
    pool_settings: PoolSettings,
    virtual_machine_configuration: models.VirtualMachineConfiguration,
    script_url: str,
    script_name: str,
) -> bool:
    """Create a fixed-size pool whose start task puts the script in every node's shared directory.

    The start task downloads the script as a resource file into its working directory, then
    copies it to ``$AZ_BATCH_NODE_SHARED_DIR``, where every task on the node can find it.
    ``wait_for_success`` keeps a node from taking tasks until its start task has succeeded.
    Returns True if the pool was created, False if a pool with that id already existed.
    """
    start_task = models.BatchStartTask(
        command_line=wrap_commands_in_shell([f'cp {script_name} "$AZ_BATCH_NODE_SHARED_DIR/"']),
        resource_files=[models.ResourceFile(http_url=script_url, file_path=script_name)],
        user_identity=POOL_AUTO_USER,
        max_task_retry_count=1,
        wait_for_success=True,
    )
    pool = models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size=pool_settings.vm_size,
        target_dedicated_nodes=pool_settings.node_count,
        virtual_machine_configuration=virtual_machine_configuration,
        start_task=start_task,
    )
    return create_pool_if_not_exists(batch_client, pool)


def create_job_on_pool(batch_client: BatchClient, job_id: str, pool_id: str) -> bool:
    """Create a job whose tasks run on an existing pool. Return True if created."""
    job = models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
    return create_job_if_not_exists(batch_client, job)


def add_simple_task(batch_client: BatchClient, job_id: str, script_name: str) -> str:
    """Add a task that runs the script the start task left in the shared directory. Return its id."""
    task = models.BatchTaskCreateOptions(
        id=SIMPLE_TASK_ID,
        command_line=wrap_commands_in_shell([f'python3 "$AZ_BATCH_NODE_SHARED_DIR/{script_name}"']),
        user_identity=POOL_AUTO_USER,
    )
    add_tasks(batch_client, job_id, [task])
    return task.id


def run_pools_and_resource_files(
    batch_client: BatchClient,
    blob_service_client: BlobServiceClient,
    settings: SampleSettings,
    keep_resources: bool = False,
) -> None:
    """Run the pools-and-resource-files story and print it; clean up as configured, whatever happens."""
    resources = CreatedResources()
    try:
        virtual_machine_configuration = select_verified_linux_image(
            batch_client,
            publisher=settings.pool.image_publisher,
            offer=settings.pool.image_offer,
            sku_prefix=settings.pool.image_sku_prefix,
        )
        image = virtual_machine_configuration.image_reference
        print(f"Image: {image.publisher} {image.offer} {image.sku} "
              f"(node agent {virtual_machine_configuration.node_agent_sku_id})")

        container_name = unique_resource_name("sample2-resources")
        resources.container_names.append(container_name)  # recorded first: cleanup must find it
        script_url = upload_task_script(
            blob_service_client, container_name, TASK_SCRIPT_PATH, settings.timeouts.sas_expiry
        )
        print(f"Uploaded {TASK_SCRIPT_PATH.name} to container {container_name} "
              f"(read-only SAS valid for {settings.timeouts.sas_expiry})")

        pool_id = settings.pool.pool_id or unique_resource_name("sample2-pool")
        resources.pool_ids.append(pool_id)
        created = create_pool_with_start_task(
            batch_client, pool_id, settings.pool, virtual_machine_configuration, script_url, TASK_SCRIPT_PATH.name
        )
        print(f"{'Created' if created else 'Reusing'} pool {pool_id} "
              f"({settings.pool.node_count} x {settings.pool.vm_size}); waiting for its nodes to be idle")
        nodes = wait_for_all_nodes_to_reach_state(
            batch_client, pool_id, settings.timeouts.nodes_ready,
            poll_interval_seconds=settings.batch.poll_interval_seconds,
        )
        print(f"{len(nodes)} node(s) idle: {', '.join(node.id for node in nodes)}")

        job_id = unique_resource_name("sample2-job")
        resources.job_ids.append(job_id)
        create_job_on_pool(batch_client, job_id, pool_id)
        task_id = add_simple_task(batch_client, job_id, TASK_SCRIPT_PATH.name)
        print(f"Created job {job_id} with task {task_id}; waiting up to {settings.timeouts.tasks_complete}")

        tasks = wait_for_tasks_to_complete(
            batch_client, job_id, settings.timeouts.tasks_complete, settings.batch.poll_interval_seconds
        )
        for task in tasks:
            print(describe_task_result(task))
        print_task_output(batch_client, job_id, task_id)
        raise_if_any_task_failed(tasks)
    finally:
        report = clean_up_resources(
            batch_client, blob_service_client, resources, settings.cleanup, settings.timeouts.cleanup,
            settings.batch.poll_interval_seconds, keep_everything=keep_resources,
        )
        for line in report.lines():
            print(line)
    report.raise_if_incomplete()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, start the local stack if configured, run the sample; return the exit code."""
    arguments = parse_sample_arguments(__doc__, sample_configuration_path(__file__), argv)
    configure_logging(arguments.verbose)

    def run() -> None:
        settings = load_settings(arguments.config, arguments.sample_config)
        logger.info("Settings:\n%s", settings.describe())
        with local_stack_if_configured(settings):
            batch_client = create_batch_client(settings.batch)
            blob_service_client = create_blob_service_client(settings.storage)
            run_pools_and_resource_files(batch_client, blob_service_client, settings, keep_resources=arguments.keep_resources)

    return run_sample_main(Path(__file__).name, run)


if __name__ == "__main__":
    sys.exit(main())
