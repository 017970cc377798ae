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
from common.cli import configure_logging, parse_sample_arguments, print_cleanup_report, run_sample_main, step
from common.clients import create_batch_client, create_blob_service_client
from common.config import SampleSettings, load_settings, sample_configuration_path
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
    vm_size: str,
    node_count: int,
    virtual_machine_configuration: models.VirtualMachineConfiguration,
    script_url: str,
    script_name: str,
) -> bool:
    """Create a fixed-size pool whose start task puts the script in every node's shared directory.

    The start task downloads the script as a resource file into its working directory, then
    copies it to ``$AZ_BATCH_NODE_SHARED_DIR``, where every task on the node can find it.
    ``wait_for_success`` keeps a node from taking tasks until its start task has succeeded.
    It runs as the pool-wide, non-admin automatic user, as the tasks of ``add_simple_task`` do,
    so the file it leaves belongs to the user the tasks run as.
    Returns True if the pool was created, False if a pool with that id already existed.
    """
    start_task = models.BatchStartTask(
        command_line=wrap_commands_in_shell([f'cp {script_name} "$AZ_BATCH_NODE_SHARED_DIR/"']),
        resource_files=[models.ResourceFile(http_url=script_url, file_path=script_name)],
        user_identity=models.UserIdentity(
            auto_user=models.AutoUserSpecification(
                scope=models.AutoUserScope.POOL, elevation_level=models.ElevationLevel.NON_ADMIN,
            )
        ),
        max_task_retry_count=1,
        wait_for_success=True,
    )
    pool = models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size=vm_size,
        target_dedicated_nodes=node_count,
        virtual_machine_configuration=virtual_machine_configuration,
        start_task=start_task,
    )
    return create_pool_if_not_exists(batch_client, pool)


def create_job_on_pool(batch_client: BatchClient, job_id: str, pool_id: str) -> bool:
    """Create a job whose tasks run on an existing pool. Return True if created."""
    job = models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id))
    return create_job_if_not_exists(batch_client, job)


def add_simple_task(batch_client: BatchClient, job_id: str, script_name: str, task_id: str = "simple-task") -> str:
    """Add a task that runs the script the start task left in the shared directory. Return its id.

    It runs as the pool-wide, non-admin automatic user, the owner of the script the start task copied.
    """
    task = models.BatchTaskCreateOptions(
        id=task_id,
        command_line=wrap_commands_in_shell([f'python3 "$AZ_BATCH_NODE_SHARED_DIR/{script_name}"']),
        user_identity=models.UserIdentity(
            auto_user=models.AutoUserSpecification(
                scope=models.AutoUserScope.POOL, elevation_level=models.ElevationLevel.NON_ADMIN,
            )
        ),
    )
    add_tasks(batch_client, job_id, [task])
    return task.id


def run_pools_and_resource_files(
    batch_client: BatchClient,
    blob_service_client: BlobServiceClient,
    settings: SampleSettings,
    keep_resources: bool = False,
    resources: Optional[CreatedResources] = None,
) -> None:
    """Run the pools-and-resource-files story and print it; clean up as configured, whatever happens.

    What it creates is recorded in ``resources`` (a new record if not given) before it is
    created, and the cleanup report is left there too.
    """
    resources = CreatedResources() if resources is None else resources
    pool, timeouts, poll_interval_seconds = settings.pool, settings.timeouts, settings.batch.poll_interval_seconds
    try:
        with step("select the image"):
            virtual_machine_configuration = select_verified_linux_image(
                batch_client, publisher=pool.image_publisher, offer=pool.image_offer, sku_prefix=pool.image_sku_prefix,
            )
        image = virtual_machine_configuration.image_reference
        print(f"Image: {image.publisher} {image.offer} {image.sku} "
              f"(node agent {virtual_machine_configuration.node_agent_sku_id})")

        container_name = unique_resource_name("sample2-resources")
        resources.container_names.append(container_name)  # recorded first: cleanup must find it
        with step(f"upload {TASK_SCRIPT_PATH.name} to container {container_name}"):
            script_url = upload_task_script(blob_service_client, container_name, TASK_SCRIPT_PATH, timeouts.sas_expiry)
        print(f"Uploaded {TASK_SCRIPT_PATH.name} to container {container_name} "
              f"(read-only SAS valid for {timeouts.sas_expiry})")

        pool_id = pool.pool_id or unique_resource_name("sample2-pool")
        resources.pool_ids.append(pool_id)
        with step(f"create pool {pool_id}"):
            created = create_pool_with_start_task(
                batch_client, pool_id, pool.vm_size, pool.node_count, virtual_machine_configuration,
                script_url, TASK_SCRIPT_PATH.name,
            )
        print(f"{'Created' if created else 'Reusing'} pool {pool_id} "
              f"({pool.node_count} x {pool.vm_size}); waiting for its nodes to be idle")
        with step(f"wait for the nodes of pool {pool_id}"):
            nodes = wait_for_all_nodes_to_reach_state(
                batch_client, pool_id, timeouts.nodes_ready, poll_interval_seconds=poll_interval_seconds,
                report_progress=print,
            )
        print(f"{len(nodes)} node(s) idle: {', '.join(node.id for node in nodes)}")

        job_id = unique_resource_name("sample2-job")
        resources.job_ids.append(job_id)
        with step(f"create job {job_id}"):
            create_job_on_pool(batch_client, job_id, pool_id)
        with step(f"add a task to job {job_id}"):
            task_id = add_simple_task(batch_client, job_id, TASK_SCRIPT_PATH.name, SIMPLE_TASK_ID)
        print(f"Created job {job_id} with task {task_id}; waiting up to {timeouts.tasks_complete}")

        with step(f"wait for the task of job {job_id}"):
            tasks = wait_for_tasks_to_complete(
                batch_client, job_id, timeouts.tasks_complete, poll_interval_seconds, report_progress=print
            )
        for task in tasks:
            print(describe_task_result(task))
        with step(f"read the output of task {task_id}"):
            print_task_output(batch_client, job_id, task_id)
        raise_if_any_task_failed(tasks)
    finally:
        report = clean_up_resources(
            batch_client, blob_service_client, resources,
            delete_jobs=settings.cleanup.delete_job,
            delete_pools=settings.cleanup.delete_pool,
            delete_containers=settings.cleanup.delete_container,
            timeout=timeouts.cleanup,
            poll_interval_seconds=poll_interval_seconds,
            keep_everything=keep_resources,
        )
        print_cleanup_report(settings, report)
    report.raise_if_incomplete()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, start the local stack if configured, run the sample; return the exit code."""
    arguments = parse_sample_arguments(__doc__, sample_configuration_path(__file__), argv)
    configure_logging(arguments.verbose)
    resources = CreatedResources()

    def run() -> None:
        settings = load_settings(arguments.config, arguments.sample_config)
        logger.info("Settings:\n%s", settings.describe())
        with local_stack_if_configured(settings):
            batch_client = create_batch_client(settings.batch)
            blob_service_client = create_blob_service_client(settings.storage)
            run_pools_and_resource_files(
                batch_client, blob_service_client, settings, keep_resources=arguments.keep_resources, resources=resources
            )

    return run_sample_main(Path(__file__).name, run, resources)


if __name__ == "__main__":
    sys.exit(main())
