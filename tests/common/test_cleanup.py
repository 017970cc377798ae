"""common.cleanup against the local stack: it deletes what the settings say, and nothing stops it."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from azure.batch import BatchClient, models
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import BlobServiceClient

from common.cleanup import CreatedResources, clean_up_resources
from common.clients import create_batch_client
from common.config import SampleSettings
from common.helpers import create_pool_if_not_exists, pool_exists, select_verified_linux_image, unique_resource_name
from common.storage import create_container_if_not_exists
from tests.samples.support import FailRequests, connection_lost
from tests.waiting import wait_for

WAIT = timedelta(minutes=2)
OPTIONS = {"timeout": WAIT, "poll_interval_seconds": 0.1}


def job_exists(batch_client: BatchClient, job_id: str) -> bool:
    return any(job.id == job_id for job in batch_client.list_jobs(filter=f"id eq '{job_id}'", select=["id"]))


def container_exists(blob_service_client: BlobServiceClient, name: str) -> bool:
    return blob_service_client.get_container_client(name).exists()


@pytest.fixture
def resources(local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient) -> CreatedResources:
    """A job, an empty pool and a container, as a sample would have created them."""
    created = CreatedResources(
        job_ids=[unique_resource_name("cleanup-job")],
        pool_ids=[unique_resource_name("cleanup-pool")],
        container_names=[unique_resource_name("cleanup-container")],
    )
    create_pool_if_not_exists(local_batch_client, models.BatchPoolCreateOptions(
        id=created.pool_ids[0], vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        virtual_machine_configuration=select_verified_linux_image(local_batch_client)))
    local_batch_client.create_job(models.BatchJobCreateOptions(
        id=created.job_ids[0], pool_info=models.BatchPoolInfo(pool_id=created.pool_ids[0])))
    create_container_if_not_exists(local_blob_service_client, created.container_names[0])
    return created


def remaining(batch_client: BatchClient, blob_service_client: BlobServiceClient, resources: CreatedResources) -> list[str]:
    return (
        [f"job {job}" for job in resources.job_ids if job_exists(batch_client, job)]
        + [f"pool {pool}" for pool in resources.pool_ids if pool_exists(batch_client, pool)]
        + [f"container {name}" for name in resources.container_names if container_exists(blob_service_client, name)]
    )


def test_deletes_everything_by_default(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient, resources: CreatedResources
) -> None:
    report = clean_up_resources(local_batch_client, local_blob_service_client, resources, **OPTIONS)

    assert sorted(report.deleted) == sorted([
        f"job {resources.job_ids[0]}", f"pool {resources.pool_ids[0]}", f"container {resources.container_names[0]}"])
    assert report.kept == report.failed == report.still_deleting == []
    assert remaining(local_batch_client, local_blob_service_client, resources) == []
    report.raise_if_incomplete()


def test_keeps_what_the_settings_say_to_keep(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient, resources: CreatedResources
) -> None:
    report = clean_up_resources(local_batch_client, local_blob_service_client, resources, delete_pools=False, **OPTIONS)

    assert report.kept == [f"pool {resources.pool_ids[0]}"]
    assert f"Kept pool {resources.pool_ids[0]} (0 node(s) of standard_d2s_v3): they stay, and on Azure are billed, " \
           "until the pool is deleted" in report.lines()
    assert report.left_behind() == [f"pool {resources.pool_ids[0]}"]
    assert report.summary() == f"kept pool {resources.pool_ids[0]}"
    assert remaining(local_batch_client, local_blob_service_client, resources) == [f"pool {resources.pool_ids[0]}"]
    local_batch_client.begin_delete_pool(resources.pool_ids[0], polling_interval=0.1).result()


def test_keep_everything_wins_over_the_settings(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient, resources: CreatedResources
) -> None:
    report = clean_up_resources(local_batch_client, local_blob_service_client, resources, **OPTIONS, keep_everything=True)

    assert len(report.kept) == 3 and report.deleted == []
    assert len(remaining(local_batch_client, local_blob_service_client, resources)) == 3
    clean_up_resources(local_batch_client, local_blob_service_client, resources, **OPTIONS)


def test_resources_that_were_never_created_are_not_an_error(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient
) -> None:
    never_created = CreatedResources(["no-such-job"], ["no-such-pool"], ["no-such-container"])

    report = clean_up_resources(local_batch_client, local_blob_service_client, never_created, **OPTIONS)

    assert report.lines() == []
    report.raise_if_incomplete()


def test_one_failed_delete_does_not_stop_the_others(
    local_settings: SampleSettings, local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient,
    resources: CreatedResources,
) -> None:
    failure = FailRequests("DELETE", r"^/jobs/", connection_lost)
    with create_batch_client(local_settings.batch, per_call_policies=[failure]) as batch_client:
        report = clean_up_resources(batch_client, local_blob_service_client, resources, **OPTIONS)

        assert report.failed == [f"job {resources.job_ids[0]}: ServiceRequestError: injected failure: connection lost"]
        assert remaining(batch_client, local_blob_service_client, resources) == [f"job {resources.job_ids[0]}"]
    assert report.summary() == f"could not delete job {resources.job_ids[0]}: ServiceRequestError: injected failure: connection lost"
    assert report.left_behind() == [f"job {resources.job_ids[0]}"]
    assert resources.cleanup_report is report
    with pytest.raises(RuntimeError, match="cleanup failed: could not delete job "):
        report.raise_if_incomplete()
    local_batch_client.begin_delete_job(resources.job_ids[0], polling_interval=0.1).result()


class InterruptOnRequest(SansIOHTTPPolicy):
    """Sends this process a SIGINT (as Ctrl-C would) when a matching request goes out, then lets it through."""

    def __init__(self, method: str, path_prefix: str, signals: int = 1) -> None:
        super().__init__()
        self.method, self.path_prefix, self.signals, self.sent = method, path_prefix, signals, 0

    def on_request(self, request: PipelineRequest) -> None:
        if request.http_request.method == self.method and urlsplit(request.http_request.url).path.startswith(self.path_prefix):
            for _ in range(self.signals):
                self.sent += 1
                os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_while_sending_the_deletes_is_held_back_until_all_are_sent(
    local_settings: SampleSettings, local_blob_service_client: BlobServiceClient, resources: CreatedResources
) -> None:
    interrupt = InterruptOnRequest("DELETE", "/jobs/")
    with create_batch_client(local_settings.batch, per_call_policies=[interrupt]) as batch_client:
        report = clean_up_resources(batch_client, local_blob_service_client, resources, **OPTIONS)

        assert interrupt.sent == 1
        assert report.interrupted
        assert report.failed == []
        with pytest.raises(KeyboardInterrupt):
            report.raise_if_incomplete()
        # Every delete request went out despite the interrupt; Batch finishes them on its own.
        wait_for(lambda: remaining(batch_client, local_blob_service_client, resources), "every resource to be deleted",
                 WAIT.total_seconds(), poll=0.1, until=lambda left: not left)


def test_a_second_ctrl_c_stops_cleanup_at_once_and_the_report_says_what_is_left(
    local_settings: SampleSettings, local_blob_service_client: BlobServiceClient, resources: CreatedResources
) -> None:
    interrupt = InterruptOnRequest("DELETE", "/jobs/", signals=2)
    with create_batch_client(local_settings.batch, per_call_policies=[interrupt]) as batch_client:
        with pytest.raises(KeyboardInterrupt):
            clean_up_resources(batch_client, local_blob_service_client, resources, **OPTIONS)

    report = resources.cleanup_report
    assert interrupt.sent == 2
    assert report is not None and report.stopped_at_once
    # The second signal came while the job's delete request was being prepared: it never left.
    everything = [f"job {resources.job_ids[0]}", f"pool {resources.pool_ids[0]}", f"container {resources.container_names[0]}"]
    assert report.not_reached == everything
    assert report.summary() == "cleanup was stopped before deleting " + ", ".join(everything)
    assert remaining(local_batch_client_for(local_settings), local_blob_service_client, resources) == everything
    clean_up_resources(local_batch_client_for(local_settings), local_blob_service_client, resources, **OPTIONS)


def test_ctrl_c_during_the_cleanup_of_an_interrupted_run_stops_it_at_once(
    local_settings: SampleSettings, local_blob_service_client: BlobServiceClient, resources: CreatedResources
) -> None:
    """The run was stopped by Ctrl-C already: the next one, even the first during cleanup, is the "second"."""
    interrupt = InterruptOnRequest("DELETE", "/jobs/")
    with create_batch_client(local_settings.batch, per_call_policies=[interrupt]) as batch_client:
        with pytest.raises(KeyboardInterrupt):
            try:
                raise KeyboardInterrupt  # the Ctrl-C that stopped the sample's story
            finally:
                clean_up_resources(batch_client, local_blob_service_client, resources, **OPTIONS)

    assert resources.cleanup_report is not None
    assert resources.cleanup_report.not_reached == resources.names()
    clean_up_resources(local_batch_client_for(local_settings), local_blob_service_client, resources, **OPTIONS)


def test_a_kept_job_is_reported_with_its_auto_pool_and_nodes(
    local_batch_client: BatchClient, local_blob_service_client: BlobServiceClient
) -> None:
    job_id = unique_resource_name("cleanup-autopool-job")
    local_batch_client.create_job(models.BatchJobCreateOptions(
        id=job_id,
        pool_info=models.BatchPoolInfo(auto_pool_specification=models.BatchAutoPoolSpecification(
            auto_pool_id_prefix="kept", pool_lifetime_option=models.BatchPoolLifetimeOption.JOB,
            pool=models.BatchPoolSpecification(
                vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                virtual_machine_configuration=select_verified_linux_image(local_batch_client))))))
    auto_pool_id = wait_for(lambda: local_batch_client.get_job(job_id).execution_info.pool_id, "the auto-pool")
    wait_for(lambda: local_batch_client.get_pool(auto_pool_id).current_dedicated_nodes, "the auto-pool's node")
    try:
        report = clean_up_resources(local_batch_client, local_blob_service_client, CreatedResources([job_id]),
                                    keep_everything=True, **OPTIONS)
    finally:
        local_batch_client.begin_delete_job(job_id, polling_interval=0.1).result()

    assert report.lines() == [
        f"Kept job {job_id} and its auto-pool {auto_pool_id} (1 of 1 node(s) of standard_d2s_v3, active): "
        "the nodes stay, and on Azure are billed, until the job is deleted"
    ]
    assert report.left_behind() == [f"job {job_id}"]


def local_batch_client_for(settings: SampleSettings) -> BatchClient:
    return create_batch_client(settings.batch)
