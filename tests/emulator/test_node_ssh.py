"""Nodes you can reach: an SSH server per node on <node address>:22, published through the pool's
inbound NAT pool on the public address (the subnet's .1) with its network security group rules,
and the node users created through the API as the only accounts. Real clients: asyncssh,
paramiko and OpenSSH."""
from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from localbatch import LocalBatchServer
from localbatch.node.network import random_node_subnet

from .conftest import fast_timings
from .support import (LRO_POLLING, WAIT, RawClient, batch_client, create_job, create_pool_and_wait, read_task_file,
                      reboot_options,
                      run_task, unique_id, wait_for, wait_for_task)

FRONTEND_START = 40000
ALLOWED_SOURCE = "127.0.0.1"      # where a client on this machine connects from, by default
DENIED_SOURCE = "127.0.0.99"      # a source the pool's NSG rules deny
ADMIN_PASSWORD = "Adm1n-pass!"
USER_PASSWORD = "Us3r-pass!"


def ssh_nat_pool(name: str = "ssh", start: int = FRONTEND_START, rules: Any = "default") -> models.BatchInboundNatPool:
    if rules == "default":
        rules = [models.NetworkSecurityGroupRule(priority=150, access="allow", source_address_prefix=ALLOWED_SOURCE),
                 models.NetworkSecurityGroupRule(priority=160, access="deny", source_address_prefix="*")]
    return models.BatchInboundNatPool(name=name, protocol="tcp", backend_port=22, frontend_port_range_start=start,
                                      frontend_port_range_end=start + 99, network_security_group_rules=rules)


def network_configuration(*nat_pools: models.BatchInboundNatPool) -> models.NetworkConfiguration:
    return models.NetworkConfiguration(endpoint_configuration=models.BatchPoolEndpointConfiguration(
        inbound_nat_pools=list(nat_pools)))


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    location = tmp_path_factory.mktemp("localbatch-ssh")
    with LocalBatchServer(str(location), timings=fast_timings(), node_subnet=random_node_subnet()) as running:
        reason = running.service.context.services.ssh_unavailable
        if reason:
            pytest.skip(reason)
        yield running


@pytest.fixture(scope="module")
def client(ssh_server):
    with batch_client(ssh_server.url) as batch:
        yield batch


@pytest.fixture(scope="module")
def admin_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
def pool(client, admin_key):
    """Two nodes behind an SSH NAT pool; on each, an admin with a key and a user with a password."""
    pool_id = unique_id("ssh")
    nodes = create_pool_and_wait(client, pool_id, nodes=2, network_configuration=network_configuration(ssh_nat_pool()))
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    for node in nodes:
        client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
            name="alice", is_admin=True, expiry_time=expiry,
            ssh_public_key=admin_key.export_public_key().decode().strip(), password=ADMIN_PASSWORD))
        client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
            name="bob", is_admin=False, expiry_time=expiry, password=USER_PASSWORD))
    nodes = sorted(client.list_nodes(pool_id), key=lambda n: n.endpoint_configuration.inbound_endpoints[0].frontend_port)
    return pool_id, nodes


def login_address(client, pool_id: str, node: models.BatchNode) -> tuple[str, int]:
    settings = client.get_node_remote_login_settings(pool_id, node.id)
    return settings.remote_login_ip_address, settings.remote_login_port


def run(coroutine):
    return asyncio.run(coroutine)


async def ssh_exec(host: str, port: int, command: str, **options: Any) -> asyncssh.SSHCompletedProcess:
    options.setdefault("known_hosts", None)
    async with asyncssh.connect(host, port, connect_timeout=WAIT, **options) as connection:
        return await connection.run(command, check=False, timeout=WAIT)


def host_key_printed_by_a_task(client, pool_id: str, node: models.BatchNode) -> str:
    """`ssh-keyscan -t ed25519 <node address>`, run as a task on the node itself."""
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, f"ssh-keyscan -t ed25519 {node.ip_address}",
                    affinity_info=models.BatchAffinityInfo(affinity_id=node.affinity_id))
    assert task.execution_info.exit_code == 0, read_task_file(client, job_id, task.id, "stderr.txt")
    assert task.node_info.node_id == node.id
    lines = [line for line in read_task_file(client, job_id, task.id).splitlines() if not line.startswith("#")]
    (line,) = lines
    address, key_type, key = line.split()
    assert (address, key_type) == (node.ip_address, "ssh-ed25519")
    return f"{key_type} {key}"


