"""Hello world on Azure Batch: a job with an auto-pool and one task that echoes through a shell.

The job brings its own pool (an auto-pool that lives exactly as long as the job), one task runs
a shell command on it, and the sample prints what the task wrote to stdout and stderr. Deleting
the job at the end deletes the auto-pool with it.

    python sample1_helloworld.py [--config PATH] [--sample-config PATH] [--keep-resources] [-v]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from azure.batch import BatchClient, models

from common.cleanup import CreatedResources, clean_up_resources
from common.cli import configure_logging, parse_sample_arguments, run_sample_main
from common.clients import create_batch_client
from common.config import PoolSettings, SampleSettings, load_settings, sample_configuration_path
from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    describe_task_result,
    print_task_output,
    raise_if_any_task_failed,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_tasks_to_complete,
    wrap_commands_in_shell,
)
from common.local import local_stack_if_configured

logger = logging.getLogger(__name__)

HELLO_WORLD_TASK_ID = "hello-world"


def create_job_with_auto_pool(
    batch_client: BatchClient,
    job_id: str,
    pool_settings: PoolSettings,
    virtual_machine_configuration: models.VirtualMachineConfiguration,
) -> bool:
    """Create a job whose pool is created with the job and deleted with it. Return True if created.

    ``pool_lifetime_option="job"`` ties the auto-pool to the job: Batch creates it when the job
    starts and deletes it when the job ends or is deleted, so nothing is left running.
    """
    job = models.BatchJobCreateOptions(
        id=job_id,
        pool_info=models.BatchPoolInfo(
            auto_pool_specification=models.BatchAutoPoolSpecification(
                auto_pool_id_prefix="helloworld",
                pool_lifetime_option=models.BatchPoolLifetimeOption.JOB,
                pool=models.BatchPoolSpecification(
                    vm_size=pool_settings.vm_size,
                    target_dedicated_nodes=pool_settings.node_count,
                    virtual_machine_configuration=virtual_machine_configuration,
                ),
            )
        ),
    )
    return create_job_if_not_exists(batch_client, job)


def add_hello_world_task(batch_client: BatchClient, job_id: str) -> str:
    """Add one task that echoes a greeting to stdout and a note to stderr. Return its id.

    The command line is wrapped in ``/bin/bash -c`` because Batch does not run a Linux command
    line in a shell: without it, ``$AZ_BATCH_TASK_ID`` and ``>&2`` would reach echo as plain text.
    """
    task = models.BatchTaskCreateOptions(
        id=HELLO_WORLD_TASK_ID,
        command_line=wrap_commands_in_shell([
            'echo "Hello world from task $AZ_BATCH_TASK_ID on node $AZ_BATCH_NODE_ID"',
            'echo "This line went to stderr" >&2',
        ]),
    )
    add_tasks(batch_client, job_id, [task])
    return task.id


def run_hello_world(batch_client: BatchClient, settings: SampleSettings, keep_resources: bool = False) -> None:
    """Run the hello-world story and print it; clean up as the sample configuration says, whatever happens."""
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

        job_id = unique_resource_name("helloworld")
        resources.job_ids.append(job_id)  # recorded first, so cleanup finds it even if creation fails half-way
        create_job_with_auto_pool(batch_client, job_id, settings.pool, virtual_machine_configuration)
        print(f"Created job {job_id} with an auto-pool of {settings.pool.node_count} x {settings.pool.vm_size}")

        task_id = add_hello_world_task(batch_client, job_id)
        print(f"Added task {task_id}; waiting up to {settings.timeouts.tasks_complete} for it to complete")

        tasks = wait_for_tasks_to_complete(
            batch_client, job_id, settings.timeouts.tasks_complete, settings.batch.poll_interval_seconds
        )
        for task in tasks:
            print(describe_task_result(task))
        print_task_output(batch_client, job_id, task_id)
        raise_if_any_task_failed(tasks)
    finally:
        report = clean_up_resources(
            batch_client, None, resources, settings.cleanup, settings.timeouts.cleanup,
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
            run_hello_world(batch_client, settings, keep_resources=arguments.keep_resources)

    return run_sample_main(Path(__file__).name, run)


if __name__ == "__main__":
    sys.exit(main())
