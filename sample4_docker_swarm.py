"""A Docker swarm on an SSH-reachable pool, driven from this machine through an SSH tunnel.

The sample generates an SSH key pair in memory, picks an image with the ``DockerCompatible``
capability from ``list_supported_images()``, and creates a container pool with inter-node
communication and an inbound NAT pool for SSH that network security group rules open to one
source address range only. The node with the lowest IP address becomes the swarm manager: an
affinitized admin task runs ``docker swarm init`` there and prints the join token and the node's
SSH host key, and one affinitized task per other node joins the swarm. A native Batch container
task runs beside them. Then the sample adds an admin node user with the public key, reads the
manager's remote login settings, opens an SSH tunnel to the manager's Docker engine with the host
key pinned (an unknown key is refused, never accepted), and drives the swarm with the Docker SDK:
its nodes, and a container whose output it reads. At the end it deletes the job and pool (a
deleted pool takes its node users with it; a pool that stays loses them), as its configuration
says, or keeps them and writes a script that reopens the tunnel.

    python sample4_docker_swarm.py [--config PATH] [--sample-config PATH] [--keep-resources] [-v]
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import select
import shlex
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

import docker
import paramiko
from azure.batch import BatchClient, models
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common import REPOSITORY_ROOT
from common.cleanup import CleanupReport, CreatedResources, clean_up_resources, interrupts_deferred
from common.cli import configure_logging, parse_sample_arguments, print_cleanup_report, run_sample_main, step
from common.clients import create_batch_client
from common.config import ConfigError, SampleSettings, load_settings, open_configuration_file, sample_configuration_path
from common.helpers import (
    add_tasks,
    create_job_if_not_exists,
    create_pool_if_not_exists,
    describe_batch_error,
    describe_task_result,
    print_task_output,
    read_task_file_as_text,
    retry_if_the_answer_is_lost,
    select_verified_linux_image,
    unique_resource_name,
    wait_for_all_nodes_to_reach_state,
    wait_for_tasks_to_complete,
    wrap_commands_in_shell,
)
from common.local import local_stack_if_configured

logger = logging.getLogger(__name__)

START_TASK_SCRIPT_PATH = REPOSITORY_ROOT / "resources" / "docker_engine_on_localhost.sh"
DOCKER_COMPATIBLE = "DockerCompatible"
DOCKER_ENGINE_PORT = 2375
CONTAINER_TASK_ID = "container-task"


@dataclass(frozen=True)
class SwarmSettings:
    """This sample's own settings: ``[Swarm]``, ``[SSH]``, ``[Tunnel]`` and ``[Cleanup] delete_node_user``."""

    container_image: str
    user_name: str
    user_expiry: timedelta
    allowed_source_address_prefix: str
    frontend_port_range_start: int
    frontend_port_range_end: int
    connect_timeout_seconds: float
    tunnel_local_port: int
    write_tunnel_script: bool
    tunnel_script_directory: Path
    delete_node_user: bool

    @classmethod
    def load(cls, sample_configuration: Path, environ: Optional[Mapping[str, str]] = None) -> "SwarmSettings":
        """Read this sample's own sections of its configuration file (``environ``, default os.environ, overrides)."""
        config = open_configuration_file(sample_configuration, environ)
        return cls(
            container_image=config.text("Swarm", "container_image"),
            user_name=config.text("SSH", "user_name"),
            user_expiry=timedelta(hours=config.number("SSH", "user_expiry_hours")),
            allowed_source_address_prefix=config.text("SSH", "allowed_source_address_prefix"),
            frontend_port_range_start=config.integer("SSH", "frontend_port_range_start", minimum=1),
            frontend_port_range_end=config.integer("SSH", "frontend_port_range_end", minimum=1),
            connect_timeout_seconds=config.number("SSH", "connect_timeout_seconds", default=30.0),
            tunnel_local_port=config.integer("Tunnel", "local_port", minimum=0, default=0),
            write_tunnel_script=config.boolean("Tunnel", "write_tunnel_script", default=False),
            tunnel_script_directory=Path(config.text("Tunnel", "script_directory", default=".")).resolve(),
            delete_node_user=config.boolean("Cleanup", "delete_node_user", default=True),
        )


# ---- the SSH key pair ------------------------------------------------------------------------


def generate_ssh_key_pair(key_size: int = 3072) -> tuple[rsa.RSAPrivateKey, str]:
    """Generate an RSA key pair in memory. Return the private key and the public key in OpenSSH format.

    The private key stays in this process; write it to a file only when a person needs it (see
    ``write_tunnel_script``). RSA is accepted by every SSH server and by Batch's node users.
    """
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    public_key = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    return private_key, public_key