# ---- shapes ----------------------------------------------------------------------------------------
def test_inbound_endpoints_and_remote_login_settings_name_the_frontend(ssh_server, client, pool):
    pool_id, nodes = pool
    public = ssh_server.network.public_address
    raw = RawClient(ssh_server.url)
    for offset, node in enumerate(nodes):
        body = raw.request("GET", f"/pools/{pool_id}/nodes/{node.id}").json()
        assert body["endpointConfiguration"] == {"inboundEndpoints": [{
            "name": f"ssh.{offset}", "protocol": "tcp", "publicIPAddress": public, "publicFQDN": public,
            "frontendPort": FRONTEND_START + offset, "backendPort": 22}]}
        settings = raw.request("GET", f"/pools/{pool_id}/nodes/{node.id}/remoteloginsettings").json()
        assert {k: v for k, v in settings.items() if k != "odata.metadata"} == {
            "remoteLoginIPAddress": public, "remoteLoginPort": FRONTEND_START + offset}
        assert login_address(client, pool_id, node) == (public, FRONTEND_START + offset)


# ---- logging in ------------------------------------------------------------------------------------
def test_key_login_runs_commands_in_the_node_environment(ssh_server, client, pool, admin_key):
    pool_id, nodes = pool
    node = nodes[1]
    host, port = login_address(client, pool_id, node)
    result = run(ssh_exec(host, port, 'pwd; echo "$AZ_BATCH_POOL_ID $AZ_BATCH_NODE_ID"; echo "$SSH_CONNECTION"; '
                                      'test -d "$AZ_BATCH_NODE_SHARED_DIR" && echo shared-dir-exists',
                          username="alice", client_keys=[admin_key]))
    assert result.exit_status == 0, result.stderr
    home, ids, connection, shared = result.stdout.splitlines()
    assert Path(home).name == "alice" and Path(home).is_dir()
    assert ids == f"{pool_id} {node.id}"
    assert connection.split()[2:] == [node.ip_address, "22"]  # the node's own sshd, as on Azure
    assert shared == "shared-dir-exists"


def test_password_login_with_paramiko_and_sudo_for_admins_only(client, pool):
    pool_id, nodes = pool
    host, port = login_address(client, pool_id, nodes[0])

    def run_as(user: str, password: str, command: str) -> tuple[int, str, str]:
        with paramiko.SSHClient() as ssh:
            ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            ssh.connect(host, port, username=user, password=password, look_for_keys=False, allow_agent=False,
                        timeout=WAIT)
            _, stdout, stderr = ssh.exec_command(command, timeout=WAIT)
            return stdout.channel.recv_exit_status(), stdout.read().decode(), stderr.read().decode()

    assert run_as("alice", ADMIN_PASSWORD, "sudo -n echo as-admin") == (0, "as-admin\n", "")
    code, out, err = run_as("bob", USER_PASSWORD, "echo $USER; sudo -n echo as-user")
    assert (code, out) == (1, "bob\n")
    assert "bob is not in the sudoers file" in err


@pytest.mark.parametrize("case", ["wrong key", "wrong password", "unknown user"])
def test_wrong_credentials_are_refused(client, pool, case):
    pool_id, nodes = pool
    host, port = login_address(client, pool_id, nodes[0])
    options = {"wrong key": dict(username="alice", client_keys=[asyncssh.generate_private_key("ssh-ed25519")]),
               "wrong password": dict(username="bob", password="not-" + USER_PASSWORD, client_keys=None),
               "unknown user": dict(username="mallory", password=USER_PASSWORD, client_keys=None)}[case]
    with pytest.raises(asyncssh.PermissionDenied):
        run(ssh_exec(host, port, "true", **options))


def test_an_expired_user_is_refused(client, pool, admin_key):
    pool_id, nodes = pool
    node = nodes[0]
    client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
        name="expired", is_admin=True, ssh_public_key=admin_key.export_public_key().decode(),
        expiry_time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)))
    host, port = login_address(client, pool_id, node)
    with pytest.raises(asyncssh.PermissionDenied):
        run(ssh_exec(host, port, "true", username="expired", client_keys=[admin_key]))


