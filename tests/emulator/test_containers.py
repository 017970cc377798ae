"""Container pools: a real Docker engine per node, images provided locally, container tasks.

Everything here runs real dockerd processes (root, Debian's docker.io); where the machine cannot,
the module is skipped with the emulator's own reason, which is also what a container pool gets
as its 400 there.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
from pathlib import Path
from typing import Optional

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from localbatch import LocalBatchServer
from localbatch.node.engines import cgroup_parent, docker_cli, docker_unavailable_reason
from localbatch.node.layout import EnginePaths, NodeLayout
from localbatch.node.network import random_node_subnet

from .conftest import fast_timings
from .support import (LRO_POLLING, RunningEmulator, batch_client, command_lines, create_job, delete_pool_and_wait, pool_options, read_task_file,
                      reboot_options, run_task, unique_id, wait_for, wait_for_nodes, wait_for_task)

pytestmark = pytest.mark.skipif(docker_unavailable_reason() is not None,
                                reason=str(docker_unavailable_reason()))

BUSYBOX = "busybox:latest"
# Bound of a wait for container nodes: a real dockerd starts on each (about 2 s on a quiet machine).
ENGINE_WAIT = 120.0


def container_vm_configuration(*images: str) -> models.VirtualMachineConfiguration:
    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        container_configuration=models.BatchContainerConfiguration(
            type="dockerCompatible", container_image_names=list(images) or None))


def container_pool_options(pool_id: str, nodes: int, *images: str, **extra) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=nodes,
                                         virtual_machine_configuration=container_vm_configuration(*images), **extra)


def create_container_pool(client, pool_id: str, nodes: int, *images: str,
                          states: tuple[str, ...] = ("idle",)) -> list[models.BatchNode]:
    client.create_pool(container_pool_options(pool_id, nodes, *images))
    return wait_for_nodes(client, pool_id, nodes, states=states, timeout=ENGINE_WAIT)



def engine_of(server: LocalBatchServer, pool_id: str, node_id: str) -> EnginePaths:
    return NodeLayout(os.path.join(server.location, "nodes")).engine(pool_id, node_id)


def docker(engine: EnginePaths, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([docker_cli(), "--host", engine.docker_host, *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                           "DOCKER_CONFIG": os.path.join(engine.directory, "client")})


def processes_of(engine: EnginePaths) -> list[str]:
    """Command lines of every process that belongs to the engine (dockerd, containerd, shims)."""
    return [command for command in command_lines().values() if engine.run_dir in command or engine.directory in command]


def mounts_of(engine: EnginePaths) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if engine.run_dir in line.split()[4] or engine.directory in line.split()[4]]


def container_task(client, job_id: str, command_line: str, image: str = BUSYBOX, run_options: Optional[str] = None,
                   working_directory: Optional[str] = None, **extra) -> models.BatchTask:
    return run_task(client, job_id, command_line, container_settings=models.BatchTaskContainerSettings(
        image_name=image, container_run_options=run_options, working_directory=working_directory), **extra)


@pytest.fixture(scope="module")
def container_pool(client) -> str:
    """A container pool of one idle node, busybox loaded, shared by the module's task tests."""
    pool_id = unique_id("containers")
    create_container_pool(client, pool_id, 1, BUSYBOX)
    return pool_id