def ssh_fingerprint(public_key_line: str) -> str:
    """Return the OpenSSH SHA256 fingerprint of a public key written as ``<type> <base64> [comment]``."""
    key_blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode("ascii").rstrip("=")


# ---- the pool ----------------------------------------------------------------------------------


def start_task_command_line(script_path: Path) -> str:
    """Return a command line that runs the shell script's text with bash (no resource file needed)."""
    return "/bin/bash -c " + shlex.quote(script_path.read_text(encoding="utf-8"))


def create_swarm_pool(
    batch_client: BatchClient,
    pool_id: str,
    vm_size: str,
    node_count: int,
    virtual_machine_configuration: models.VirtualMachineConfiguration,
    container_image_names: Sequence[str],
    allowed_source_address_prefix: str,
    frontend_port_range: tuple[int, int],
    start_task_command: str,
) -> bool:
    """Create a Docker-capable pool whose nodes talk to each other and accept SSH from one address range.

    - ``container_configuration`` (``dockerCompatible``) gives every node a Docker engine, with
      ``container_image_names`` pulled before the node becomes idle;
    - ``enable_inter_node_communication`` lets the nodes reach each other (swarm needs it);
    - an inbound NAT pool maps one frontend port per node (from ``frontend_port_range``, at least
      40 ports, outside 50000-55000) to port 22; its network security group rules allow
      ``allowed_source_address_prefix`` and deny everyone else;
    - the start task (admin) runs ``start_task_command`` on every node, and a node takes no
      task until it has succeeded.

    Returns True if the pool was created, False if a pool with that id already existed.
    """
    ssh_endpoint = models.BatchInboundNatPool(
        name="ssh",
        protocol=models.InboundEndpointProtocol.TCP,
        backend_port=22,
        frontend_port_range_start=frontend_port_range[0],
        frontend_port_range_end=frontend_port_range[1],
        network_security_group_rules=[
            models.NetworkSecurityGroupRule(
                priority=150,
                access=models.NetworkSecurityGroupRuleAccess.ALLOW,
                source_address_prefix=allowed_source_address_prefix,
            ),
            models.NetworkSecurityGroupRule(
                priority=4000,
                access=models.NetworkSecurityGroupRuleAccess.DENY,
                source_address_prefix="*",
            ),
        ],
    )
    container_pool_configuration = models.VirtualMachineConfiguration(
        image_reference=virtual_machine_configuration.image_reference,
        node_agent_sku_id=virtual_machine_configuration.node_agent_sku_id,
        container_configuration=models.BatchContainerConfiguration(
            type=models.ContainerType.DOCKER_COMPATIBLE,
            container_image_names=list(container_image_names),
        ),
    )
    pool = models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size=vm_size,
        target_dedicated_nodes=node_count,
        virtual_machine_configuration=container_pool_configuration,
        enable_inter_node_communication=True,
        network_configuration=models.NetworkConfiguration(
            endpoint_configuration=models.BatchPoolEndpointConfiguration(inbound_nat_pools=[ssh_endpoint])
        ),
        start_task=models.BatchStartTask(
            command_line=start_task_command,
            user_identity=models.UserIdentity(auto_user=models.AutoUserSpecification(  # Docker needs root
                scope=models.AutoUserScope.POOL, elevation_level=models.ElevationLevel.ADMIN)),
            max_task_retry_count=1,
            wait_for_success=True,
        ),
    )
    return create_pool_if_not_exists(batch_client, pool)


def choose_swarm_manager(nodes: Sequence[models.BatchNode]) -> models.BatchNode:
    """Return the node with the lowest IP address: the one every run (and every reader) agrees on."""
    return min(nodes, key=lambda node: ipaddress.ip_address(node.ip_address))


# ---- the swarm, built by tasks ---------------------------------------------------------------


