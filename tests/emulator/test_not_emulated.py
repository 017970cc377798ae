"""What localbatch does not emulate says so clearly (501 FeatureNotEmulated naming it) instead of
failing obscurely; account-wide reads with nothing to emulate answer empty."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .support import LRO_POLLING, create_job, pool_options, unique_id


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details}


@pytest.mark.parametrize("call, operation", [
    (lambda c, p, n: c.begin_deallocate_node(p, n, models._models.BatchNodeDeallocateOptions(
        node_deallocate_option="requeue"), polling_interval=LRO_POLLING), "deallocate_node"),
], ids=["deallocate"])
def test_operations_not_emulated_answer_501_naming_the_operation(client, pool_id, call, operation):
    node_id = next(iter(client.list_nodes(pool_id))).id
    with pytest.raises(HttpResponseError) as caught:
        call(client, pool_id, node_id)
    assert caught.value.status_code == 501
    assert caught.value.error.code == "FeatureNotEmulated"
    assert _details(caught.value)["Operation"] == operation


@pytest.mark.parametrize("extra, feature", [
    ({"virtual_machine_configuration": models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        container_configuration=models.BatchContainerConfiguration(
            type="dockerCompatible", container_registries=[models.ContainerRegistryReference(
                registry_server="contoso.azurecr.io", username="contoso", password="not-a-real-password")]))},
     "virtualMachineConfiguration.containerConfiguration.containerRegistries"),
], ids=["container-registries"])
def test_pool_features_not_emulated_are_named(client, extra, feature):
    options = pool_options(unique_id("pool"), nodes=0)
    for name, value in extra.items():
        setattr(options, name, value)
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(options)
    assert caught.value.status_code == 501
    assert _details(caught.value)["Feature"] == feature


@pytest.mark.parametrize("extra, feature", [
    ({"application_package_references": [models.BatchApplicationPackageReference(application_id="app")]},
     "applicationPackageReferences"),
], ids=["application-packages"])
def test_task_features_not_emulated_are_named(client, pool_id, extra, feature):
    job_id = create_job(client, pool_id)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true", **extra))
    assert caught.value.status_code == 501
    assert _details(caught.value)["Feature"] == feature


def test_job_features_not_emulated_are_named(client, pool_id):
    job_id = unique_id("job")
    with pytest.raises(HttpResponseError) as caught:
        client.create_job(models.BatchJobCreateOptions(
            id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
            job_manager_task=models.BatchJobManagerTask(
                id="manager", command_line="/bin/true",
                application_package_references=[models.BatchApplicationPackageReference(application_id="app")])))
    assert caught.value.status_code == 501
    assert _details(caught.value)["Feature"] == "jobManagerTask.applicationPackageReferences"
    with pytest.raises(ResourceNotFoundError):  # nothing of the job was created
        client.get_job(job_id)


def test_account_reads_with_nothing_to_emulate_are_empty(client, pool_id):
    assert list(client.list_applications()) == []
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_application("anything")
    assert caught.value.error.code == "ApplicationNotFound"
    assert list(client.list_pool_usage_metrics()) == []
    job_id = create_job(client, pool_id)
    assert list(client.list_job_preparation_and_release_task_status(job_id)) == []
    with pytest.raises(ResourceNotFoundError):
        list(client.list_job_preparation_and_release_task_status("no-such-job"))


def test_the_container_image_is_in_the_catalog(client):
    images = {(i.image_reference.publisher, i.image_reference.offer): i for i in client.list_supported_images()}
    assert "DockerCompatible" in (images[("microsoft-dsvm", "ubuntu-hpc")].capabilities or [])