# ---- engines ----------------------------------------------------------------------------------------
def test_each_node_runs_its_own_engine_with_the_pool_images_loaded_before_it_is_idle(client, server, container_pool):
    configuration = client.get_pool(container_pool).virtual_machine_configuration.container_configuration
    assert (configuration.type, configuration.container_image_names) == ("dockerCompatible", [BUSYBOX])
    node = next(iter(client.list_nodes(container_pool)))
    assert node.state == "idle" and not node.errors
    engine = engine_of(server, container_pool, node.id)
    listed = docker(engine, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    assert listed.returncode == 0, listed.stderr
    assert BUSYBOX in listed.stdout.split()
    assert any(command.startswith(("dockerd", "/usr/sbin/dockerd")) and engine.data_root in command
               for command in processes_of(engine))


def test_tasks_and_start_tasks_reach_the_node_engine_through_docker_host(client, server, container_pool):
    node_id = next(iter(client.list_nodes(container_pool))).id
    engine = engine_of(server, container_pool, node_id)
    job_id = create_job(client, container_pool)
    task = run_task(client, job_id, "/bin/sh -c 'echo \"$DOCKER_HOST\"; docker image inspect --format found busybox'")
    assert task.execution_info.result == "success", read_task_file(client, job_id, task.id, "stderr.txt")
    assert read_task_file(client, job_id, task.id).split() == [engine.docker_host, "found"]


def test_start_tasks_of_container_pools_see_the_engine_too(client, server):
    pool_id = unique_id("containers")
    client.create_pool(container_pool_options(pool_id, 1, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'docker version --format {{.Server.Os}}'", wait_for_success=True)))
    node = wait_for_nodes(client, pool_id, 1, timeout=ENGINE_WAIT)[0]
    assert node.start_task_info.exit_code == 0
    output = b"".join(client.download_node_file(pool_id, node.id, "startup/stdout.txt")).decode()
    assert output.strip() == "linux"
    delete_pool_and_wait(client, pool_id, ENGINE_WAIT)


def test_deleting_a_pool_stops_its_engines_and_leaves_no_process_mount_or_container(client, server):
    pool_id = unique_id("containers")
    nodes = create_container_pool(client, pool_id, 2, BUSYBOX)
    engines = [engine_of(server, pool_id, node.id) for node in nodes]
    assert len({engine.socket for engine in engines}) == 2
    job_id = create_job(client, pool_id)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="sleeper", command_line="sleep 600",
        container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX)))
    wait_for_task(client, job_id, "sleeper", states=("running",))
    wait_for(lambda: any(container_processes(engine) for engine in engines), "the task's container to run")
    delete_pool_and_wait(client, pool_id, ENGINE_WAIT)
    for engine in engines:
        assert processes_of(engine) == []
        assert mounts_of(engine) == []
        assert not os.path.exists(engine.run_dir)
        wait_for(lambda: not os.path.exists(engine.directory), "the engine's data to be removed with its node")
    assert all(container_processes(engine) == [] for engine in engines)


def test_an_image_that_cannot_be_provided_makes_the_node_unusable_as_a_failed_pull_does(client, server):
    pool_id = unique_id("containers")
    node = create_container_pool(client, pool_id, 1, "contoso.azurecr.io/app:1.0", states=("unusable",))[0]
    error = node.errors[0]
    assert error.code == "ContainerInvalidImage"
    details = {detail.name: detail.value for detail in error.error_details}
    assert details["ContainerImage"] == "contoso.azurecr.io/app:1.0"
    assert "busybox:latest" in details["Message"]  # says what the local stack provides
    engine = engine_of(server, pool_id, node.id)
    delete_pool_and_wait(client, pool_id, ENGINE_WAIT)
    assert processes_of(engine) == []


# ---- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("container_type, status, detail", [
    ("criCompatible", 501, ("Feature", "virtualMachineConfiguration.containerConfiguration.type criCompatible")),
    ("kubernetes", 400, ("PropertyName", "virtualMachineConfiguration.containerConfiguration.type")),
], ids=["cri-not-emulated", "unknown-type"])
def test_only_docker_compatible_container_configurations_are_run(client, container_type, status, detail):
    options = container_pool_options(unique_id("pool"), 0)
    options.virtual_machine_configuration.container_configuration.type = container_type
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(options)
    assert caught.value.status_code == status
    details = {d.code: d.message for d in caught.value.error.details}
    assert details[detail[0]] == detail[1]


def test_a_container_pool_needs_a_docker_compatible_image(client):
    options = pool_options(unique_id("pool"), 0)
    options.virtual_machine_configuration.container_configuration = models.BatchContainerConfiguration(
        type="dockerCompatible")
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(options)
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "virtualMachineConfiguration.containerConfiguration.type"
    assert "DockerCompatible" in details["Reason"]


def test_container_settings_need_a_container_pool(client, pool_id):
    job_id = create_job(client, pool_id)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="t", command_line="/bin/true", container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX)))
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "containerSettings"
    assert "containerConfiguration" in details["Reason"]