def add_swarm_init_task(
    batch_client: BatchClient, job_id: str, manager: models.BatchNode, task_id: str = "swarm-init"
) -> str:
    """Add an admin task, affinitized to ``manager``, that makes it a swarm manager. Return its id.

    The task prints the swarm's worker join token and the node's SSH host key on lines of its
    stdout.txt labelled ``worker-join-token:`` and ``ssh-host-key:`` (``read_swarm_init_output``
    reads them). It is idempotent: a node that is already a swarm manager prints them again.
    """
    address = manager.ip_address
    commands = [
        'state="$(docker info --format "{{.Swarm.LocalNodeState}}")"',
        f'if [ "$state" != active ]; then docker swarm init --advertise-addr {address} '
        f"--listen-addr {address}:2377 > /dev/null; fi",
        'token="$(docker swarm join-token --quiet worker)"',
        f'host_key="$(ssh-keyscan -t ed25519 {address} 2> /dev/null || true)"',
        f'[ -n "$host_key" ] || {{ echo "ssh-keyscan got no ed25519 host key from {address}:22" >&2; exit 1; }}',
        'echo "worker-join-token: $token"',
        'echo "ssh-host-key: $host_key"',
    ]
    task = models.BatchTaskCreateOptions(
        id=task_id,
        command_line=wrap_commands_in_shell(commands),
        affinity_info=models.BatchAffinityInfo(affinity_id=manager.affinity_id),
        user_identity=models.UserIdentity(auto_user=models.AutoUserSpecification(  # Docker needs root
            scope=models.AutoUserScope.POOL, elevation_level=models.ElevationLevel.ADMIN)),
    )
    add_tasks(batch_client, job_id, [task])
    return task.id


def read_swarm_init_output(batch_client: BatchClient, job_id: str, task_id: str) -> tuple[str, str]:
    """Return the join token and the SSH host key line that the swarm-init task printed.

    The host key line is ``<address> <type> <base64>``, as ssh-keyscan prints it. The join token
    is a secret: never print or log it.
    """
    labels = ("worker-join-token: ", "ssh-host-key: ")
    found = {}
    for line in read_task_file_as_text(batch_client, job_id, task_id).splitlines():
        for label in labels:
            if line.startswith(label):
                found[label] = line[len(label):].strip()
    missing = [label.rstrip(": ") for label in labels if not found.get(label)]
    if missing:
        raise RuntimeError(f"task {task_id} of job {job_id} did not print its {' and '.join(missing)}")
    join_token, host_key_line = found[labels[0]], found[labels[1]]
    if len(host_key_line.split()) < 3:
        raise RuntimeError(f"task {task_id} printed an SSH host key line that is not '<host> <type> <key>'")
    return join_token, host_key_line


def add_swarm_join_tasks(
    batch_client: BatchClient,
    job_id: str,
    workers: Sequence[models.BatchNode],
    manager_address: str,
    join_token: str,
) -> list[str]:
    """Add one admin task per worker, affinitized to it, that joins it to the swarm. Return their ids.

    The token goes in an environment setting, not in the command line, so it stays out of
    process listings on the node. Each task is idempotent: a node already in a swarm stays.
    The task of the node at ``10.0.0.5`` is ``swarm-join-10-0-0-5``.
    """
    tasks = []
    for worker in workers:
        commands = [
            'state="$(docker info --format "{{.Swarm.LocalNodeState}}")"',
            f'if [ "$state" != active ]; then docker swarm join --token "$SWARM_JOIN_TOKEN" '
            f"--advertise-addr {worker.ip_address} --listen-addr {worker.ip_address}:2377 "
            f"{manager_address}:2377; fi",
            "docker info --format 'swarm: {{.Swarm.LocalNodeState}}, node {{.Swarm.NodeID}}'",
        ]
        tasks.append(models.BatchTaskCreateOptions(
            id="swarm-join-" + worker.ip_address.replace(".", "-").replace(":", "-"),
            command_line=wrap_commands_in_shell(commands),
            affinity_info=models.BatchAffinityInfo(affinity_id=worker.affinity_id),
            environment_settings=[models.EnvironmentSetting(name="SWARM_JOIN_TOKEN", value=join_token)],
            user_identity=models.UserIdentity(auto_user=models.AutoUserSpecification(  # Docker needs root
                scope=models.AutoUserScope.POOL, elevation_level=models.ElevationLevel.ADMIN)),
        ))
    return add_tasks(batch_client, job_id, tasks)


def container_task(image_name: str, task_id: str = "container-task") -> models.BatchTaskCreateOptions:
    """Return a native Batch container task: Batch runs its command line in a container of ``image_name``.

    This, not a swarm, is how to run containers on Batch in production: Batch pulls the image,
    mounts the task's directories and environment into the container, and collects its output.
    """
    commands = [
        'echo "Hello from task $AZ_BATCH_TASK_ID, in a container of image ' + image_name + ', '
        'on node $AZ_BATCH_NODE_ID"',
        'echo "working directory: $(pwd)"',
    ]
    return models.BatchTaskCreateOptions(
        id=task_id,
        command_line=wrap_commands_in_shell(commands, shell="/bin/sh"),
        container_settings=models.BatchTaskContainerSettings(
            image_name=image_name,
            working_directory=models.ContainerWorkingDirectory.TASK_WORKING_DIRECTORY,
        ),
    )


