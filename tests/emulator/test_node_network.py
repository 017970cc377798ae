"""Node addresses: each node has its own loopback address in the server's node subnet, unique among
live nodes, kept across restarts; programs on a node bind it and other nodes reach it."""
from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys

from azure.batch import models

from localbatch import LocalBatchServer
from localbatch.node.network import NodeNetwork, NodeSubnetError, random_node_subnet

import pytest

from .conftest import fast_timings
from .support import (REPOSITORY_ROOT, WAIT, RunningEmulator, batch_client, create_job, create_pool_and_wait, pool_options, read_task_file,
                      unique_id, wait_for, wait_for_nodes, wait_for_task)

LISTENER = """
import socket, sys
address, port = sys.argv[1], int(sys.argv[2])
server = socket.socket()
server.bind((address, port))
server.listen(1)
open("ready", "w").close()
connection, _ = server.accept()
print("received", connection.recv(100).decode())
"""

SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as connection:
    connection.sendall(b"hello from " + sys.argv[3].encode())
"""


def test_nodes_get_distinct_addresses_in_the_node_subnet(server, client):
    subnet = ipaddress.ip_network(server.network.subnet)
    first = create_pool_and_wait(client, unique_id("addr"), nodes=2)
    second = create_pool_and_wait(client, unique_id("addr"), nodes=2)
    addresses = [node.ip_address for node in first + second]
    assert len(set(addresses)) == 4
    assert all(ipaddress.ip_address(address) in subnet for address in addresses)
    # .0 is the network, .1 the public address of NAT frontends: nodes start at .2.
    assert min(ipaddress.ip_address(a) for a in addresses) >= subnet.network_address + 2
    assert server.network.public_address not in addresses


def test_a_program_on_one_node_reaches_a_server_bound_on_another_nodes_address(client):
    pool_id = unique_id("internode")
    nodes = create_pool_and_wait(client, pool_id, nodes=2, enable_inter_node_communication=True)
    listener_node, sender_node = nodes
    job_id = create_job(client, pool_id)
    port = "47123"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="listener", command_line=f"python3 -c '{LISTENER}' {listener_node.ip_address} {port}",
        affinity_info=models.BatchAffinityInfo(affinity_id=listener_node.affinity_id)))
    wait_for(lambda: read_task_file(client, job_id, "listener", "wd/ready") == "", "the listener to listen")
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="sender", command_line=f"python3 -c '{SENDER}' {listener_node.ip_address} {port} {sender_node.id}",
        affinity_info=models.BatchAffinityInfo(affinity_id=sender_node.affinity_id)))
    listener = wait_for_task(client, job_id, "listener")
    sender = wait_for_task(client, job_id, "sender")
    assert (listener.execution_info.exit_code, sender.execution_info.exit_code) == (0, 0), \
        read_task_file(client, job_id, "sender", "stderr.txt")
    assert listener.node_info.node_id == listener_node.id and sender.node_info.node_id == sender_node.id
    assert read_task_file(client, job_id, "listener").strip() == f"received hello from {sender_node.id}"


def test_an_address_is_given_out_again_only_once_its_node_is_gone(tmp_path):
    subnet = random_node_subnet()
    with LocalBatchServer(str(tmp_path / "state"), timings=fast_timings(), node_subnet=subnet) as server:
        with batch_client(server.url) as client:
            nodes = create_pool_and_wait(client, "reuse", nodes=2)
            assert sorted(node.ip_address for node in nodes) == [server.network.public_address[:-1] + "2",
                                                                   server.network.public_address[:-1] + "3"]
            lowest = min(nodes, key=lambda node: ipaddress.ip_address(node.ip_address))
            client.begin_remove_nodes("reuse", models.BatchNodeRemoveOptions(node_ids=[lowest.id]),
                                      polling_interval=0.05).result()
            client.begin_resize_pool("reuse", models.BatchPoolResizeOptions(target_dedicated_nodes=2),
                                     polling_interval=0.05).result()
            after = wait_for_nodes(client, "reuse", 2)
            assert sorted(node.ip_address for node in after) == sorted(node.ip_address for node in nodes)


def test_a_full_node_subnet_stops_allocation_with_a_resize_error(tmp_path):
    subnet = random_node_subnet().replace(".0/24", ".0/29")  # .2 to .6: five nodes
    with LocalBatchServer(str(tmp_path / "state"), timings=fast_timings(), node_subnet=subnet) as server:
        with batch_client(server.url) as client:
            create_pool_and_wait(client, "small", nodes=5)
            client.create_pool(pool_options("one-too-many", nodes=1))
            pool = wait_for(lambda: (p := client.get_pool("one-too-many")).allocation_state == "steady" and p,
                            "the pool to be steady")
            assert pool.current_dedicated_nodes == 0
            assert [error.code for error in pool.resize_errors] == ["AllocationFailed"]
            assert subnet in pool.resize_errors[0].error_values[0].value


def test_addresses_are_kept_across_a_restart(tmp_path):
    subnet = random_node_subnet()
    location = str(tmp_path / "state")
    with LocalBatchServer(location, timings=fast_timings(), node_subnet=subnet) as first:
        with batch_client(first.url) as client:
            before = {node.id: node.ip_address for node in create_pool_and_wait(client, "kept", nodes=3)}
    with LocalBatchServer(location, timings=fast_timings(), node_subnet=subnet) as second:
        with batch_client(second.url) as client:
            after = {node.id: node.ip_address for node in wait_for_nodes(client, "kept", 3)}
            assert after == before
            more = create_pool_and_wait(client, "more", nodes=1)
            assert more[0].ip_address not in before.values()


@pytest.mark.parametrize("subnet, reason", [
    ("10.0.0.0/24", "not inside 127.0.0.0/8"),
    ("127.0.0.0/30", "too small"),
    ("127.0.0.1/24", "not an IPv4 network"),
    ("nonsense", "not an IPv4 network"),
])
def test_a_bad_node_subnet_is_refused_with_the_reason(subnet, reason):
    with pytest.raises(NodeSubnetError, match=reason):
        NodeNetwork(subnet)


def test_the_cli_refuses_a_bad_node_subnet_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "localbatch", "--port", "0", "--location", str(tmp_path),
                             "--node-subnet", "10.1.0.0/24"], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            timeout=WAIT)
    assert result.returncode == 2
    assert result.stderr.strip() == "localbatch: node subnet 10.1.0.0/24 is not inside 127.0.0.0/8, the loopback network"


def test_the_cli_puts_nodes_in_the_subnet_it_is_given_and_the_environment_names_the_default(tmp_path):
    given, from_environment = random_node_subnet(), random_node_subnet()
    for arguments, subnet in ((["--node-subnet", given], given), ([], from_environment)):
        emulator = RunningEmulator(tmp_path / subnet.replace("/", "_"), *arguments,
                                   env={"LOCALBATCH_NODE_SUBNET": from_environment})
        try:
            with batch_client(emulator.url()) as client:
                (node,) = create_pool_and_wait(client, "cli", nodes=1)
                assert ipaddress.ip_address(node.ip_address) in ipaddress.ip_network(subnet)
            assert emulator.finish(signal.SIGTERM) == 0
        finally:
            emulator.kill()
