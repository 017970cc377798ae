"""The nodes' network: one loopback subnet, one address per node, and the pool's public address.

Linux routes all of 127.0.0.0/8 to the loopback interface, so any address in it can be bound
with no set-up. Each live node gets its own address from the subnet (.2, .3, ... of the
default 127.0.0.0/24), which programs on the node bind and other nodes reach, as on a virtual
network; the subnet's .1 is the "public" address where inbound NAT frontends listen.
"""
from __future__ import annotations

import ipaddress
import os
import random
from typing import Iterable, Optional

DEFAULT_NODE_SUBNET = "127.0.0.0/24"
NODE_SUBNET_ENV_VAR = "LOCALBATCH_NODE_SUBNET"
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class NodeSubnetError(ValueError):
    """The node subnet cannot be used; the message says why."""


class NodeNetwork:
    """Where nodes live: the subnet, its public address, and which node addresses and public ports
    are taken. One per server, so both stay unique among all the server's live nodes; the domain
    claims what a node holds when it is created or loaded and releases it when the node is gone."""

    def __init__(self, subnet: str = DEFAULT_NODE_SUBNET):
        try:
            network = ipaddress.ip_network(subnet, strict=True)
        except ValueError as exc:
            raise NodeSubnetError(f"node subnet {subnet!r} is not an IPv4 network such as 127.0.0.0/24: {exc}") from None
        if network.version != 4 or not network.subnet_of(_LOOPBACK):
            raise NodeSubnetError(f"node subnet {subnet} is not inside 127.0.0.0/8, the loopback network")
        if network.prefixlen > 29:
            raise NodeSubnetError(f"node subnet {subnet} is too small: use a /29 or larger")
        self.subnet = network
        self.public_address = str(network.network_address + 1)
        self._first_node = int(network.network_address) + 2
        self._end = int(network.broadcast_address)  # exclusive: the broadcast address is never given out
        self._addresses: set[str] = set()
        self._ports: set[int] = set()  # frontend ports taken on the public address

    @property
    def capacity(self) -> int:
        """How many nodes the subnet holds."""
        return self._end - self._first_node

    def contains(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.subnet
        except ValueError:
            return False

    def allocate(self) -> Optional[str]:
        """Claim the lowest free node address; None when the subnet is full."""
        for value in range(self._first_node, self._end):
            address = str(ipaddress.IPv4Address(value))
            if address not in self._addresses:
                self._addresses.add(address)
                return address
        return None

    def free_count(self) -> int:
        return self.capacity - sum(1 for address in self._addresses if self._is_node_address(address))

    def allocate_port(self, first: int, last: int) -> Optional[int]:
        """Claim the lowest free public port in first..last; None when all are taken."""
        port = next((p for p in range(first, last + 1) if p not in self._ports), None)
        if port is not None:
            self._ports.add(port)
        return port

    def claim(self, address: Optional[str] = None, ports: Iterable[int] = ()) -> None:
        """Mark what a node loaded from the state holds as taken."""
        if address:
            self._addresses.add(address)
        self._ports.update(ports)

    def release(self, address: Optional[str] = None, ports: Iterable[int] = ()) -> None:
        """A node is gone: its address and public ports are free again."""
        self._addresses.discard(address)
        self._ports.difference_update(ports)

    def _is_node_address(self, address: str) -> bool:
        try:
            return self._first_node <= int(ipaddress.IPv4Address(address)) < self._end
        except ValueError:
            return False


def node_subnet_from_environment() -> str:
    """The subnet named by LOCALBATCH_NODE_SUBNET, or the default."""
    return os.environ.get(NODE_SUBNET_ENV_VAR) or DEFAULT_NODE_SUBNET


def random_node_subnet(rng: Optional[random.Random] = None) -> str:
    """A random 127.A.B.0/24 outside 127.0.x.x, so emulators started for tests never share one."""
    rng = rng or random.SystemRandom()
    return f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.0/24"
