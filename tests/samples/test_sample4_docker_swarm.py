"""sample4_docker_swarm.py end to end: the swarm through the tunnel, the container task, pinning, failures."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Sequence

import docker
import paramiko
import pytest
from azure.core.exceptions import ResourceNotFoundError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import sample4_docker_swarm as sample4
from common.cleanup import CreatedResources
from common.cli import StepFailed
from common.clients import create_batch_client
from common.config import environment_variable_name, sample_configuration_path
from common.helpers import unique_resource_name
from localbatch.node.engines import docker_unavailable_reason
from localbatch.node.layout import NodeLayout
from tests.samples.support import (
    NOTHING,
    SAMPLE4,
    Backend,
    FailRequests,
    Inventory,
    assert_left_behind,
    connection_lost,
    created_ids,
    environment_without_overrides,
    run_sample,
    take_inventory,
)
from tests.waiting import wait_for

NODE_COUNT = 2
# The local stack runs a Docker engine per node of a container pool; where it cannot (not root,
# no docker.io), those tests skip with the emulator's own reason.
needs_local_docker = pytest.mark.skipif(docker_unavailable_reason() is not None,
                                        reason=str(docker_unavailable_reason()))
CONTAINER_OUTPUT = "Hello from a container on the swarm manager, through the SSH tunnel"


def swarm_settings(backend: Backend) -> sample4.SwarmSettings:
    """Sample 4's own settings as it would load them on ``backend``."""
    return sample4.SwarmSettings.load(sample_configuration_path(SAMPLE4), environ=backend.environment)


def pool_markers(backend: Backend, printed: str, pool_ids: Sequence[str] = ()) -> list[str]:
    """What the command line or working directory of a process of the sample's pool contains.

    The pool's id (its node directories, its engines' data roots) and each printed node's engine
    runtime directory (its containerd and container shims, which name no pool). The pools are
    ``pool_ids`` and those the sample printed.
    """
    nodes = NodeLayout(str(Path(backend.environment[environment_variable_name("Local", "data_directory")])
                           / "localbatch" / "nodes"))
    pool_ids = sorted(set(pool_ids) | set(created_ids(printed, "pool")))
    node_ids = set(re.findall(r"\btvmps_[0-9a-f]+_d\b", printed))
    return pool_ids + [nodes.engine(pool_id, node_id).run_dir for pool_id in pool_ids for node_id in node_ids]


def processes_marked(markers: list[str]) -> list[str]:
    """This machine's processes whose command line or working directory contains one of ``markers``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            working_directory = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to read
            continue
        if any(marker in command_line or marker in working_directory for marker in markers):
            found.append(f"{entry.name}: {command_line.strip()[:200]}")
    return found


def assert_no_process_left(backend: Backend, printed: str, pool_ids: Sequence[str] = ()) -> None:
    """The pool's engines, containers and task processes are all gone (bounded wait: deletion is asynchronous)."""
    markers = pool_markers(backend, printed, pool_ids)
    assert markers, "the sample printed no pool"
    try:
        wait_for(lambda: processes_marked(markers), "no process of the sample's pool to be left", 60,
                 poll=0.2, until=lambda left: not left)
    except TimeoutError as error:
        raise AssertionError(str(error)) from None


def assert_secrets_never_printed(*texts: str) -> None:
    for text in texts:
        assert "SWMTKN-" not in text, "a swarm join token was printed"
        assert "PRIVATE KEY" not in text, "a private key was printed"