def test_a_deleted_user_is_refused_and_a_replaced_key_takes_effect(client, pool, admin_key):
    pool_id, nodes = pool
    node = nodes[0]
    host, port = login_address(client, pool_id, node)
    public_key = admin_key.export_public_key().decode()
    client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(name="carol", ssh_public_key=public_key))
    assert run(ssh_exec(host, port, "echo in", username="carol", client_keys=[admin_key])).stdout == "in\n"
    new_key = asyncssh.generate_private_key("ssh-ed25519")
    client.replace_node_user(pool_id, node.id, "carol", models.BatchNodeUserReplaceOptions(
        ssh_public_key=new_key.export_public_key().decode()))
    with pytest.raises(asyncssh.PermissionDenied):
        run(ssh_exec(host, port, "true", username="carol", client_keys=[admin_key]))
    assert run(ssh_exec(host, port, "echo in", username="carol", client_keys=[new_key])).stdout == "in\n"
    client.delete_node_user(pool_id, node.id, "carol")
    with pytest.raises(asyncssh.PermissionDenied):
        run(ssh_exec(host, port, "true", username="carol", client_keys=[new_key]))


def test_a_source_address_denied_by_an_nsg_rule_is_refused(client, pool, admin_key):
    pool_id, nodes = pool
    host, port = login_address(client, pool_id, nodes[0])
    with pytest.raises((ConnectionError, asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError)):
        run(ssh_exec(host, port, "true", username="alice", client_keys=[admin_key], local_addr=(DENIED_SOURCE, 0)))
    # the same client from the allowed source gets in
    assert run(ssh_exec(host, port, "echo ok", username="alice", client_keys=[admin_key],
                        local_addr=(ALLOWED_SOURCE, 0))).stdout == "ok\n"


# ---- host keys -------------------------------------------------------------------------------------
def test_the_host_key_a_task_prints_is_the_one_presented_and_openssh_pins_it(client, pool, admin_key, tmp_path):
    pool_id, nodes = pool
    node = nodes[0]
    printed = host_key_printed_by_a_task(client, pool_id, node)
    host, port = login_address(client, pool_id, node)

    async def presented() -> str:
        async with asyncssh.connect(host, port, username="alice", client_keys=[admin_key], known_hosts=None,
                                    connect_timeout=WAIT) as connection:
            return connection.get_server_host_key().export_public_key().decode().strip()
    assert run(presented()) == printed
    other_node_key = host_key_printed_by_a_task(client, pool_id, nodes[1])
    assert other_node_key != printed, "every node has its own host key"

    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH's ssh client is not installed (.ci/run installs openssh-client)")
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(admin_key.export_private_key())
    key_file.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"

    def openssh(pinned_key: str) -> subprocess.CompletedProcess:
        known_hosts.write_text(f"[{host}]:{port} {pinned_key}\n")
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(key_file), "-p", str(port), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
             "-o", "IdentitiesOnly=yes", f"alice@{host}", "echo pinned-ok"],
            capture_output=True, text=True, timeout=WAIT)
    result = openssh(printed)
    assert (result.returncode, result.stdout) == (0, "pinned-ok\n"), result.stderr
    refused = openssh(other_node_key)
    assert refused.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in refused.stderr

    # scp in its classic mode runs the node's scp through an exec session (SFTP is not offered)
    known_hosts.write_text(f"[{host}]:{port} {printed}\n")
    source = tmp_path / "payload.txt"
    source.write_text("copied over ssh\n")
    copied = subprocess.run(
        ["scp", "-O", "-F", "/dev/null", "-i", str(key_file), "-P", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}", str(source),
         f"alice@{host}:payload.txt"], capture_output=True, text=True, timeout=WAIT)
    assert copied.returncode == 0, copied.stderr
    assert run(ssh_exec(host, port, "cat ~/payload.txt", username="alice",
                        client_keys=[admin_key])).stdout == "copied over ssh\n"


