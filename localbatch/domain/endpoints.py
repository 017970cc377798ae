"""A pool's endpoint configuration: the checks the service makes on its inbound NAT pools, the
frontend ports each node gets, and where remote login lands.

Since api-version 2024-07-01 Batch maps no SSH port by default: a pool that wants SSH declares
an inbound NAT pool with backend port 22. Each node then gets one frontend port from each NAT
pool's range (the lowest one free), reported in the node's
`endpointConfiguration.inboundEndpoints` as `<natpool>.<offset>`, and remote login settings
name the pool's public address and the node's SSH frontend port.
"""
from __future__ import annotations

import re
from typing import Optional

from ..errors import BatchServiceError, invalid_property
from ..node.network import NodeNetwork
from ..node.nsg import parse_address_prefix, parse_port_range
from .entities import Node, Pool

SSH_PORT = 22
MAX_NAT_POOLS = 5
MAX_NSG_RULES = 25
MIN_FRONTEND_PORTS = 40
RESERVED_FRONTEND_PORTS = range(50000, 55001)
RESERVED_BACKEND_PORTS = (29876, 29877)
PRIORITIES = range(150, 4097)
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,75}[A-Za-z0-9_])?$")
_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9.]*$")
_BASE = "networkConfiguration.endpointConfiguration.inboundNATPools"


def nat_pools(pool_data: dict) -> list[dict]:
    return (((pool_data.get("networkConfiguration") or {}).get("endpointConfiguration") or {})
            .get("inboundNATPools") or [])


def ssh_nat_pool(pool_data: dict) -> Optional[dict]:
    """The inbound NAT pool that publishes the nodes' SSH port, if the pool has one."""
    return next((nat for nat in nat_pools(pool_data) if nat["backendPort"] == SSH_PORT), None)


def check_endpoint_configuration(network_configuration: Optional[dict]) -> None:
    """Refuse an endpoint configuration the service refuses, naming the property and why."""
    endpoint_configuration = (network_configuration or {}).get("endpointConfiguration")
    if not endpoint_configuration:
        return
    pools = endpoint_configuration.get("inboundNATPools") or []
    if len(pools) > MAX_NAT_POOLS:
        raise invalid_property(_BASE, len(pools), f"A pool can have at most {MAX_NAT_POOLS} inbound NAT pools.")
    names: set[str] = set()
    backend_ports: set[int] = set()
    ranges: list[tuple[int, int, int]] = []
    priorities: set[int] = set()
    rule_count = 0
    for index, nat in enumerate(pools):
        path = f"{_BASE}[{index}]"
        if not isinstance(nat, dict):
            raise invalid_property(path, "null", "Expected an inbound NAT pool.")
        name = nat["name"]
        if not _NAME.match(name):
            raise invalid_property(f"{path}.name", name, "The name can contain letters, numbers, underscores, periods "
                                   "and hyphens, must start with a letter or number, end with a letter, number or "
                                   "underscore, and have at most 77 characters.")
        if name.lower() in names:
            raise invalid_property(f"{path}.name", name, "The name must be unique within the pool.")
        names.add(name.lower())
        if nat["protocol"].lower() not in ("tcp", "udp"):
            raise invalid_property(f"{path}.protocol", nat["protocol"], "The protocol must be tcp or udp.")
        if nat["protocol"].lower() == "udp":
            raise BatchServiceError("FeatureNotEmulated", values={
                "Feature": f"{path}.protocol", "Reason": "localbatch forwards tcp inbound NAT pools only; see "
                                                         "LIMITATIONS in README.md."})
        backend = nat["backendPort"]
        if not 1 <= backend <= 65535 or backend in RESERVED_BACKEND_PORTS:
            raise invalid_property(f"{path}.backendPort", backend, "The backend port must be between 1 and 65535, "
                                   "except 29876 and 29877, which are reserved.")
        if backend in backend_ports:
            raise invalid_property(f"{path}.backendPort", backend, "The backend port must be unique within the pool.")
        backend_ports.add(backend)
        start, end = nat["frontendPortRangeStart"], nat["frontendPortRangeEnd"]
        for key, port in (("frontendPortRangeStart", start), ("frontendPortRangeEnd", end)):
            if not 1 <= port <= 65534:
                raise invalid_property(f"{path}.{key}", port, "Frontend ports must be between 1 and 65534.")
        if start > end:
            raise invalid_property(f"{path}.frontendPortRangeEnd", end,
                                   "The end of the frontend port range must not be below its start.")
        if start <= RESERVED_FRONTEND_PORTS[-1] and end >= RESERVED_FRONTEND_PORTS[0]:
            raise invalid_property(f"{path}.frontendPortRangeStart", start, "Frontend ports 50000 to 55000 are "
                                   "reserved by the Batch service.")
        if end - start + 1 < MIN_FRONTEND_PORTS:
            raise invalid_property(f"{path}.frontendPortRangeEnd", end,
                                   f"A frontend port range must contain at least {MIN_FRONTEND_PORTS} ports.")
        for other_start, other_end, other_index in ranges:
            if start <= other_end and end >= other_start:
                raise invalid_property(f"{path}.frontendPortRangeStart", start, "Frontend port ranges within a pool "
                                       f"must not overlap (this one overlaps inboundNATPools[{other_index}]).")
        ranges.append((start, end, index))
        rules = nat.get("networkSecurityGroupRules") or []
        rule_count += len(rules)
        if rule_count > MAX_NSG_RULES:
            raise invalid_property(f"{path}.networkSecurityGroupRules", rule_count,
                                   f"A pool can have at most {MAX_NSG_RULES} network security group rules.")
        for rule_index, rule in enumerate(rules):
            _check_rule(f"{path}.networkSecurityGroupRules[{rule_index}]", rule, priorities)


