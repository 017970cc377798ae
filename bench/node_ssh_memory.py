"""What one node's SSH server costs: localbatch's resident memory with N idle nodes whose SSH
servers run, against the same nodes without SSH servers, and once one SSH session per node is
open. Needs root (port 22). Prints figures; asserts nothing.

    .venv/bin/python -m bench.node_ssh_memory [--nodes 40]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import asyncssh
from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential

from common.local import start_localbatch
from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from localbatch.node.credentials import new_host_key
from localbatch.node.network import NODE_SUBNET_ENV_VAR, NodeNetwork, random_node_subnet
from localbatch.node.ssh import NodeSshServer, NodeSshSettings
from tests.waiting import wait_for


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pool_options(pool_id: str, nodes: int, ssh: bool) -> models.BatchPoolCreateOptions:
    network = None
    if ssh:
        network = models.NetworkConfiguration(endpoint_configuration=models.BatchPoolEndpointConfiguration(
            inbound_nat_pools=[models.BatchInboundNatPool(
                name="ssh", protocol="tcp", backend_port=22, frontend_port_range_start=40000,
                frontend_port_range_end=40999)]))
    return models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=nodes, network_configuration=network,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                         sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04"))


def measure_emulator(nodes: int) -> tuple[float, float, float]:
    """localbatch's RSS: empty, with `nodes` idle nodes (SSH servers and frontends running), and
    with one SSH session open per node."""
    environment = {**os.environ, NODE_SUBNET_ENV_VAR: random_node_subnet()}
    with tempfile.TemporaryDirectory() as location:
        with start_localbatch(Path(location) / "state", environment=environment) as emulator:
            pid = emulator.process.pid
            with BatchClient(emulator.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                   WELL_KNOWN_ACCOUNT_KEY)) as client:
                empty = rss_mib(pid)
                client.create_pool(pool_options("p", nodes, ssh=True))
                listed = wait_for(lambda: (n := list(client.list_nodes("p"))) and len(n) == nodes and
                                  all(x.state == "idle" for x in n) and n, "idle nodes", 120)
                booted = rss_mib(pid)
                key = asyncssh.generate_private_key("ssh-ed25519")
                for node in listed:
                    client.create_node_user("p", node.id, models.BatchNodeUserCreateOptions(
                        name="u", ssh_public_key=key.export_public_key().decode()))
                settings = [client.get_node_remote_login_settings("p", n.id) for n in listed]
                with_sessions = asyncio.run(_open_sessions(settings, key, pid))
                return empty, booted, with_sessions


def measure_servers_alone(count: int) -> float:
    """KiB of RSS one more NodeSshServer costs, started in this process on its own address."""
    async def run() -> float:
        network = NodeNetwork(random_node_subnet())
        servers = [NodeSshServer(NodeSshSettings(network.allocate(), new_host_key(), lambda name: None, dict, str,
                                                 network)) for _ in range(count)]
        await servers[0].start()  # the first one pays for imports and caches
        before = rss_mib(os.getpid())
        for server in servers[1:]:
            await server.start()
        after = rss_mib(os.getpid())
        for server in servers:
            await server.stop()
        return (after - before) / (count - 1) * 1024
    return asyncio.run(run())


async def _open_sessions(settings, key, pid: int) -> float:
    connections = [await asyncssh.connect(s.remote_login_ip_address, s.remote_login_port, username="u",
                                          client_keys=[key], known_hosts=None) for s in settings]
    processes = [await connection.create_process("sleep 60") for connection in connections]
    await asyncio.sleep(0.5)
    figure = rss_mib(pid)
    for process in processes:
        process.terminate()
    for connection in connections:
        connection.close()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=40)
    nodes = parser.parse_args().nodes
    if os.geteuid() != 0:
        raise SystemExit("needs root: node SSH servers listen on port 22")
    per_server = measure_servers_alone(nodes)
    empty, booted, with_sessions = measure_emulator(nodes)
    print(f"one node SSH server (listening, host key loaded): {per_server:.0f} KiB of RSS")
    print(f"localbatch: {empty:.1f} MiB empty, {booted:.1f} MiB with {nodes} idle nodes "
          f"({(booted - empty) / nodes * 1024:.0f} KiB per node: record, SSH server, NAT frontend), "
          f"{with_sessions:.1f} MiB with one SSH session per node "
          f"({(with_sessions - booted) / nodes * 1024:.0f} KiB per session; its shell is a process of its own)")


if __name__ == "__main__":
    main()