# ---- container tasks --------------------------------------------------------------------------------
def test_a_container_task_runs_in_the_image_with_the_batch_environment_mounts_and_exit_code(client, container_pool):
    job_id = create_job(client, container_pool)
    task = container_task(
        client, job_id,
        "/bin/sh -c 'pwd; echo \"$AZ_BATCH_TASK_ID $GREETING\"; readlink /bin/sh; "
        "echo data > out.txt; echo shared > \"$AZ_BATCH_NODE_SHARED_DIR/$AZ_BATCH_TASK_ID\"; echo oops >&2; exit 3'",
        environment_settings=[models.EnvironmentSetting(name="GREETING", value="hello")])
    info = task.execution_info
    assert (info.exit_code, info.result, info.failure_info.code) == (3, "failure", "FailureExitCode")
    working_dir, identity, shell = read_task_file(client, job_id, task.id).splitlines()
    assert working_dir.endswith(f"/workitems/{job_id}/job-1/{task.id}/wd")
    assert identity == f"{task.id} hello"
    assert shell == "/bin/busybox"  # the busybox image, not this machine's /bin/sh
    assert read_task_file(client, job_id, task.id, "stderr.txt") == "oops\n"
    assert read_task_file(client, job_id, task.id, "wd/out.txt") == "data\n"  # the task directory is mounted
    host = run_task(client, job_id, f"/bin/sh -c 'cat \"$AZ_BATCH_NODE_SHARED_DIR/{task.id}\"'")
    assert read_task_file(client, job_id, host.id) == "shared\n"  # and so is the node's shared directory


def test_a_container_task_reports_its_container_as_docker_does_and_other_tasks_none(client, server, container_pool):
    node_id = next(iter(client.list_nodes(container_pool))).id
    engine = engine_of(server, container_pool, node_id)
    job_id = create_job(client, container_pool)
    # The task sees its own container's id in its mounts (the engine's containers/<id>/hostname).
    task = container_task(client, job_id, "/bin/sh -c 'cat /proc/self/mountinfo; exit 3'")
    container = task.execution_info.container_info
    assert container is not None and len(container.container_id) == 64
    assert f"/containers/{container.container_id}/" in read_task_file(client, job_id, task.id)
    assert (container.state, container.error) == ("exited", None)
    assert docker(engine, "ps", "--all", "--quiet").stdout.strip() == ""  # reported, then removed
    recent = {entry.task_id: entry for entry in client.get_node(container_pool, node_id).recent_tasks}
    assert recent[task.id].execution_info.container_info.container_id == container.container_id
    host = run_task(client, job_id, "/bin/true")
    assert host.execution_info.container_info is None
    # A container that could not be created was never there to report.
    refused = container_task(client, job_id, "/bin/true", run_options="--no-such-option")
    assert refused.execution_info.failure_info.code == "ContainerInvalidSettings"
    assert refused.execution_info.container_info is None


def test_the_image_default_working_directory_and_run_options(client, container_pool):
    job_id = create_job(client, container_pool)
    node_id = next(iter(client.list_nodes(container_pool))).id
    task = container_task(client, job_id, "/bin/sh -c 'pwd; id -u; echo \"$FROM_OPTIONS\"; hostname'",
                          run_options="--user 65534 --env FROM_OPTIONS=yes", working_directory="containerImageDefault")
    assert task.execution_info.result == "success", read_task_file(client, job_id, task.id, "stderr.txt")
    assert task.execution_info.exit_code == 0
    # on the node's network, the container has the node's host name
    assert read_task_file(client, job_id, task.id).split() == ["/", "65534", "yes", f"tvmps-{node_id[6:18]}"]


def test_a_task_image_that_cannot_be_provided_fails_as_a_failed_pull(client, container_pool):
    job_id = create_job(client, container_pool)
    task = container_task(client, job_id, "/bin/true", image="mcr.microsoft.com/azure-cli:2.60")
    info = task.execution_info
    assert info.result == "failure" and info.exit_code is None
    assert (info.failure_info.category, info.failure_info.code) == ("usererror", "ContainerInvalidImage")
    assert task.container_settings.image_name == "mcr.microsoft.com/azure-cli:2.60"  # echoed as sent
    details = {detail.name: detail.value for detail in info.failure_info.details}
    assert details["ContainerImage"] == "mcr.microsoft.com/azure-cli:2.60"


def test_invalid_run_options_fail_the_task_with_the_engine_message(client, container_pool):
    job_id = create_job(client, container_pool)
    task = container_task(client, job_id, "/bin/true", run_options="--no-such-option")
    failure = task.execution_info.failure_info
    assert failure.code == "ContainerInvalidSettings"
    details = {detail.name: detail.value for detail in failure.details}
    assert details["ContainerSettings"] == "--no-such-option"
    assert "no-such-option" in details["Message"]