# ---- tunnels ---------------------------------------------------------------------------------------
ECHO_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
open("ready", "w").close()
connection, peer = server.accept()
connection.sendall(b"node-says:" + connection.recv(100) + b" from " + peer[0].encode())
"""


def test_direct_tcpip_to_localhost_reaches_a_server_bound_on_the_node_address(client, pool, admin_key):
    pool_id, nodes = pool
    node = nodes[1]
    job_id = create_job(client, pool_id)
    port = 47777
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="echo", command_line=f"python3 -c '{ECHO_SERVER}' {node.ip_address} {port}",
        affinity_info=models.BatchAffinityInfo(affinity_id=node.affinity_id)))
    wait_for(lambda: read_task_file(client, job_id, "echo", "wd/ready") == "", "the echo server to listen")
    host, ssh_port = login_address(client, pool_id, node)

    async def through_tunnel() -> bytes:
        async with asyncssh.connect(host, ssh_port, username="alice", client_keys=[admin_key], known_hosts=None,
                                    connect_timeout=WAIT) as connection:
            with pytest.raises(asyncssh.ChannelOpenError):  # outside the node network
                await connection.open_connection("192.0.2.1", port)
            other_reader, other_writer = await connection.open_connection(nodes[0].ip_address, 22)
            assert (await asyncio.wait_for(other_reader.readline(), WAIT)).startswith(b"SSH-2.0-")  # another node
            other_writer.close()
            reader, writer = await connection.open_connection("localhost", port)
            writer.write(b"hello")
            data = await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            return data
    assert run(through_tunnel()) == f"node-says:hello from {node.ip_address}".encode()
    assert wait_for_task(client, job_id, "echo").execution_info.exit_code == 0


# ---- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("nat_pools, property_name", [
    ([ssh_nat_pool(start=50010)], "inboundNATPools[0].frontendPortRangeStart"),
    ([ssh_nat_pool(start=49990)], "inboundNATPools[0].frontendPortRangeStart"),
    ([models.BatchInboundNatPool(name="ssh", protocol="tcp", backend_port=22, frontend_port_range_start=1000,
                                 frontend_port_range_end=1038)], "inboundNATPools[0].frontendPortRangeEnd"),
    ([ssh_nat_pool(name="-ssh")], "inboundNATPools[0].name"),
    ([ssh_nat_pool(name="ssh."), ], "inboundNATPools[0].name"),
    ([ssh_nat_pool(name="a" * 78)], "inboundNATPools[0].name"),
    ([ssh_nat_pool(), ssh_nat_pool(name="SSH", start=41000)], "inboundNATPools[1].name"),
    ([ssh_nat_pool(), ssh_nat_pool(name="other", start=40050)], "inboundNATPools[1].backendPort"),
    ([models.BatchInboundNatPool(name="web", protocol="tcp", backend_port=29876, frontend_port_range_start=1000,
                                 frontend_port_range_end=1100)], "inboundNATPools[0].backendPort"),
    ([ssh_nat_pool(rules=[models.NetworkSecurityGroupRule(priority=100, access="allow", source_address_prefix="*")])],
     "inboundNATPools[0].networkSecurityGroupRules[0].priority"),
    ([ssh_nat_pool(rules=[models.NetworkSecurityGroupRule(priority=150, access="allow", source_address_prefix="*"),
                          models.NetworkSecurityGroupRule(priority=150, access="deny", source_address_prefix="*")])],
     "inboundNATPools[0].networkSecurityGroupRules[1].priority"),
    ([ssh_nat_pool(rules=[models.NetworkSecurityGroupRule(priority=150, access="allow",
                                                          source_address_prefix="10.0.0.0/33")])],
     "inboundNATPools[0].networkSecurityGroupRules[0].sourceAddressPrefix"),
    ([ssh_nat_pool(rules=[models.NetworkSecurityGroupRule(priority=150, access="allow", source_address_prefix="*",
                                                          source_port_ranges=["100-200", "150"])])],
     "inboundNATPools[0].networkSecurityGroupRules[0].sourcePortRanges"),
    ([ssh_nat_pool(rules=[models.NetworkSecurityGroupRule(priority=150 + i, access="allow",
                                                          source_address_prefix="*") for i in range(26)])],
     "inboundNATPools[0].networkSecurityGroupRules"),
    ([ssh_nat_pool(name=f"p{i}", start=1000 + 100 * i) for i in range(6)], "inboundNATPools"),
], ids=["reserved-start", "reaches-reserved", "fewer-than-40", "name-start", "name-end", "name-too-long",
        "name-twice", "backend-twice", "backend-reserved", "priority-low", "priority-twice", "bad-prefix",
        "overlapping-ports", "too-many-rules", "too-many-nat-pools"])
def test_bad_endpoint_configurations_are_refused_naming_the_property(client, nat_pools, property_name):
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(models.BatchPoolCreateOptions(
            id=unique_id("bad"), vm_size="standard_d2s_v3", target_dedicated_nodes=0,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(
                    publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
                node_agent_sku_id="batch.node.ubuntu 22.04"),
            network_configuration=network_configuration(*nat_pools)))
    assert caught.value.status_code == 400 and caught.value.error.code == "InvalidPropertyValue"
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == f"networkConfiguration.endpointConfiguration.{property_name}"
    assert details["Reason"]


@pytest.mark.parametrize("nat_pool", [
    None,
    {"name": "ssh", "protocol": "tcp", "backendPort": 22, "frontendPortRangeStart": 1000,
     "frontendPortRangeEnd": 1100, "networkSecurityGroupRules": [None]},
    {"name": "ssh", "protocol": "tcp", "backendPort": 22, "frontendPortRangeStart": 1000,
     "frontendPortRangeEnd": 1100, "networkSecurityGroupRules": [
         {"priority": 150, "access": "allow", "sourceAddressPrefix": "*", "sourcePortRanges": [None]}]},
    {"name": "ssh", "protocol": "tcp", "frontendPortRangeStart": 1000, "frontendPortRangeEnd": 1100},
    {"name": "ssh", "protocol": "tcp", "backendPort": "22", "frontendPortRangeStart": 1000,
     "frontendPortRangeEnd": 1100},
], ids=["null-nat-pool", "null-rule", "null-port-range", "no-backend-port", "port-as-text"])
def test_malformed_endpoint_configurations_get_a_400(ssh_server, nat_pool):
    raw = RawClient(ssh_server.url)
    body = {"id": unique_id("malformed"), "vmSize": "standard_d2s_v3",
            "virtualMachineConfiguration": {"imageReference": {
                "publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
                "nodeAgentSKUId": "batch.node.ubuntu 22.04"},
            "networkConfiguration": {"endpointConfiguration": {"inboundNATPools": [nat_pool]}}}
    response = raw.request("POST", "/pools", body=body)
    assert response.status == 400, response.body
    assert response.json()["code"] in ("InvalidPropertyValue", "MissingRequiredProperty")


# ---- lifecycle -------------------------------------------------------------------------------------
def _listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(WAIT)
        return probe.connect_ex((address, port)) == 0


def test_services_stop_when_nodes_go_and_restart_keeps_addresses_and_host_keys(tmp_path, admin_key):
    location = str(tmp_path / "state")
    subnet = random_node_subnet()
    with LocalBatchServer(location, timings=fast_timings(), node_subnet=subnet) as first:
        if first.service.context.services.ssh_unavailable:
            pytest.skip(first.service.context.services.ssh_unavailable)
        with batch_client(first.url) as client:
            nodes = create_pool_and_wait(client, "kept", nodes=2, network_configuration=network_configuration(
                ssh_nat_pool(rules=None)))
            for node in nodes:
                client.create_node_user("kept", node.id, models.BatchNodeUserCreateOptions(
                    name="alice", ssh_public_key=admin_key.export_public_key().decode()))
            keys = {node.id: host_key_printed_by_a_task(client, "kept", node) for node in nodes}
            addresses = {node.id: node.ip_address for node in nodes}
            removed = nodes[0]
            client.begin_remove_nodes("kept", models.BatchNodeRemoveOptions(node_ids=[removed.id]),
                                      polling_interval=LRO_POLLING).result()
            kept = nodes[1]
            removed_frontend, kept_frontend = (node.endpoint_configuration.inbound_endpoints[0].frontend_port
                                               for node in (removed, kept))
            assert not _listening(removed.ip_address, 22)
            assert not _listening(first.network.public_address, removed_frontend)
            assert _listening(kept.ip_address, 22) and _listening(first.network.public_address, kept_frontend)
    assert not _listening(kept.ip_address, 22), "stopping the emulator stops the SSH servers"
    assert not _listening(first.network.public_address, kept_frontend)

    with LocalBatchServer(location, timings=fast_timings(), node_subnet=subnet) as second:
        with batch_client(second.url) as client:
            node = client.get_node("kept", kept.id)
            assert node.ip_address == addresses[kept.id]
            host, port = login_address(client, "kept", node)

            async def presented() -> str:
                async with asyncssh.connect(host, port, username="alice", client_keys=[admin_key], known_hosts=None,
                                            connect_timeout=WAIT) as connection:
                    return connection.get_server_host_key().export_public_key().decode().strip()
            assert run(presented()) == keys[kept.id]
            client.begin_delete_pool("kept", polling_interval=LRO_POLLING).result()
            assert not _listening(kept.ip_address, 22) and not _listening(host, port)


def test_a_pool_that_publishes_ssh_is_refused_where_port_22_cannot_be_bound(ssh_server, client):
    services = ssh_server.service.context.services
    reason = "node SSH servers listen on port 22 of each node's address, which needs root; localbatch runs as uid 1000"
    ssh_server._on_loop(lambda: setattr(services, "ssh_unavailable", reason))
    try:
        with pytest.raises(HttpResponseError) as caught:
            client.create_pool(models.BatchPoolCreateOptions(
                id=unique_id("noroot"), vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                virtual_machine_configuration=client.get_pool(next(iter(client.list_pools())).id)
                .virtual_machine_configuration, network_configuration=network_configuration(ssh_nat_pool())))
    finally:
        ssh_server._on_loop(lambda: setattr(services, "ssh_unavailable", None))
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert caught.value.status_code == 400
    assert details["PropertyName"].endswith("inboundNATPools[0].backendPort")
    assert reason in details["Reason"]


def test_an_interactive_shell_gets_a_terminal(client, pool, admin_key, tmp_path):
    pool_id, nodes = pool
    host, port = login_address(client, pool_id, nodes[0])
    with paramiko.SSHClient() as ssh:
        ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        ssh.connect(host, port, username="alice", password=ADMIN_PASSWORD, look_for_keys=False, allow_agent=False,
                    timeout=WAIT)
        channel = ssh.invoke_shell(term="xterm", width=100, height=30)
        channel.settimeout(WAIT)
        channel.sendall(b"echo term=$TERM; tty -s && echo has-tty; stty size; exit 7\n")
        output = b""
        while chunk := channel.recv(4096):
            output += chunk
        assert channel.recv_exit_status() == 7
    text = output.decode(errors="replace")
    assert "term=xterm" in text and "has-tty" in text and "30 100" in text


@pytest.mark.parametrize("user, property_name", [
    ({"name": "../../etc"}, "name"),
    ({"name": ".."}, "name"),
    ({"name": "a\u0007b"}, "name"),
    ({"name": "-rf"}, "name"),
    ({"name": "u" * 65}, "name"),
    ({"name": "later", "expiryTime": "next tuesday"}, "expiryTime"),
], ids=["path", "dot-dot", "control-character", "leading-hyphen", "too-long", "bad-expiry"])
def test_node_users_that_cannot_be_accounts_are_refused_naming_the_property(ssh_server, pool, user, property_name):
    pool_id, nodes = pool
    response = RawClient(ssh_server.url).request("POST", f"/pools/{pool_id}/nodes/{nodes[0].id}/users", body=user)
    assert response.status == 400, response.body
    details = {item["key"]: item["value"] for item in response.json()["values"]}
    assert response.json()["code"] == "InvalidPropertyValue" and details["PropertyName"] == property_name


def test_an_expiry_with_an_offset_is_honoured(client, pool, admin_key):
    pool_id, nodes = pool
    node = nodes[1]
    # 10:00 at UTC+05:00 an hour ago is 05:00 UTC an hour ago: expired, whatever the offset says.
    an_hour_ago = dt.datetime.now(dt.timezone(dt.timedelta(hours=5))) - dt.timedelta(hours=1)
    client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
        name="offset", ssh_public_key=admin_key.export_public_key().decode(), expiry_time=an_hour_ago))
    host, port = login_address(client, pool_id, node)
    with pytest.raises(asyncssh.PermissionDenied):
        run(ssh_exec(host, port, "true", username="offset", client_keys=[admin_key]))


def test_passwords_and_host_keys_never_leave_the_emulator(ssh_server, pool):
    pool_id, nodes = pool
    raw = RawClient(ssh_server.url)
    for path in (f"/pools/{pool_id}/nodes/{nodes[0].id}", f"/pools/{pool_id}/nodes", f"/pools/{pool_id}"):
        body = raw.request("GET", path).body
        assert ADMIN_PASSWORD.encode() not in body and b"PRIVATE KEY" not in body and b"passwordHash" not in body
    # the state keeps a salted hash of each password, never the password itself
    state = b"".join(path.read_bytes() for path in (Path(ssh_server.location) / "state").iterdir() if path.is_file())
    assert ADMIN_PASSWORD.encode() not in state and USER_PASSWORD.encode() not in state


def test_pools_with_the_same_frontend_range_share_the_public_address_without_clashing(ssh_server, client, admin_key):
    first, second = unique_id("range"), unique_id("range")
    start = FRONTEND_START + 200
    for pool_id in (first, second):
        create_pool_and_wait(client, pool_id, nodes=1, network_configuration=network_configuration(
            ssh_nat_pool(start=start, rules=None)))
    nodes = {pool_id: next(iter(client.list_nodes(pool_id))) for pool_id in (first, second)}
    ports = {pool_id: login_address(client, pool_id, node)[1] for pool_id, node in nodes.items()}
    assert sorted(ports.values()) == [start, start + 1]  # both in the range, each its own
    for pool_id, node in nodes.items():
        client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
            name="alice", ssh_public_key=admin_key.export_public_key().decode()))
        host, port = login_address(client, pool_id, node)
        assert run(ssh_exec(host, port, "echo $AZ_BATCH_POOL_ID", username="alice",
                            client_keys=[admin_key])).stdout == f"{pool_id}\n"
    client.begin_delete_pool(first, polling_interval=LRO_POLLING).result()
    third = unique_id("range")
    create_pool_and_wait(client, third, nodes=1, network_configuration=network_configuration(
        ssh_nat_pool(start=start, rules=None)))
    node = next(iter(client.list_nodes(third)))
    assert login_address(client, third, node)[1] == ports[first], "a deleted pool's ports are free again"


def test_the_sftp_subsystem_is_refused(client, pool, admin_key):
    pool_id, nodes = pool
    host, port = login_address(client, pool_id, nodes[0])

    async def sftp() -> None:
        async with asyncssh.connect(host, port, username="alice", client_keys=[admin_key], known_hosts=None,
                                    connect_timeout=WAIT) as connection:
            async with connection.start_sftp_client():
                pass
    with pytest.raises(asyncssh.ChannelOpenError):
        run(sftp())


def test_a_rebooting_node_is_unreachable_and_comes_back_with_the_same_host_key(ssh_server, client, admin_key):
    pool_id = unique_id("reboot")
    (node,) = create_pool_and_wait(client, pool_id, nodes=1, network_configuration=network_configuration(
        ssh_nat_pool(start=FRONTEND_START + 400, rules=None)))
    host, port = login_address(client, pool_id, node)
    before = host_key_printed_by_a_task(client, pool_id, node)
    with ssh_server.holding("node_rebooting"):
        client.begin_reboot_node(pool_id, node.id, reboot_options(), polling_interval=LRO_POLLING)
        wait_for(lambda: client.get_node(pool_id, node.id).state == "rebooting", "the node to be rebooting")
        # held in rebooting: its sshd and frontend go down (stopping them is the boot's first step)
        wait_for(lambda: not _listening(node.ip_address, 22) and not _listening(host, port),
                 "the rebooting node's SSH server and frontend to stop")
    wait_for(lambda: client.get_node(pool_id, node.id).state == "idle", "the node to be idle again")
    assert _listening(node.ip_address, 22) and _listening(host, port)
    assert host_key_printed_by_a_task(client, pool_id, node) == before