def test_builds_the_swarm_drives_it_through_the_tunnel_and_leaves_nothing_behind(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name == "local" and docker_unavailable_reason() is not None:
        pytest.skip(str(docker_unavailable_reason()))
    before = take_inventory(backend)

    run = run_sample(SAMPLE4, backend, tmp_path)

    assert run.returncode == 0, run.describe()
    [pool_id] = created_ids(run.stdout, "pool")
    [job_id] = created_ids(run.stdout, "job")
    assert f"swarm active, {NODE_COUNT} node(s), 1 manager(s)" in run.stdout
    swarm_nodes = re.findall(r"^  (\S+)\s+(\S+)\s+(manager \(leader\)|worker)\s+ready$", run.stdout, re.MULTILINE)
    assert sorted(role for _host, _address, role in swarm_nodes) == ["manager (leader)"] + ["worker"] * (NODE_COUNT - 1)
    assert len({host for host, _address, _role in swarm_nodes}) == NODE_COUNT
    assert f"through the tunnel ----\n{CONTAINER_OUTPUT}\n" in run.stdout
    assert re.search(
        r"^Hello from task container-task, in a container of image busybox, on node \S+$", run.stdout, re.MULTILINE
    )
    assert "task swarm-init: success, exit code 0, ran on node" in run.stdout
    assert len(re.findall(r"^task swarm-join-\S+: success, exit code 0, ran on node", run.stdout, re.MULTILINE)) \
        == NODE_COUNT - 1
    assert "(host key pinned)" in run.stdout
    # The deleted pool takes its node users with it: nothing is kept, nothing failed.
    assert f"Deleted job {job_id}" in run.stdout and f"Deleted pool {pool_id}" in run.stdout
    assert not re.search(r"^(Kept|Could not delete|Not deleted) ", run.stdout, re.MULTILINE), run.describe()
    assert run.stderr == ""
    assert_secrets_never_printed(run.stdout, run.stderr)
    assert not any(tmp_path.iterdir()), "the sample wrote files (a key?) without being asked to"
    assert_left_behind(backend, before, NOTHING)
    if backend.name == "local":
        assert_no_process_left(backend, run.stdout)


@needs_local_docker
def test_a_wrong_pinned_host_key_fails_the_sample_clearly_and_cleans_up(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The sample never connects to a server whose host key is not the one the node printed."""
    settings = local_backend.settings(SAMPLE4)
    read_swarm_init_output = sample4.read_swarm_init_output
    some_other_key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()

    def output_with_another_host_key(batch_client, job_id, task_id):  # type: ignore[no-untyped-def]
        join_token, host_key_line = read_swarm_init_output(batch_client, job_id, task_id)
        return join_token, f"{host_key_line.split()[0]} {some_other_key}"

    monkeypatch.setattr(sample4, "read_swarm_init_output", output_with_another_host_key)
    before = take_inventory(local_backend)

    with pytest.raises(StepFailed) as raised:
        sample4.run_docker_swarm(local_backend.batch_client, settings, swarm_settings(local_backend))
    printed = capsys.readouterr().out

    message = str(raised.value)
    assert re.fullmatch(
        r"open an SSH tunnel to node \S+ at \S+:\d+: SSHException: the SSH server at \S+:\d+ presented host key "
        r"ssh-ed25519 SHA256:\S+, not the pinned ssh-ed25519 SHA256:\S+ that the node printed: refusing to connect",
        message,
    ), message
    assert type(raised.value.__cause__) is paramiko.SSHException
    assert sample4.ssh_fingerprint(some_other_key) in message
    assert "SSH tunnel" not in printed
    assert_left_behind(local_backend, before, NOTHING)
    assert_no_process_left(local_backend, printed)


@needs_local_docker
def test_a_source_address_the_rules_deny_fails_the_sample_clearly_and_cleans_up(
    local_backend: Backend, capsys: pytest.CaptureFixture
) -> None:
    """Allowing another source address than this machine's: the NAT frontend refuses the SSH connection."""
    settings = local_backend.settings(SAMPLE4)
    other_source = Backend("local", {
        **local_backend.environment,
        environment_variable_name("SSH", "allowed_source_address_prefix"): "192.0.2.0/24",
    })
    before = take_inventory(local_backend)

    with pytest.raises(StepFailed, match=r"^open an SSH tunnel to node \S+ at \S+:\d+: ConnectionError: no SSH session "
                       r"with \S+:\d+ \(.+\); do the pool's network security group rules allow this machine's "
                       r"address\?$") as raised:
        sample4.run_docker_swarm(local_backend.batch_client, settings, swarm_settings(other_source))

    printed = capsys.readouterr().out
    assert type(raised.value.__cause__) is ConnectionError
    assert "from 192.0.2.0/24 only" in printed
    assert re.search(r"^Deleted pool ", printed, re.MULTILINE), printed
    assert_left_behind(local_backend, before, NOTHING)
    assert_no_process_left(local_backend, printed)


class FailTheNthRequest(FailRequests):
    """``FailRequests`` that lets the first ``skip`` matching requests through (e.g. the second task collection)."""

    def __init__(self, *arguments: object, skip: int = 0) -> None:
        super().__init__(*arguments)  # type: ignore[arg-type]
        self.skip = skip

    def _matches(self, request) -> bool:  # type: ignore[no-untyped-def]
        if not super()._matches(request):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return True


POOL, NODES, JOBS = r"^/pools$", r"^/pools/[^/]+/nodes$", r"^/jobs$"
TASK_COLLECTION = r"^/jobs/[^/]+/addtaskcollection$"
USERS, REMOTE_LOGIN = r"^/pools/[^/]+/nodes/[^/]+/users$", r"/remoteloginsettings$"


@needs_local_docker
@pytest.mark.parametrize(
    ("step", "method", "path", "when", "error", "skip"),
    [
        ("create the pool (answer lost)", "POST", POOL, "response", connection_lost, 0),
        ("Ctrl-C while waiting for the nodes", "GET", NODES, "request", KeyboardInterrupt, 0),
        ("create the job (answer lost)", "POST", JOBS, "response", connection_lost, 0),
        ("add the swarm-init task", "POST", TASK_COLLECTION, "request", connection_lost, 0),
        ("read the join token", "GET", r"/tasks/swarm-init/files/stdout\.txt$", "request", connection_lost, 0),
        ("add the join and container tasks (answer lost)", "POST", TASK_COLLECTION, "response", connection_lost, 1),
        ("Ctrl-C while reading the container task's output", "GET", r"/tasks/container-task/files/stdout\.txt$",
         "request", KeyboardInterrupt, 0),
        ("add the node user to the second node (answer lost)", "POST", USERS, "response", connection_lost, 1),
        ("read the remote login settings", "GET", REMOTE_LOGIN, "request", connection_lost, 0),
        ("Ctrl-C while reading the remote login settings", "GET", REMOTE_LOGIN, "request", KeyboardInterrupt, 0),
    ],
)
def test_a_failure_at_any_batch_step_still_cleans_up(
    local_backend: Backend, capsys: pytest.CaptureFixture, step: str, method: str, path: str, when: str,
    error: Callable[[], BaseException], skip: int,
) -> None:
    pool_id = unique_resource_name("sample4-failure")  # known even when the pool's creation is not printed
    settings = Backend("local", {**local_backend.environment, environment_variable_name("Pool", "pool_id"): pool_id}
                       ).settings(SAMPLE4)
    failure = FailTheNthRequest(method, path, error, when, skip=skip)
    before = take_inventory(local_backend)

    with create_batch_client(settings.batch, per_call_policies=[failure]) as batch_client:
        with pytest.raises(BaseException) as raised:
            sample4.run_docker_swarm(batch_client, settings, swarm_settings(local_backend))

    assert failure.failed >= 1, f"the failure was never injected at step {step!r}"
    if error is KeyboardInterrupt:
        assert isinstance(raised.value, KeyboardInterrupt)
    else:
        assert "injected failure" in str(raised.value)
    assert_left_behind(local_backend, before, NOTHING)
    assert_no_process_left(local_backend, capsys.readouterr().out, [pool_id])


@needs_local_docker
@pytest.mark.parametrize("step", ["describe_swarm", "start_container_and_read_its_output"])
def test_ctrl_c_while_the_tunnel_is_open_closes_it_and_cleans_up(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, step: str
) -> None:
    """Ctrl-C right after a real call through the tunnel: the tunnel closes, users, job and pool go."""
    settings = local_backend.settings(SAMPLE4)
    real_step = getattr(sample4, step)
    tunnels: list[sample4.SshTunnel] = []
    real_tunnel = sample4.SshTunnel

    def recorded_tunnel(*arguments, **keywords):  # type: ignore[no-untyped-def]
        tunnels.append(real_tunnel(*arguments, **keywords))
        return tunnels[-1]

    def step_then_ctrl_c(*arguments, **keywords):  # type: ignore[no-untyped-def]
        real_step(*arguments, **keywords)
        raise KeyboardInterrupt

    monkeypatch.setattr(sample4, "SshTunnel", recorded_tunnel)
    monkeypatch.setattr(sample4, step, step_then_ctrl_c)
    before = take_inventory(local_backend)

    with pytest.raises(KeyboardInterrupt):
        sample4.run_docker_swarm(local_backend.batch_client, settings, swarm_settings(local_backend))

    printed = capsys.readouterr().out
    [tunnel] = tunnels
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=5).close()
    assert re.search(r"^Deleted pool ", printed, re.MULTILINE), printed
    assert_left_behind(local_backend, before, NOTHING)
    assert_no_process_left(local_backend, printed)


@pytest.fixture
def kept_pool(local_backend: Backend) -> Iterator[list[str]]:
    """Pool ids a test kept, deleted at the end whatever happens."""
    kept: list[str] = []
    yield kept
    for pool_id in kept:
        local_backend.batch_client.begin_delete_pool(pool_id, polling_interval=0.2).result()


@pytest.fixture
def kept_job(local_backend: Backend) -> Iterator[list[str]]:
    """Job ids a test kept, deleted at the end whatever happens (one already gone is no error)."""
    kept: list[str] = []
    yield kept
    for job_id in kept:
        with contextlib.suppress(ResourceNotFoundError):
            local_backend.batch_client.begin_delete_job(job_id, polling_interval=0.2).result()


@needs_local_docker
def test_keep_resources_lists_the_pool_its_node_users_and_the_command_that_deletes_them(
    local_backend: Backend, tmp_path: Path, kept_pool: list[str], kept_job: list[str]
) -> None:
    """--keep-resources: what is left and costs money, who can still log in, and how to delete it all."""
    before = take_inventory(local_backend)

    run = run_sample(SAMPLE4, local_backend, tmp_path, "--keep-resources")

    assert run.returncode == 0, run.describe()
    [pool_id], [job_id] = created_ids(run.stdout, "pool"), created_ids(run.stdout, "job")
    kept_pool.append(pool_id)
    kept_job.append(job_id)
    assert run.stderr == ""
    assert re.search(rf"^Kept pool {pool_id} \({NODE_COUNT} node\(s\) of standard_d2s_v3\): they stay", run.stdout,
                     re.MULTILINE), run.stdout
    users = re.findall(r"^Kept user swarmadmin on node (\S+) \(an admin with this run's SSH key, until "
                       r"\d{4}-\d\d-\d\d \d\d:\d\d UTC or until the pool is deleted\)$", run.stdout, re.MULTILINE)
    assert sorted(users) == sorted(set(re.findall(r"^  \S+\s+(tvmps_\S+)", run.stdout, re.MULTILINE))), run.stdout
    assert len(users) == NODE_COUNT
    [command] = re.findall(r"^To delete them: (.+)$", run.stdout, re.MULTILINE)
    assert command.endswith(f" -m common.delete_resources --job {job_id} --pool {pool_id}"), command
    assert_left_behind(local_backend, before, Inventory(frozenset({job_id}), frozenset({pool_id}), frozenset()))

    deleted = subprocess.run(["/bin/sh", "-c", command], env=local_backend.environment, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=300)

    assert deleted.returncode == 0, f"{deleted.stdout}\n{deleted.stderr}"
    kept_pool.remove(pool_id)  # deleted by the command
    kept_job.remove(job_id)
    assert_left_behind(local_backend, before, NOTHING)
    assert_no_process_left(local_backend, run.stdout)


@needs_local_docker
def test_a_kept_pool_loses_the_node_user_and_keeps_its_swarm(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, kept_pool: list[str]
) -> None:
    """delete_pool = false keeps the pool (and its swarm) but not the node user: its key no longer logs in."""
    environment = {**local_backend.environment, environment_variable_name("Cleanup", "delete_pool"): "false"}
    settings = Backend("local", environment).settings(SAMPLE4)
    generated: list[tuple[object, str]] = []
    generate_ssh_key_pair = sample4.generate_ssh_key_pair
    monkeypatch.setattr(sample4, "generate_ssh_key_pair",
                        lambda: generated.append(generate_ssh_key_pair()) or generated[-1])
    before = take_inventory(local_backend)

    sample4.run_docker_swarm(local_backend.batch_client, settings, swarm_settings(local_backend))

    printed = capsys.readouterr().out
    [pool_id] = created_ids(printed, "pool")
    kept_pool.append(pool_id)
    assert f"Kept pool {pool_id}" in printed
    assert len(re.findall(r"^Deleted user swarmadmin on node ", printed, re.MULTILINE)) == NODE_COUNT
    assert_left_behind(local_backend, before, Inventory(frozenset(), frozenset({pool_id}), frozenset()))
    assert len(processes_marked(pool_markers(local_backend, printed))) >= 2 * NODE_COUNT, \
        "each node of the kept pool should still run its dockerd and containerd"
    node_addresses = re.findall(r"^  (\d+\.\d+\.\d+\.\d+)\s+tvmps_", printed, re.MULTILINE)
    assert len(node_addresses) == NODE_COUNT
    for address in node_addresses:  # the engines listen on the node addresses, as the tunnel reaches them
        engine = docker.DockerClient(base_url=f"tcp://{address}:2375", timeout=30)
        try:
            assert engine.info()["Swarm"]["LocalNodeState"] == "active"
            assert engine.containers.list(all=True) == [], f"containers left on the engine of {address}"
        finally:
            engine.close()
    [(private_key, _public_key)] = generated
    address, port = re.search(r"-> swarmadmin@(\S+):(\d+) ->", printed).groups()
    with pytest.raises(paramiko.AuthenticationException):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the test only checks the login
        try:
            client.connect(address, port=int(port), username="swarmadmin", pkey=paramiko.RSAKey(key=private_key),
                           look_for_keys=False, allow_agent=False, timeout=30)
        finally:
            client.close()


@needs_local_docker
@pytest.mark.parametrize(("error", "left_as"), [
    (connection_lost, "could not delete user swarmadmin on node "),
    (KeyboardInterrupt, "cleanup was stopped before deleting user swarmadmin on node "),
])
def test_node_users_a_kept_pool_still_has_are_named_as_left(
    local_backend: Backend, kept_pool: list[str], error: Callable[[], BaseException], left_as: str
) -> None:
    """A user delete that fails, or Ctrl-C that stops it: the report (and so the last line) names each user left."""
    environment = {**local_backend.environment, environment_variable_name("Cleanup", "delete_pool"): "false"}
    settings = Backend("local", environment).settings(SAMPLE4)
    failure = FailRequests("DELETE", r"^/pools/[^/]+/nodes/[^/]+/users/[^/]+$", error)
    resources = CreatedResources()

    with create_batch_client(settings.batch, per_call_policies=[failure]) as batch_client:
        with pytest.raises(BaseException) as raised:
            sample4.run_docker_swarm(batch_client, settings, swarm_settings(local_backend), resources=resources)

    [pool_id] = resources.pool_ids
    kept_pool.append(pool_id)
    assert failure.failed >= 1
    assert type(raised.value) is (KeyboardInterrupt if error is KeyboardInterrupt else RuntimeError), raised.value
    summary = resources.cleanup_report.summary()
    assert left_as in summary and summary.count("user swarmadmin on node ") == NODE_COUNT, summary
    assert f"kept pool {pool_id}" in summary


@needs_local_docker
def test_the_tunnel_script_reopens_the_tunnel_with_openssh(
    local_backend: Backend, tmp_path: Path, kept_pool: list[str]
) -> None:
    """write_tunnel_script: the script, the 0600 key and the pinned host key work with OpenSSH's ssh."""
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH's ssh client is not installed (.ci/run installs openssh-client)")
    overrides = {
        environment_variable_name("Tunnel", "write_tunnel_script"): "true",
        environment_variable_name("Tunnel", "script_directory"): str(tmp_path / "tunnel"),
        environment_variable_name("Cleanup", "delete_pool"): "false",
        environment_variable_name("Cleanup", "delete_node_user"): "false",
    }

    run = run_sample(SAMPLE4, local_backend, tmp_path, "-v", extra_environment=overrides)

    assert run.returncode == 0, run.describe()
    [pool_id] = created_ids(run.stdout, "pool")
    kept_pool.append(pool_id)
    assert "INFO __main__: Added user swarmadmin to node" in run.stderr  # the verbose log is there, with no secret
    script = tmp_path / "tunnel" / f"{pool_id}-tunnel.sh"
    key = tmp_path / "tunnel" / f"{pool_id}-ssh-key"
    assert f"Wrote {script} " in run.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert_secrets_never_printed(run.stdout, run.stderr)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    tunnel = subprocess.Popen(
        [str(script)], env={**os.environ, "LOCAL_PORT": str(local_port)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        info = wait_for(lambda: engine_info(f"tcp://127.0.0.1:{local_port}"),
                        "the Docker engine to answer through the script's tunnel", 60, poll=0.2,
                        tolerate=(docker.errors.DockerException, OSError))
        assert info["Swarm"]["Nodes"] == NODE_COUNT
    finally:
        os.killpg(tunnel.pid, signal.SIGTERM)
        tunnel.wait(timeout=30)


def engine_info(base_url: str) -> dict:
    """``docker info`` of the engine at ``base_url`` (the client asks for its API version as it is made)."""
    engine = docker.DockerClient(base_url=base_url, timeout=30)
    try:
        return engine.info()
    finally:
        engine.close()


def test_a_tunnel_script_with_a_pool_that_would_be_deleted_is_a_configuration_error(tmp_path: Path) -> None:
    """Refused before anything is sent (no stack behind the shipped configuration is needed)."""
    offline = Backend("offline", environment_without_overrides())
    variable = environment_variable_name("Tunnel", "write_tunnel_script")

    run = run_sample(SAMPLE4, offline, tmp_path, extra_environment={variable: "true"})

    assert run.returncode == 2, run.describe()
    assert run.stderr == (
        f"{SAMPLE4}: error: configuration error: {sample_configuration_path(SAMPLE4)}: [Tunnel] write_tunnel_script: "
        "the tunnel needs the pool and the node user: set [Cleanup] delete_pool = false and delete_node_user = false, "
        "or run with --keep-resources\n"
    )
    assert run.stdout == ""


@needs_local_docker
def test_a_rerun_on_a_kept_pool_reuses_its_swarm_and_its_user(
    local_backend: Backend, tmp_path: Path, kept_pool: list[str]
) -> None:
    """Every step is idempotent: a named, kept pool already in a swarm, with the user, runs the story again."""
    pool_id = unique_resource_name("sample4-rerun")
    kept_pool.append(pool_id)
    keep_everything = {
        environment_variable_name("Pool", "pool_id"): pool_id,
        environment_variable_name("Cleanup", "delete_pool"): "false",
        environment_variable_name("Cleanup", "delete_node_user"): "false",
    }

    first = run_sample(SAMPLE4, local_backend, tmp_path, extra_environment=keep_everything)
    second = run_sample(SAMPLE4, local_backend, tmp_path, extra_environment=keep_everything)

    assert first.returncode == 0, first.describe()
    assert second.returncode == 0, second.describe()
    assert f"Created pool {pool_id} " in first.stdout and f"Reusing pool {pool_id} " in second.stdout
    for run in (first, second):
        assert f"swarm active, {NODE_COUNT} node(s), 1 manager(s)" in run.stdout
        assert f"through the tunnel ----\n{CONTAINER_OUTPUT}\n" in run.stdout
        assert len(re.findall(r"^Kept user swarmadmin on node ", run.stdout, re.MULTILINE)) == NODE_COUNT
