"""The parts of a pool's or job's networkConfiguration that name Azure network resources.

Locally there is no virtual network and no public IP address resource, so a `subnetId` (of a
pool or of a job) is refused with the error the service gives for a virtual network that does
not exist or that Batch cannot reach, and so are user-managed public IP addresses. The other
publicIPAddressConfiguration choices (batchmanaged, nopublicipaddresses) are recorded and reported
back as given. Inbound endpoints are another module's (endpoints).
"""
from __future__ import annotations

from typing import Optional

from ..errors import invalid_property

NO_VNET_REASON = "Either the specified VNet does not exist, or the Batch service does not have access to it"


def check_subnet(prefix: str, network_configuration: Optional[dict]) -> None:
    subnet = (network_configuration or {}).get("subnetId")
    if subnet is not None:
        raise invalid_property(f"{prefix}.subnetId", subnet, NO_VNET_REASON)


def check_public_ip_addresses(network_configuration: Optional[dict]) -> None:
    settings = (network_configuration or {}).get("publicIPAddressConfiguration") or {}
    name = "networkConfiguration.publicIPAddressConfiguration"
    provision = (settings.get("provision") or "batchmanaged").lower()
    addresses = settings.get("ipAddressIds") or []
    if addresses and provision != "usermanaged":
        raise invalid_property(f"{name}.ipAddressIds", addresses[0], "ipAddressIds apply only when provision is usermanaged.")
    if provision == "usermanaged":
        if not addresses:
            raise invalid_property(f"{name}.ipAddressIds", "", "usermanaged needs the public IP addresses to use.")
        raise invalid_property(f"{name}.ipAddressIds", addresses[0],
                               "The public IP address does not exist: localbatch has no public IP address resources.")


def check_pool_network(network_configuration: Optional[dict]) -> None:
    check_subnet("networkConfiguration", network_configuration)
    check_public_ip_addresses(network_configuration)