def test_a_running_container_task_shows_its_running_container(client, server, container_pool):
    node_id = next(iter(client.list_nodes(container_pool))).id
    engine = engine_of(server, container_pool, node_id)
    job_id = create_job(client, container_pool)
    # In the node's shared directory, which the container sees at the same path.
    gate = Path(NodeLayout(os.path.join(server.location, "nodes")).shared_dir(container_pool, node_id)) / job_id
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="gated", command_line=f"/bin/sh -c 'while [ ! -e {gate} ]; do sleep 0.02; done'",
        container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX)))
    try:
        running = wait_for(lambda: client.get_task(job_id, "gated").execution_info.container_info,
                           "the running task to show its container", ENGINE_WAIT)
        assert running.state == "running" and running.error is None
        listed = docker(engine, "ps", "--no-trunc", "--format", "{{.ID}} {{.State}}").stdout.split()
        assert listed == [running.container_id, "running"]
        [entry] = [t for t in client.get_node(container_pool, node_id).recent_tasks if t.task_id == "gated"]
        assert (entry.task_state, entry.execution_info.container_info.state) == ("running", "running")
    finally:
        gate.touch()
    done = wait_for_task(client, job_id, "gated").execution_info.container_info
    assert (done.container_id, done.state) == (running.container_id, "exited")


def test_a_terminated_container_task_leaves_no_container(client, server, container_pool):
    node_id = next(iter(client.list_nodes(container_pool))).id
    job_id = create_job(client, container_pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="long", command_line="sleep 600",
        container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX)))
    wait_for_task(client, job_id, "long", states=("running",))
    client.terminate_task(job_id, "long")
    task = wait_for_task(client, job_id, "long")
    assert task.execution_info.failure_info.code == "TaskEnded"
    engine = engine_of(server, container_pool, node_id)
    wait_for(lambda: docker(engine, "ps", "--all", "--quiet").stdout.strip() == "",
             "the terminated task's container to be removed")


# ---- restarts ---------------------------------------------------------------------------------------
def test_engines_stop_with_the_emulator_and_come_back_with_their_data_after_a_restart(tmp_path):
    location = str(tmp_path / "localbatch")
    pool_id = unique_id("containers")
    with LocalBatchServer(location, timings=fast_timings()) as first, batch_client(first.url) as client:
        node = create_container_pool(client, pool_id, 1, BUSYBOX)[0]
        engine = engine_of(first, pool_id, node.id)
        job_id = create_job(client, pool_id)
        tagged = run_task(client, job_id, "docker tag busybox:latest kept:1")
        assert tagged.execution_info.result == "success"
    assert processes_of(engine) == [] and mounts_of(engine) == []
    with LocalBatchServer(location, timings=fast_timings()) as second, batch_client(second.url) as client:
        wait_for_nodes(client, pool_id, 1, timeout=ENGINE_WAIT)
        kept = run_task(client, job_id, "docker image inspect --format kept kept:1")
        assert read_task_file(client, job_id, kept.id).strip() == "kept"  # the engine's data stayed with the node
        ran = container_task(client, job_id, "echo back")
        assert read_task_file(client, job_id, ran.id) == "back\n"
        delete_pool_and_wait(client, pool_id, ENGINE_WAIT)
    assert processes_of(engine) == []


def test_a_rebooted_node_restarts_its_engine_keeping_its_data(client, server, container_pool):
    node_id = next(iter(client.list_nodes(container_pool))).id
    engine = engine_of(server, container_pool, node_id)
    assert docker(engine, "tag", BUSYBOX, "before-reboot:1").returncode == 0
    pid_before = Path(engine.pidfile).read_text().strip()
    client.begin_reboot_node(container_pool, node_id, reboot_options(), polling_interval=LRO_POLLING).result()
    wait_for_nodes(client, container_pool, 1, timeout=ENGINE_WAIT)
    assert Path(engine.pidfile).read_text().strip() != pid_before  # a new dockerd
    assert not os.path.exists(f"/proc/{pid_before}/cmdline") or engine.run_dir not in \
        Path(f"/proc/{pid_before}/cmdline").read_bytes().decode(errors="replace")
    after = docker(engine, "image", "inspect", "--format", "{{.Id}}", "before-reboot:1")
    assert after.returncode == 0, after.stderr  # its data stayed


def container_processes(engine: EnginePaths) -> list[str]:
    """Processes still in the cgroups of the engine's containers (every hierarchy)."""
    found = []
    for root in ["/sys/fs/cgroup", *(str(path) for path in Path("/sys/fs/cgroup").iterdir() if path.is_dir())]:
        for procs in Path(root, cgroup_parent(engine)).glob("**/cgroup.procs"):
            found += procs.read_text().split()
    return found


