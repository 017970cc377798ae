"""Network security group rules of an inbound NAT pool, evaluated on a connection's source.

Rules are tried in priority order (lowest number first) and the first match decides. A NAT
pool without rules allows everything (Batch then creates one allow rule for its backend port).
When rules exist and none matches, Azure's default inbound rules apply: traffic from the
virtual network is allowed (AllowVnetInBound), anything else denied (DenyAllInBound). Here the
node subnet is the virtual network, and every other source counts as the Internet.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from .network import NodeNetwork


def allows(rules: list[dict], network: NodeNetwork, source_address: str, source_port: int) -> bool:
    """Whether the rules let a connection from `source_address`:`source_port` through."""
    for rule in sorted(rules, key=lambda r: r["priority"]):
        if _address_matches(rule["sourceAddressPrefix"], network, source_address) and \
                _port_matches(rule.get("sourcePortRanges") or ["*"], source_port):
            return rule["access"].lower() == "allow"
    return not rules or network.contains(source_address)


def _address_matches(prefix: str, network: NodeNetwork, address: str) -> bool:
    if prefix == "*":
        return True
    tag = prefix.lower()
    if tag == "virtualnetwork":
        return network.contains(address)
    if tag == "internet":
        return not network.contains(address)
    parsed = parse_address_prefix(prefix)
    if parsed is None:
        return False  # another service tag: no local source carries it
    try:
        return ipaddress.ip_address(address) in parsed
    except ValueError:
        return False


def _port_matches(ranges: list[str], port: int) -> bool:
    for entry in ranges:
        low, high = parse_port_range(entry)  # checked when the pool was created
        if low <= port <= high:
            return True
    return False


def parse_address_prefix(prefix: str) -> Optional[ipaddress.IPv4Network]:
    """An IPv4 address or subnet as a network, or None (a tag, or not an address at all)."""
    try:
        return ipaddress.ip_network(prefix, strict=False) if "/" in prefix else \
            ipaddress.ip_network(f"{ipaddress.ip_address(prefix)}/32")
    except ValueError:
        return None


def parse_port_range(entry: str) -> tuple[int, int]:
    """'*', '22' or '100-200' as (low, high); ValueError when it is none of those or out of 0-65535."""
    entry = entry.strip()
    if entry == "*":
        return 0, 65535
    low_text, dash, high_text = entry.partition("-")
    if not low_text.isdigit() or (dash and not high_text.isdigit()):
        raise ValueError(entry)
    low = int(low_text)
    high = int(high_text) if dash else low
    if not 0 <= low <= high <= 65535:
        raise ValueError(entry)
    return low, high