def describe_where_task_ran(task: models.BatchTask, wanted_node_id: Optional[str]) -> str:
    """Return one line: the task's result and the node it ran on (affinity is only a preference)."""
    line = describe_task_result(task)
    ran_on = task.node_info.node_id if task.node_info else None
    if ran_on is None:
        return line + ", never ran on a node"
    if wanted_node_id is None:
        return f"{line}, ran on node {ran_on}"
    if ran_on == wanted_node_id:
        return f"{line}, ran on node {ran_on} (as asked)"
    return f"{line}, ran on node {ran_on}, not on node {wanted_node_id} as asked (affinity is a preference)"


# ---- node users and SSH ------------------------------------------------------------------------


def add_node_user_to_nodes(
    batch_client: BatchClient,
    pool_id: str,
    node_ids: Sequence[str],
    user_name: str,
    ssh_public_key: str,
    expiry_time: datetime,
) -> None:
    """Add an admin user who logs in with ``ssh_public_key`` (until ``expiry_time``) to each node.

    On a node that already has a user of that name (a reused pool, or a request whose answer was
    lost and that was sent again), its key and expiry are replaced.
    """
    user = models.BatchNodeUserCreateOptions(
        name=user_name, is_admin=True, expiry_time=expiry_time, ssh_public_key=ssh_public_key
    )
    for node_id in node_ids:
        try:
            retry_if_the_answer_is_lost(
                lambda: batch_client.create_node_user(pool_id, node_id, user),
                f"add user {user_name} to node {node_id}",
            )
        except ResourceExistsError:
            batch_client.replace_node_user(pool_id, node_id, user_name, models.BatchNodeUserReplaceOptions(
                expiry_time=expiry_time, ssh_public_key=ssh_public_key
            ))
            logging.getLogger(__name__).info(
                "Replaced the key and expiry of user %s on node %s of pool %s", user_name, node_id, pool_id
            )
            continue
        logging.getLogger(__name__).info("Added user %s to node %s of pool %s", user_name, node_id, pool_id)


def delete_node_user_from_nodes(
    batch_client: BatchClient, pool_id: str, node_ids: Sequence[str], user_name: str, report: CleanupReport
) -> None:
    """Delete the user from each node, filing each as ``user <name> on node <id>`` in ``report``.

    A node or user that no longer exists counts as done. Ctrl-C is held back until every request
    is sent; the next one stops at once (so does the first, when ``report`` already holds one or
    a ``KeyboardInterrupt`` is propagating): the nodes not reached stay in ``report.not_reached``
    and ``KeyboardInterrupt`` is raised.
    """
    names = {node_id: f"user {user_name} on node {node_id}" for node_id in node_ids}
    report.not_reached.extend(names.values())
    stop_at_once = report.interrupted or isinstance(sys.exc_info()[1], KeyboardInterrupt)
    with interrupts_deferred(report, stop_at_first=stop_at_once):
        for node_id, name in names.items():
            try:
                batch_client.delete_node_user(pool_id, node_id, user_name)
                report.deleted.append(name)
            except ResourceNotFoundError:
                logging.getLogger(__name__).info("%s does not exist; nothing to delete", name)
            except Exception as error:  # keep going: every node gets its request
                report.failed.append(f"{name}: {describe_batch_error(error)}")
            report.not_reached.remove(name)


def get_remote_login_address(batch_client: BatchClient, pool_id: str, node_id: str) -> tuple[str, int]:
    """Return the public address and port at which the node's SSH server is reached."""
    settings = batch_client.get_node_remote_login_settings(pool_id, node_id)
    return settings.remote_login_ip_address, settings.remote_login_port