def test_a_start_task_with_container_settings_runs_in_a_container_before_the_node_is_idle(client):
    pool_id = unique_id("containers")
    client.create_pool(container_pool_options(pool_id, 1, BUSYBOX, start_task=models.BatchStartTask(
        command_line="/bin/sh -c 'readlink /bin/sh; echo \"$AZ_BATCH_POOL_ID\"'", wait_for_success=True,
        container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX))))
    node = wait_for_nodes(client, pool_id, 1, timeout=ENGINE_WAIT)[0]
    assert node.start_task_info.exit_code == 0
    output = b"".join(client.download_node_file(pool_id, node.id, "startup/stdout.txt")).decode()
    assert output.split() == ["/bin/busybox", pool_id]
    container = node.start_task_info.container_info
    assert len(container.container_id) == 64 and container.state == "exited"
    delete_pool_and_wait(client, pool_id, ENGINE_WAIT)


def test_engines_die_with_a_killed_emulator_and_the_next_start_cleans_up_after_them(tmp_path):
    location = tmp_path / "localbatch"
    pool_id = unique_id("containers")
    emulator = RunningEmulator(location)
    try:
        with batch_client(emulator.url()) as client:
            node = create_container_pool(client, pool_id, 1, BUSYBOX)[0]
            job_id = create_job(client, pool_id)
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="long", command_line="sleep 600",
                container_settings=models.BatchTaskContainerSettings(image_name=BUSYBOX)))
            wait_for_task(client, job_id, "long", states=("running",))
        engine = NodeLayout(str(location / "nodes")).engine(pool_id, node.id)
        emulator.process.kill()
        emulator.process.wait()
        wait_for(lambda: processes_of(engine) == [], "the engine of the killed emulator to stop", ENGINE_WAIT)
    finally:
        emulator.kill()
    restarted = RunningEmulator(location)
    try:
        with batch_client(restarted.url()) as client:
            wait_for_task(client, job_id, "long", states=("running",), timeout=ENGINE_WAIT)  # requeued, run again
            assert client.get_task(job_id, "long").execution_info.requeue_count == 1
            delete_pool_and_wait(client, pool_id, ENGINE_WAIT)
        wait_for(lambda: processes_of(engine) == [], "the engine to stop with its pool", ENGINE_WAIT)
        assert mounts_of(engine) == []
        assert container_processes(engine) == []
    finally:
        restarted.kill()


