"""Network configuration the way Azure answers it: no virtual network and no public IP address
resource exists locally, so naming one is the service's 400; the rest is recorded and reported."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from .support import pool_options, unique_id

SUBNET = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
          "Microsoft.Network/virtualNetworks/vnet1/subnets/subnet1")
PUBLIC_IP = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
             "Microsoft.Network/publicIPAddresses/ip1")
NO_VNET = "Either the specified VNet does not exist, or the Batch service does not have access to it"


def _details(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details or []}


def _pool_with(network: models.NetworkConfiguration) -> models.BatchPoolCreateOptions:
    return pool_options(unique_id("net"), nodes=0, network_configuration=network)


def test_a_pool_in_a_subnet_is_refused_as_the_service_refuses_a_missing_vnet(client):
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(_pool_with(models.NetworkConfiguration(subnet_id=SUBNET)))
    assert caught.value.status_code == 400 and caught.value.error.code == "InvalidPropertyValue"
    details = _details(caught.value)
    assert details["PropertyName"] == "networkConfiguration.subnetId" and details["Reason"] == NO_VNET
    assert details["PropertyValue"] == SUBNET


def test_a_job_in_a_subnet_is_refused_too(client, pool_id):
    with pytest.raises(HttpResponseError) as caught:
        client.create_job(models.BatchJobCreateOptions(
            id=unique_id("job"), pool_info=models.BatchPoolInfo(pool_id=pool_id),
            network_configuration=models.BatchJobNetworkConfiguration(subnet_id=SUBNET)))
    assert caught.value.status_code == 400 and _details(caught.value)["Reason"] == NO_VNET


def test_a_subnet_in_an_auto_pool_is_named_by_its_full_path(client):
    spec = models.BatchAutoPoolSpecification(pool_lifetime_option="job", pool=models.BatchPoolSpecification(
        vm_size="standard_d2s_v3", virtual_machine_configuration=pool_options("x").virtual_machine_configuration,
        network_configuration=models.NetworkConfiguration(subnet_id=SUBNET)))
    with pytest.raises(HttpResponseError) as caught:
        client.create_job(models.BatchJobCreateOptions(
            id=unique_id("job"), pool_info=models.BatchPoolInfo(auto_pool_specification=spec)))
    assert _details(caught.value)["PropertyName"] == "poolInfo.autoPoolSpecification.pool.networkConfiguration.subnetId"


@pytest.mark.parametrize("provision", ["nopublicipaddresses", "batchmanaged"])
def test_public_ip_settings_are_recorded_and_reported(client, provision):
    options = _pool_with(models.NetworkConfiguration(
        public_ip_address_configuration=models.BatchPublicIpAddressConfiguration(ip_address_provisioning_type=provision)))
    client.create_pool(options)
    reported = client.get_pool(options.id).network_configuration.public_ip_address_configuration
    assert reported.ip_address_provisioning_type == provision


@pytest.mark.parametrize("settings, reason", [
    (models.BatchPublicIpAddressConfiguration(ip_address_provisioning_type="usermanaged", ip_address_ids=[PUBLIC_IP]),
     "The public IP address does not exist"),
    (models.BatchPublicIpAddressConfiguration(ip_address_provisioning_type="usermanaged"), "usermanaged needs"),
    (models.BatchPublicIpAddressConfiguration(ip_address_provisioning_type="batchmanaged", ip_address_ids=[PUBLIC_IP]),
     "apply only when provision is usermanaged"),
], ids=["user-managed", "user-managed-without-addresses", "addresses-without-user-managed"])
def test_user_managed_public_ips_cannot_exist_locally(client, settings, reason):
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(_pool_with(models.NetworkConfiguration(public_ip_address_configuration=settings)))
    details = _details(caught.value)
    assert caught.value.status_code == 400
    assert details["PropertyName"] == "networkConfiguration.publicIPAddressConfiguration.ipAddressIds"
    assert reason in details["Reason"]


def test_a_pool_update_into_a_subnet_is_refused(client):
    options = pool_options(unique_id("net"), nodes=0)
    client.create_pool(options)
    with pytest.raises(HttpResponseError) as caught:
        client.update_pool(options.id, models.BatchPoolUpdateOptions(
            network_configuration=models.NetworkConfiguration(subnet_id=SUBNET)))
    assert caught.value.status_code == 400 and _details(caught.value)["Reason"] == NO_VNET
    assert client.get_pool(options.id).network_configuration is None