def connect_with_pinned_host_key(
    address: str,
    port: int,
    user_name: str,
    private_key: rsa.RSAPrivateKey,
    host_key_line: str,
    timeout_seconds: float,
) -> paramiko.SSHClient:
    """Open an SSH connection that accepts only the host key in ``host_key_line`` (``<host> <type> <base64>``).

    The key is the one the node printed from inside (``ssh-keyscan`` in a Batch task), so a
    server that presents any other key (a man in the middle, or another machine) is refused
    with ``paramiko.SSHException`` (as paramiko's ``RejectPolicy`` refuses an unknown key); an
    unknown key is never accepted. A connection that is refused, reset or times out (as the
    pool's network security group rules make it for a source address they deny) raises
    ``ConnectionError``; a key the server does not accept, ``paramiko.AuthenticationException``.
    """
    key_type, key_base64 = host_key_line.split()[1:3]
    pinned_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_base64))
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    host_name = address if port == 22 else f"[{address}]:{port}"
    client.get_host_keys().add(host_name, pinned_key.get_name(), pinned_key)
    try:
        client.connect(
            address, port=port, username=user_name,
            pkey=paramiko.RSAKey(key=private_key),
            timeout=timeout_seconds, banner_timeout=timeout_seconds, auth_timeout=timeout_seconds,
            look_for_keys=False, allow_agent=False,
        )
    except paramiko.BadHostKeyException as error:
        client.close()
        raise paramiko.SSHException(
            f"the SSH server at {address}:{port} presented host key {error.key.get_name()} "
            f"{error.key.fingerprint}, not the pinned {pinned_key.get_name()} {pinned_key.fingerprint} "
            f"that the node printed: refusing to connect"
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        raise
    except (OSError, EOFError, paramiko.SSHException) as error:  # paramiko raises EOFError for a cut connection
        client.close()
        raise ConnectionError(
            f"no SSH session with {address}:{port} ({type(error).__name__}: {error}); do the pool's network "
            f"security group rules allow this machine's address?"
        ) from None
    except BaseException:
        client.close()
        raise
    return client


class SshTunnel:
    """A local port on 127.0.0.1 forwarded through an SSH connection, like ``ssh -L``, until ``close()``.

    Every connection to ``local_port`` becomes a ``direct-tcpip`` channel to
    ``remote_host:remote_port`` as seen from the SSH server (``localhost`` is the server itself).
    """

    def __init__(self, ssh_client: paramiko.SSHClient, remote_host: str, remote_port: int, local_port: int = 0):
        self._ssh_client = ssh_client
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._listener = socket.create_server(("127.0.0.1", local_port))
        self._listener.settimeout(0.2)
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_connections, name="ssh-tunnel", daemon=True)
        self._thread.start()

    def _accept_connections(self) -> None:
        while not self._closed.is_set():
            try:
                connection, origin = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            transport = self._ssh_client.get_transport()
            try:
                if transport is None or not transport.is_active():
                    raise paramiko.SSHException("the SSH connection is closed")
                channel = transport.open_channel("direct-tcpip", (self.remote_host, self.remote_port), origin)
            except Exception as error:
                logging.getLogger(__name__).warning(
                    "SSH tunnel: cannot reach %s:%d: %s", self.remote_host, self.remote_port, error
                )
                connection.close()
                continue
            threading.Thread(target=self._relay, args=(connection, channel), daemon=True).start()

    def _relay(self, connection: socket.socket, channel: paramiko.Channel) -> None:
        """Copy bytes both ways between a local connection and an SSH channel until either side closes."""
        with contextlib.closing(connection), contextlib.closing(channel):
            while not self._closed.is_set():
                readable, _, _ = select.select([connection, channel], [], [], 0.2)
                if connection in readable:
                    data = connection.recv(65536)
                    if not data:
                        return
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        return
                    connection.sendall(data)

    def close(self) -> None:
        """Stop accepting connections, then close the SSH connection (and with it every channel)."""
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)
        self._ssh_client.close()

    def __enter__(self) -> "SshTunnel":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()


# ---- the swarm, through the tunnel -------------------------------------------------------------


def describe_swarm(docker_client: docker.DockerClient) -> list[str]:
    """Return a line about the engine and the swarm, then one per swarm node: host name, address, role, state."""
    info = docker_client.info()
    swarm = info.get("Swarm") or {}
    lines = [
        f"Docker engine {info.get('ServerVersion')} on the swarm manager: swarm {swarm.get('LocalNodeState')}, "
        f"{swarm.get('Nodes')} node(s), {swarm.get('Managers')} manager(s)"
    ]
    nodes = []
    for node in docker_client.nodes.list():
        attributes = node.attrs
        manager_status = attributes.get("ManagerStatus") or {}
        # A manager may report 0.0.0.0 as its status address; its manager address is the real one.
        address = manager_status.get("Addr", "").rsplit(":", 1)[0] or attributes["Status"].get("Addr", "")
        role = attributes["Spec"]["Role"] + (" (leader)" if manager_status.get("Leader") else "")
        nodes.append((attributes["Description"]["Hostname"], address, role, attributes["Status"]["State"]))
    for host_name, address, role, state in sorted(nodes, key=lambda node: node[1]):
        lines.append(f"  {host_name:<20} {address:<15} {role:<16} {state}")
    return lines