def test_engines_listen_on_their_node_address_and_two_nodes_form_a_swarm(client, server):
    pool_id = unique_id("containers")
    manager, worker = sorted(create_container_pool(client, pool_id, 2, BUSYBOX),
                             key=lambda node: tuple(int(part) for part in node.ip_address.split(".")))
    engines = {node.ip_address: f"tcp://{node.ip_address}:2375" for node in (manager, worker)}
    for address, url in engines.items():
        assert docker_at(url, "version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"
    initialised = docker_at(engines[manager.ip_address], "swarm", "init", "--advertise-addr", manager.ip_address,
                            "--listen-addr", f"{manager.ip_address}:2377")
    assert initialised.returncode == 0, initialised.stderr
    token = docker_at(engines[manager.ip_address], "swarm", "join-token", "--quiet", "worker").stdout.strip()
    joined = docker_at(engines[worker.ip_address], "swarm", "join", "--token", token, "--advertise-addr",
                       worker.ip_address, "--listen-addr", f"{worker.ip_address}:2377", f"{manager.ip_address}:2377")
    assert joined.returncode == 0, joined.stderr
    listed = docker_at(engines[manager.ip_address], "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
    # each engine has its node's own host name, so the swarm tells the nodes apart
    assert sorted(listed.stdout.splitlines()) == sorted(f"tvmps-{node.id[6:18]} Ready" for node in (manager, worker))
    engine_paths = [engine_of(server, pool_id, node.id) for node in (manager, worker)]
    delete_pool_and_wait(client, pool_id, ENGINE_WAIT)
    for engine in engine_paths:
        assert processes_of(engine) == [] and mounts_of(engine) == []


def docker_at(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([docker_cli(), "--host", url, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


@pytest.mark.parametrize("image", ["--privileged", "busy box", ""], ids=["option", "space", "empty"])
def test_an_image_name_that_is_not_a_reference_is_refused(client, container_pool, image):
    job_id = create_job(client, container_pool)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="t", command_line="/bin/true", container_settings=models.BatchTaskContainerSettings(image_name=image)))
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "containerSettings.imageName"


def test_host_batch_bind_mounts_mount_only_the_data_paths_named(client, container_pool):
    job_id = create_job(client, container_pool)
    task = run_task(client, job_id, "/bin/sh -c 'ls \"$AZ_BATCH_NODE_ROOT_DIR\"; echo out > result.txt; "
                                    "touch \"$AZ_BATCH_NODE_SHARED_DIR/x\" || echo shared is read-only'",
                    container_settings=models.BatchTaskContainerSettings(
                        image_name=BUSYBOX, container_host_batch_bind_mounts=[
                            models.ContainerHostBatchBindMountEntry(source="Task"),
                            models.ContainerHostBatchBindMountEntry(source="Shared", is_read_only=True)]))
    assert task.execution_info.exit_code == 0, read_task_file(client, job_id, task.id, "stderr.txt")
    lines = read_task_file(client, job_id, task.id).splitlines()
    assert lines == ["shared", "workitems", "shared is read-only"]  # nothing else of the node root
    assert read_task_file(client, job_id, task.id, "wd/result.txt") == "out\n"


def test_over_ssh_a_node_user_sees_the_engine_and_a_tunnel_to_localhost_2375_reaches_it(client, server):
    asyncssh = pytest.importorskip("asyncssh")
    if server.service.context.services.ssh_unavailable:
        pytest.skip(server.service.context.services.ssh_unavailable)
    pool_id = unique_id("containers")
    client.create_pool(container_pool_options(
        pool_id, 1, BUSYBOX, network_configuration=models.NetworkConfiguration(
            endpoint_configuration=models.BatchPoolEndpointConfiguration(inbound_nat_pools=[models.BatchInboundNatPool(
                name="ssh", protocol="tcp", backend_port=22, frontend_port_range_start=40000,
                frontend_port_range_end=40099)]))))
    node = wait_for_nodes(client, pool_id, 1, timeout=ENGINE_WAIT)[0]
    key = asyncssh.generate_private_key("ssh-ed25519")
    client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
        name="swarm", is_admin=True, ssh_public_key=key.export_public_key().decode().strip()))
    login = client.get_node_remote_login_settings(pool_id, node.id)

    async def session() -> tuple[str, bytes]:
        async with asyncssh.connect(login.remote_login_ip_address, login.remote_login_port, username="swarm",
                                    client_keys=[key], known_hosts=None, connect_timeout=60) as connection:
            ran = await connection.run("echo $DOCKER_HOST; docker image inspect --format found busybox", check=False,
                                       timeout=60)
            reader, writer = await connection.open_connection("localhost", 2375)
            writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return str(ran.stdout), answer
    output, answer = asyncio.run(session())
    assert output.split() == [engine_of(server, pool_id, node.id).docker_host, "found"]
    assert answer.startswith(b"HTTP/1.0 200 OK") and answer.endswith(b"OK")
    delete_pool_and_wait(client, pool_id, ENGINE_WAIT)


def test_a_pool_update_cannot_slip_in_a_container_configuration_its_image_cannot_run(client, pool_id):
    with pytest.raises(HttpResponseError) as caught:
        client.update_pool(pool_id, models.BatchPoolUpdateOptions(
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(
                    publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
                node_agent_sku_id="batch.node.ubuntu 22.04",
                container_configuration=models.BatchContainerConfiguration(type="dockerCompatible"))))
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "virtualMachineConfiguration.containerConfiguration.type"


def test_an_engine_that_cannot_start_makes_its_node_unusable_with_the_reason(tmp_path):
    subnet = random_node_subnet()
    first_node_address = str(ipaddress.ip_network(subnet).network_address + 2)
    with socket.socket() as squatter:  # something else already holds the engine's port on the node's address
        squatter.bind((first_node_address, 2375))
        squatter.listen()
        with LocalBatchServer(str(tmp_path / "localbatch"), timings=fast_timings(), node_subnet=subnet) as server, \
                batch_client(server.url) as client:
            pool_id = unique_id("containers")
            node = create_container_pool(client, pool_id, 1, BUSYBOX, states=("unusable",))[0]
            assert node.ip_address == first_node_address
            error = node.errors[0]
            assert error.code == "ContainerEngineUnavailable"
            assert "address already in use" in error.error_details[0].value
            engine = engine_of(server, pool_id, node.id)
            assert processes_of(engine) == []
            delete_pool_and_wait(client, pool_id, ENGINE_WAIT)
    assert mounts_of(engine) == [] and not os.path.exists(engine.run_dir)