def _check_rule(path: str, rule: dict, priorities: set[int]) -> None:
    if not isinstance(rule, dict):
        raise invalid_property(path, "null", "Expected a network security group rule.")
    priority = rule["priority"]
    if priority not in PRIORITIES:
        raise invalid_property(f"{path}.priority", priority, "Priorities must be between 150 and 4096.")
    if priority in priorities:
        raise invalid_property(f"{path}.priority", priority, "Priorities must be unique within the pool.")
    priorities.add(priority)
    if rule["access"].lower() not in ("allow", "deny"):
        raise invalid_property(f"{path}.access", rule["access"], "The access must be allow or deny.")
    prefix = rule["sourceAddressPrefix"]
    if prefix != "*" and parse_address_prefix(prefix) is None and not _TAG.match(prefix):
        raise invalid_property(f"{path}.sourceAddressPrefix", prefix, "Expected a single IP address, an IP subnet "
                               "(such as 192.168.1.0/24), a default tag, or * for all addresses.")
    seen: list[tuple[int, int]] = []
    for entry in rule.get("sourcePortRanges") or ["*"]:
        try:
            if not isinstance(entry, str):
                raise ValueError(entry)
            low, high = parse_port_range(entry)
        except ValueError:
            raise invalid_property(f"{path}.sourcePortRanges", entry, "Expected *, a port (such as 22) or a port "
                                   "range (such as 100-200), within 0 to 65535.") from None
        if any(low <= other_high and high >= other_low for other_low, other_high in seen):
            raise invalid_property(f"{path}.sourcePortRanges", entry, "Source port ranges must not overlap.")
        seen.append((low, high))


def assign_inbound_endpoints(pool: Pool, node: Node, network: NodeNetwork) -> None:
    """Give a new node one frontend port of each NAT pool (the lowest free one in its range), and
    record them as the node's inbound endpoints. Every pool shares the one public address, so a
    port another pool's node holds is skipped (on Azure each pool has a public address of its own)."""
    endpoints = []
    for nat in nat_pools(pool.data):
        port = network.allocate_port(nat["frontendPortRangeStart"], nat["frontendPortRangeEnd"])
        if port is None:
            continue  # the range is used up: this node is not reachable through that NAT pool
        endpoints.append({"name": f"{nat['name']}.{port - nat['frontendPortRangeStart']}",
                          "protocol": nat["protocol"].lower(), "publicIPAddress": network.public_address,
                          "publicFQDN": network.public_address, "frontendPort": port,
                          "backendPort": nat["backendPort"]})
    node.data["endpointConfiguration"] = {"inboundEndpoints": endpoints}


def frontend_ports(node: Node) -> list[int]:
    return [endpoint["frontendPort"] for endpoint in node.data.get("endpointConfiguration", {})
            .get("inboundEndpoints", [])]


def remote_login_settings(node: Node) -> dict:
    """Where SSH to the node lands: the public address and the node's frontend port of the NAT pool
    with backend port 22; without one, the node's own address and port 22 (reachable only from
    inside the node network, as a pool without public SSH access is on Azure)."""
    for endpoint in node.data.get("endpointConfiguration", {}).get("inboundEndpoints", []):
        if endpoint["backendPort"] == SSH_PORT:
            return {"remoteLoginIPAddress": endpoint["publicIPAddress"], "remoteLoginPort": endpoint["frontendPort"]}
    return {"remoteLoginIPAddress": node.data["ipAddress"], "remoteLoginPort": SSH_PORT}