def start_container_and_read_its_output(
    docker_client: docker.DockerClient, image_name: str, command: Sequence[str], timeout_seconds: float
) -> str:
    """Run a container of ``image_name`` to completion, return what it printed, and remove it."""
    container = docker_client.containers.run(image_name, list(command), detach=True)
    try:
        outcome = container.wait(timeout=timeout_seconds)
        output = container.logs(stdout=True, stderr=True).decode("utf-8", errors="replace")
        if outcome.get("StatusCode") != 0:
            raise RuntimeError(f"the container of {image_name} exited with code {outcome.get('StatusCode')}: {output}")
        return output
    finally:
        container.remove(force=True)


def write_tunnel_script(
    directory: Path,
    pool_id: str,
    address: str,
    port: int,
    user_name: str,
    private_key: rsa.RSAPrivateKey,
    host_key_line: str,
) -> Path:
    """Write ``<pool_id>-tunnel.sh``, the private key it uses (mode 0600) and the pinned host key. Return the script.

    The script runs OpenSSH: ``ssh -N -L 2375:localhost:2375`` to the node, with strict host key
    checking against the host key the node printed. Then ``DOCKER_HOST=tcp://127.0.0.1:2375 docker
    node ls`` (or any Docker client) drives the swarm.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{pool_id}-ssh-key"
    known_hosts_path = directory / f"{pool_id}-known-hosts"
    script_path = directory / f"{pool_id}-tunnel.sh"
    private_key_text = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(private_key_text)
    key_type, key_base64 = host_key_line.split()[1:3]
    known_hosts_path.write_text(f"[{address}]:{port} {key_type} {key_base64}\n", encoding="utf-8")
    script_path.write_text(
        "#!/bin/sh\n"
        f"# An SSH tunnel to the Docker engine of the swarm manager of pool {pool_id}.\n"
        "# While it runs: DOCKER_HOST=tcp://127.0.0.1:${LOCAL_PORT:-2375} docker node ls\n"
        "set -e\n"
        'cd "$(dirname "$0")"\n'
        f"exec ssh -N -i {shlex.quote(key_path.name)} -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={shlex.quote(known_hosts_path.name)} -o StrictHostKeyChecking=yes "
        f'-L "${{LOCAL_PORT:-2375}}:localhost:2375" -p {port} {shlex.quote(user_name)}@{address}\n',
        encoding="utf-8",
    )
    script_path.chmod(0o700)
    return script_path


# ---- the story -------------------------------------------------------------------------------


def run_docker_swarm(
    batch_client: BatchClient,
    settings: SampleSettings,
    swarm: SwarmSettings,
    keep_resources: bool = False,
    resources: Optional[CreatedResources] = None,
) -> None:
    """Run the Docker swarm story and print it; clean up as configured, whatever happens.

    What it creates is recorded in ``resources`` (a new record if not given) before it is
    created, and the cleanup report, the node users included, is left there too.
    """
    resources = CreatedResources() if resources is None else resources
    user_node_ids: list[str] = []  # nodes given the user (recorded before the requests)
    expiry_time: Optional[datetime] = None
    pool, timeouts, poll_seconds = settings.pool, settings.timeouts, settings.batch.poll_interval_seconds
    pool_id = pool.pool_id or unique_resource_name("sample4-pool")
    with contextlib.ExitStack() as connections:
        try:
            with step("generate an SSH key pair"):
                private_key, public_key = generate_ssh_key_pair()
            print(f"Generated an SSH key pair in memory: RSA {private_key.key_size}, {ssh_fingerprint(public_key)}")

            with step("select the image"):
                virtual_machine_configuration = select_verified_linux_image(
                    batch_client, publisher=pool.image_publisher, offer=pool.image_offer,
                    sku_prefix=pool.image_sku_prefix, required_capability=DOCKER_COMPATIBLE,
                )
            image = virtual_machine_configuration.image_reference
            print(f"Image: {image.publisher} {image.offer} {image.sku} "
                  f"(node agent {virtual_machine_configuration.node_agent_sku_id}, {DOCKER_COMPATIBLE})")

            resources.pool_ids.append(pool_id)  # recorded first: cleanup must find it
            with step(f"create pool {pool_id}"):
                created = create_swarm_pool(
                    batch_client, pool_id, pool.vm_size, pool.node_count, virtual_machine_configuration,
                    [swarm.container_image], swarm.allowed_source_address_prefix,
                    (swarm.frontend_port_range_start, swarm.frontend_port_range_end),
                    start_task_command_line(START_TASK_SCRIPT_PATH),
                )
            print(f"{'Created' if created else 'Reusing'} pool {pool_id} ({pool.node_count} x {pool.vm_size}, "
                  f"SSH on ports {swarm.frontend_port_range_start}-{swarm.frontend_port_range_end} from "
                  f"{swarm.allowed_source_address_prefix} only); waiting for its nodes to be idle")
            with step(f"wait for the nodes of pool {pool_id}"):
                nodes = wait_for_all_nodes_to_reach_state(
                    batch_client, pool_id, timeouts.nodes_ready, poll_interval_seconds=poll_seconds,
                    report_progress=print,
                )
            manager = choose_swarm_manager(nodes)
            workers = [node for node in nodes if node.id != manager.id]
            print(f"{len(nodes)} node(s) idle; the swarm manager is the one with the lowest IP address:")
            for node in sorted(nodes, key=lambda node: ipaddress.ip_address(node.ip_address)):
                print(f"  {node.ip_address:<15} {node.id}{'  (manager)' if node is manager else ''}")

            job_id = unique_resource_name("sample4-job")
            resources.job_ids.append(job_id)
            with step(f"create job {job_id}"):
                create_job_if_not_exists(batch_client, models.BatchJobCreateOptions(
                    id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
            with step(f"add the swarm-init task to job {job_id}"):
                init_task_id = add_swarm_init_task(batch_client, job_id, manager)
            print(f"Created job {job_id} with task {init_task_id}, which makes node {manager.id} the swarm manager")
            with step(f"wait for task {init_task_id} of job {job_id}"):
                [init_task] = wait_for_tasks_to_complete(
                    batch_client, job_id, timeouts.tasks_complete, poll_seconds, report_progress=print)
            print(describe_where_task_ran(init_task, manager.id))
            if init_task.execution_info.result != models.BatchTaskExecutionResult.SUCCESS:
                with step(f"read the output of task {init_task_id}"):
                    # stderr only: its stdout.txt may hold the join token, which is never printed
                    print_task_output(batch_client, job_id, init_task_id, file_names=("stderr.txt",))
                raise RuntimeError(f"task {init_task_id} failed: {describe_task_result(init_task)}")
            with step(f"read the join token and host key that task {init_task_id} printed"):
                join_token, host_key_line = read_swarm_init_output(batch_client, job_id, init_task_id)
            host_key = host_key_line.split(None, 1)[1]  # "<type> <base64>"
            print(f"The manager's SSH host key, as the node printed it: {host_key.split()[0]} "
                  f"{ssh_fingerprint(host_key)} (the join token is not shown)")

            with step(f"add the swarm join tasks and task {CONTAINER_TASK_ID} to job {job_id}"):
                join_task_ids = add_swarm_join_tasks(batch_client, job_id, workers, manager.ip_address, join_token)
                add_tasks(batch_client, job_id, [container_task(swarm.container_image, CONTAINER_TASK_ID)])
            print(f"Added {len(join_task_ids)} swarm join task(s) and the container task {CONTAINER_TASK_ID}")
            with step(f"wait for the tasks of job {job_id}"):
                tasks = wait_for_tasks_to_complete(
                    batch_client, job_id, timeouts.tasks_complete, poll_seconds, report_progress=print)
            wanted_nodes = {task_id: worker.id for task_id, worker in zip(join_task_ids, workers)}
            for task in sorted(tasks, key=lambda task: task.id):
                if task.id != init_task_id:
                    print(describe_where_task_ran(task, wanted_nodes.get(task.id)))
            failed = [task for task in tasks if task.execution_info.result != models.BatchTaskExecutionResult.SUCCESS]
            with step(f"read the output of task {CONTAINER_TASK_ID}"):
                print_task_output(batch_client, job_id, CONTAINER_TASK_ID)
                for task in failed:
                    if task.id != CONTAINER_TASK_ID:
                        print_task_output(batch_client, job_id, task.id, file_names=("stderr.txt",))
            if failed:
                raise RuntimeError("; ".join(describe_task_result(task) for task in failed))

            expiry_time = datetime.now(timezone.utc) + swarm.user_expiry
            user_node_ids.extend(node.id for node in nodes)  # recorded first: cleanup must find them
            with step(f"add user {swarm.user_name} to the nodes of pool {pool_id}"):
                add_node_user_to_nodes(batch_client, pool_id, user_node_ids, swarm.user_name, public_key, expiry_time)
            print(f"Added admin user {swarm.user_name} (SSH key, expires {expiry_time:%Y-%m-%d %H:%M} UTC) "
                  f"to {len(nodes)} node(s)")
            with step(f"read the remote login settings of node {manager.id}"):
                address, port = get_remote_login_address(batch_client, pool_id, manager.id)
            with step(f"open an SSH tunnel to node {manager.id} at {address}:{port}"):
                ssh_client = connect_with_pinned_host_key(
                    address, port, swarm.user_name, private_key, host_key_line, swarm.connect_timeout_seconds
                )
                connections.callback(ssh_client.close)
                tunnel = connections.enter_context(
                    SshTunnel(ssh_client, "localhost", DOCKER_ENGINE_PORT, swarm.tunnel_local_port)
                )
            print(f"SSH tunnel: 127.0.0.1:{tunnel.local_port} -> {swarm.user_name}@{address}:{port} -> "
                  f"localhost:{DOCKER_ENGINE_PORT} on node {manager.id} (host key pinned)")

            with step("describe the swarm through the tunnel"):
                docker_client = connections.enter_context(contextlib.closing(docker.DockerClient(
                    base_url=f"tcp://127.0.0.1:{tunnel.local_port}", timeout=swarm.connect_timeout_seconds
                )))
                for line in describe_swarm(docker_client):
                    print(line)
            with step(f"run a {swarm.container_image} container through the tunnel"):
                output = start_container_and_read_its_output(
                    docker_client, swarm.container_image,
                    ["echo", "Hello from a container on the swarm manager, through the SSH tunnel"],
                    timeout_seconds=timeouts.tasks_complete.total_seconds(),
                )
            print(f"---- output of a {swarm.container_image} container run through the tunnel ----")
            print(output.rstrip("\n"))

            if swarm.write_tunnel_script:
                with step(f"write the tunnel script to {swarm.tunnel_script_directory}"):
                    script = write_tunnel_script(
                        swarm.tunnel_script_directory, pool_id, address, port, swarm.user_name, private_key,
                        host_key_line,
                    )
                print(f"Wrote {script} (with the private key beside it, mode 0600): run it to reopen the tunnel")
        finally:
            connections.close()
            user_names = [f"user {swarm.user_name} on node {node_id}" for node_id in user_node_ids]
            try:
                report = clean_up_resources(
                    batch_client, None, resources,
                    delete_jobs=settings.cleanup.delete_job,
                    delete_pools=settings.cleanup.delete_pool,
                    timeout=timeouts.cleanup,
                    poll_interval_seconds=poll_seconds,
                    keep_everything=keep_resources,
                )
            except KeyboardInterrupt:  # cleanup was stopped at once: the users were not reached either
                if resources.cleanup_report is not None:
                    resources.cleanup_report.not_reached.extend(user_names)
                raise
            # A pool that is deleted (or being deleted) takes its node users with it; a pool that
            # stays keeps them, unless they are deleted here.
            if user_names and f"pool {pool_id}" in report.left_behind():
                if keep_resources or not swarm.delete_node_user:
                    for name in user_names:
                        report.kept.append(name)
                        report.kept_details[name] = (f" (an admin with this run's SSH key, until "
                                                     f"{expiry_time:%Y-%m-%d %H:%M} UTC or until the pool is deleted)")
                else:
                    delete_node_user_from_nodes(batch_client, pool_id, user_node_ids, swarm.user_name, report)
            print_cleanup_report(settings, report)
    report.raise_if_incomplete()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, start the local stack if configured, run the sample; return the exit code."""
    arguments = parse_sample_arguments(__doc__, sample_configuration_path(__file__), argv)
    configure_logging(arguments.verbose)
    resources = CreatedResources()

    def run() -> None:
        settings = load_settings(arguments.config, arguments.sample_config)
        swarm = SwarmSettings.load(arguments.sample_config)
        deletes_what_the_script_needs = settings.cleanup.delete_pool or swarm.delete_node_user
        if swarm.write_tunnel_script and deletes_what_the_script_needs and not arguments.keep_resources:
            raise ConfigError(
                f"{settings.sample_configuration_path}: [Tunnel] write_tunnel_script: the tunnel needs the pool "
                f"and the node user: set [Cleanup] delete_pool = false and delete_node_user = false, "
                f"or run with --keep-resources"
            )
        logger.info("Settings:\n%s", settings.describe())
        with local_stack_if_configured(settings):
            batch_client = create_batch_client(settings.batch)
            run_docker_swarm(
                batch_client, settings, swarm, keep_resources=arguments.keep_resources, resources=resources
            )

    return run_sample_main(Path(__file__).name, run, resources)


if __name__ == "__main__":
    sys.exit(main())
