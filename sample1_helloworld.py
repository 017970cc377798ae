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
from common.cli import configure_logging, parse_sample_arguments, print_cleanup_report, run_sample_main, step
from common.clients import create_batch_client
from common.config import SampleSettings, load_settings, sample_configuration_path
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
    vm_size: str,
    node_count: int,
    virtual_machine_configuration: models.VirtualMachineConfiguration,
) -> bool:
    """Create a job whose pool is created with the job and deleted with it. Return True if created.

    ``pool_lifetime_option="job"`` ties the auto-pool to the job: Batch creates it (``node_count``
    dedicated nodes of ``vm_size``) when the job starts and deletes it when the job ends or is
    deleted, so nothing is left running.
    """
    job = models.BatchJobCreateOptions(
        id=job_id,
        pool_info=models.BatchPoolInfo(
            auto_pool_specification=models.BatchAutoPoolSpecification(
                auto_pool_id_prefix="helloworld",
                pool_lifetime_option=models.BatchPoolLifetimeOption.JOB,
                pool=models.BatchPoolSpecification(
                    vm_size=vm_size,
                    target_dedicated_nodes=node_count,
                    virtual_machine_configuration=virtual_machine_configuration,
                ),
            )
        ),
    )
    return create_job_if_not_exists(batch_client, job)


def add_hello_world_task(batch_client: BatchClient, job_id: str, task_id: str = "hello-world") -> str:
    """Add one task that echoes a greeting to stdout and a note to stderr. Return its id.

    The command line is wrapped in ``/bin/bash -c`` because Batch does not run a Linux command
    line in a shell: without it, ``$AZ_BATCH_TASK_ID`` and ``>&2`` would reach echo as plain text.
    """
    task = models.BatchTaskCreateOptions(
        id=task_id,
        command_line=wrap_commands_in_shell([
            'echo "Hello world from task $AZ_BATCH_TASK_ID on node $AZ_BATCH_NODE_ID"',
            'echo "This line went to stderr" >&2',
        ]),
    )
    add_tasks(batch_client, job_id, [task])
    return task.id


def run_hello_world(
    batch_client: BatchClient,
    settings: SampleSettings,
    keep_resources: bool = False,
    resources: Optional[CreatedResources] = None,
) -> None:
    """Run the hello-world story and print it; clean up as the sample configuration says, whatever happens.

    What it creates is recorded in ``resources`` (a new record if not given) before it is
    created, and the cleanup report is left there too.
    """
    resources = CreatedResources() if resources is None else resources
    pool, timeouts = settings.pool, settings.timeouts
    try:
        with step("select the image"):
            virtual_machine_configuration = select_verified_linux_image(
                batch_client, publisher=pool.image_publisher, offer=pool.image_offer, sku_prefix=pool.image_sku_prefix,
            )
        image = virtual_machine_configuration.image_reference
        print(f"Image: {image.publisher} {image.offer} {image.sku} "
              f"(node agent {virtual_machine_configuration.node_agent_sku_id})")

        job_id = unique_resource_name("helloworld")
        resources.job_ids.append(job_id)  # recorded first, so cleanup finds it even if creation fails half-way
        with step(f"create job {job_id}"):
            create_job_with_auto_pool(batch_client, job_id, pool.vm_size, pool.node_count, virtual_machine_configuration)
        print(f"Created job {job_id} with an auto-pool of {pool.node_count} x {pool.vm_size}")

        with step(f"add a task to job {job_id}"):
            task_id = add_hello_world_task(batch_client, job_id, HELLO_WORLD_TASK_ID)
        print(f"Added task {task_id}; waiting up to {timeouts.tasks_complete} for it to complete")

        with step(f"wait for the task of job {job_id}"):
            tasks = wait_for_tasks_to_complete(
                batch_client, job_id, timeouts.tasks_complete, settings.batch.poll_interval_seconds,
                report_progress=print,
            )
        for task in tasks:
            print(describe_task_result(task))
        with step(f"read the output of task {task_id}"):
            print_task_output(batch_client, job_id, task_id)
        raise_if_any_task_failed(tasks)
    finally:
        report = clean_up_resources(
            batch_client, None, resources,
            delete_jobs=settings.cleanup.delete_job,
            timeout=timeouts.cleanup,
            poll_interval_seconds=settings.batch.poll_interval_seconds,
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
            run_hello_world(batch_client, settings, keep_resources=arguments.keep_resources, resources=resources)

    return run_sample_main(Path(__file__).name, run, resources)


if __name__ == "__main__":
    sys.exit(main())
