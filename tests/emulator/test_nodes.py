"""Compute nodes: list, get, reboot, scheduling, node users and remote login, through the SDK."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from .support import (LRO_POLLING, create_job, create_pool_and_wait, reboot_options, ubuntu_configuration,
                      unique_id, wait_for, wait_for_nodes,
                      wait_for_task)


def test_list_nodes_shows_realistic_nodes(server, client, pool_id):
    nodes = list(client.list_nodes(pool_id))
    assert len(nodes) == 2
    assert len({n.id for n in nodes}) == 2 and len({n.ip_address for n in nodes}) == 2
    for node in nodes:
        assert re.fullmatch(r"tvmps_[0-9a-f]{64}_d", node.id)
        assert node.affinity_id == f"TVM:{node.id}"
        assert server.network.contains(node.ip_address)  # its own loopback address (test_node_network.py)
        assert node.url.endswith(f"/pools/{pool_id}/nodes/{node.id}")
        assert node.vm_size == "standard_d2s_v3"
        assert node.is_dedicated is True
        assert node.scheduling_state == "enabled"
        assert node.node_agent_info.version
        assert node.last_boot_time is not None and node.allocation_time is not None
        assert node.virtual_machine_info.image_reference.offer == "0001-com-ubuntu-server-jammy"


def test_list_nodes_with_filter_and_select(client, pool_id):
    idle = list(client.list_nodes(pool_id, filter="state eq 'idle'", select=["id", "state"]))
    assert idle and all(node.state == "idle" and node.ip_address is None for node in idle)
    assert list(client.list_nodes(pool_id, filter="state eq 'starttaskfailed'")) == []


def test_get_node_and_node_not_found(client, pool_id):
    node = next(iter(client.list_nodes(pool_id)))
    fetched = client.get_node(pool_id, node.id)
    assert fetched.id == node.id and fetched.ip_address == node.ip_address
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_node(pool_id, "tvmps_nothing_d")
    assert caught.value.error.code == "NodeNotFound"
    with pytest.raises(ResourceNotFoundError) as caught:
        list(client.list_nodes("no-such-pool"))
    assert caught.value.error.code == "PoolNotFound"


def test_new_nodes_go_through_creating_and_starting(client, tmp_path):
    pool = unique_id("boot")
    gate = tmp_path / "gate"
    # The start task runs until the test releases it, so the node's waitingforstarttask state cannot be missed.
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=ubuntu_configuration(),
        start_task=models.BatchStartTask(command_line=f"/bin/bash -c 'while [ ! -e {gate} ]; do sleep 0.02; done'")))
    try:
        wait_for_nodes(client, pool, 1, states=("waitingforstarttask",))
    finally:
        gate.touch()
    [node] = wait_for_nodes(client, pool, 1, states=("idle",))
    assert node.start_task_info.state == "completed" and node.start_task_info.exit_code == 0


# ---- reboot -------------------------------------------------------------------------------------
def test_reboot_requeues_running_tasks_and_they_run_again(server, client, tmp_path):
    pool = unique_id("reboot")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    starts = tmp_path / "starts"
    gate = tmp_path / "gate"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="survivor",
        command_line=f"/bin/bash -c 'echo run >> {starts}; while [ ! -e {gate} ]; do sleep 0.02; done'"))
    wait_for(lambda: starts.exists() and starts.read_text(), "the task's program to start")

    with server.holding("node_rebooting"):
        poller = client.begin_reboot_node(pool, node.id, reboot_options(), polling_interval=LRO_POLLING)
        assert client.get_node(pool, node.id).state == "rebooting"
        task = wait_for_task(client, job_id, "survivor", states=("active",))  # once its process is seen to end
        assert task.execution_info.requeue_count == 1
        gate.touch()
    poller.result()
    rebooted = wait_for_nodes(client, pool, 1, states=("idle", "running"))[0]
    assert rebooted.last_boot_time > node.last_boot_time
    task = wait_for_task(client, job_id, "survivor")
    assert task.execution_info.exit_code == 0
    assert task.execution_info.requeue_count == 1
    assert starts.read_text().count("run") == 2


def test_reboot_with_terminate_ends_running_tasks(client, tmp_path):
    pool = unique_id("reboot")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    client.create_task(job_id, models.BatchTaskCreateOptions(id="victim", command_line="sleep 60"))
    wait_for_task(client, job_id, "victim", states=("running",))
    client.begin_reboot_node(pool, node.id, reboot_options("terminate"),
                             polling_interval=LRO_POLLING).result()
    task = wait_for_task(client, job_id, "victim")
    assert task.execution_info.result == "failure"
    assert task.execution_info.requeue_count == 0


def test_reboot_a_node_that_is_still_booting_is_a_conflict(client):
    pool = unique_id("reboot")
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=ubuntu_configuration(),
        start_task=models.BatchStartTask(command_line="sleep 30")))
    node = wait_for(lambda: next((n for n in client.list_nodes(pool) if n.state == "waitingforstarttask"), None),
                    "the start task to run")
    with pytest.raises(ResourceExistsError) as caught:
        client.begin_reboot_node(pool, node.id, reboot_options(), polling_interval=LRO_POLLING)
    assert caught.value.status_code == 409


# ---- scheduling ---------------------------------------------------------------------------------
def test_disable_scheduling_requeues_and_keeps_new_tasks_off_the_node(client, tmp_path):
    pool = unique_id("sched")
    [node] = create_pool_and_wait(client, pool, nodes=1, task_slots_per_node=2)
    job_id = create_job(client, pool)
    starts = tmp_path / "starts"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="moved", command_line=f"/bin/bash -c 'echo run >> {starts}; sleep 60'"))
    wait_for(lambda: starts.exists() and starts.read_text(), "the task's program to start")

    client.disable_node_scheduling(pool, node.id, models.BatchNodeDisableSchedulingOptions(
        node_disable_scheduling_option="requeue"))
    disabled = client.get_node(pool, node.id)
    assert disabled.scheduling_state == "disabled"
    task = wait_for_task(client, job_id, "moved", states=("active",))
    assert task.execution_info.requeue_count == 1
    client.create_task(job_id, models.BatchTaskCreateOptions(id="waits", command_line="/bin/true"))
    assert client.get_task(job_id, "waits").state == "active"
    assert wait_for(lambda: client.get_node(pool, node.id).state == "idle", "the node to be idle")

    client.enable_node_scheduling(pool, node.id)
    assert client.get_node(pool, node.id).scheduling_state == "enabled"
    assert wait_for_task(client, job_id, "waits").execution_info.exit_code == 0
    assert wait_for_task(client, job_id, "moved", states=("running",)).execution_info.requeue_count == 1
    client.terminate_task(job_id, "moved")


def test_disable_scheduling_with_task_completion_lets_running_tasks_finish(client, tmp_path):
    pool = unique_id("sched")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    gate = tmp_path / "gate"
    client.create_task(job_id, models.BatchTaskCreateOptions(
        id="finishes", command_line=f"/bin/bash -c 'while [ ! -e {gate} ]; do sleep 0.02; done; echo finished'"))
    wait_for_task(client, job_id, "finishes", states=("running",))
    client.disable_node_scheduling(pool, node.id, models.BatchNodeDisableSchedulingOptions(
        node_disable_scheduling_option="taskcompletion"))
    assert client.get_task(job_id, "finishes").state == "running"
    gate.touch()
    task = wait_for_task(client, job_id, "finishes")
    assert task.execution_info.exit_code == 0 and task.execution_info.requeue_count == 0


# ---- node users and remote login ---------------------------------------------------------------
def test_node_user_lifecycle(client, pool_id):
    node = next(iter(client.list_nodes(pool_id)))
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(
        name="alice", is_admin=True, password="S3cret!pass", expiry_time=expiry))
    with pytest.raises(ResourceExistsError) as caught:
        client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(name="alice", password="x"))
    assert caught.value.error.code == "NodeUserExists"
    client.replace_node_user(pool_id, node.id, "alice", models.BatchNodeUserReplaceOptions(
        ssh_public_key="ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 alice@example"))
    client.delete_node_user(pool_id, node.id, "alice")
    with pytest.raises(ResourceNotFoundError) as caught:
        client.delete_node_user(pool_id, node.id, "alice")
    assert caught.value.error.code == "NodeUserNotFound"
    with pytest.raises(ResourceNotFoundError) as caught:
        client.replace_node_user(pool_id, node.id, "alice", models.BatchNodeUserReplaceOptions(password="y"))
    assert caught.value.error.code == "NodeUserNotFound"


def test_node_user_needs_a_name(client, pool_id, raw):
    node = next(iter(client.list_nodes(pool_id)))
    response = raw.request("POST", f"/pools/{pool_id}/nodes/{node.id}/users", body={"password": "x"})
    assert response.status == 400
    assert response.error_code == "MissingRequiredProperty"
    assert response.detail("PropertyName") == "name"


def test_node_user_secrets_are_never_echoed(client, pool_id, raw):
    node = next(iter(client.list_nodes(pool_id)))
    client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(name="bob", password="Hunter2!x"))
    for path in (f"/pools/{pool_id}/nodes/{node.id}", f"/pools/{pool_id}/nodes", f"/pools/{pool_id}"):
        assert b"Hunter2!x" not in raw.request("GET", path).body


def test_remote_login_settings_without_an_ssh_nat_pool_name_the_nodes_own_address(client, pool_id):
    # No inbound NAT pool publishes SSH (api-version 2024-07-01 and later map none by default): the
    # node is reachable on its own address and port 22, from inside the node network only. With a
    # NAT pool, see test_node_ssh.py.
    for node in client.list_nodes(pool_id):
        settings = client.get_node_remote_login_settings(pool_id, node.id)
        assert (settings.remote_login_ip_address, settings.remote_login_port) == (node.ip_address, 22)
        assert node.endpoint_configuration.inbound_endpoints == []


def test_node_actions_on_a_missing_node(client, pool_id):
    with pytest.raises(ResourceNotFoundError) as caught:
        client.disable_node_scheduling(pool_id, "tvmps_nothing_d", models.BatchNodeDisableSchedulingOptions(
            node_disable_scheduling_option="requeue"))
    assert caught.value.error.code == "NodeNotFound"
    with pytest.raises(HttpResponseError) as caught:
        client.create_node_user(pool_id, "tvmps_nothing_d", models.BatchNodeUserCreateOptions(name="x"))
    assert caught.value.status_code == 404


# ---- reimage, and actions that wait for running tasks (taskcompletion) ---------------------------
def test_reimage_wipes_the_node_and_reruns_the_start_task(client):
    pool = unique_id("reimage")
    [node] = create_pool_and_wait(client, pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/bash -c 'echo boot >> $AZ_BATCH_NODE_SHARED_DIR/boots.txt'"))
    job_id = create_job(client, pool)
    wait_for_task(client, job_id, _add(client, job_id, "before", "/bin/echo before"))
    client.begin_reimage_node(pool, node.id, models._models.BatchNodeReimageOptions(node_reimage_option="requeue"),
                              polling_interval=LRO_POLLING).result()
    reimaged = wait_for_nodes(client, pool, 1)[0]
    assert reimaged.id == node.id
    assert reimaged.last_boot_time > node.last_boot_time
    # A fresh disk: the start task ran once on it, and earlier task outputs are gone.
    assert b"".join(client.download_node_file(pool, node.id, "shared/boots.txt")) == b"boot\n"
    with pytest.raises(ResourceNotFoundError):
        b"".join(client.download_task_file(job_id, "before", "stdout.txt"))


def _add(client, job_id: str, task_id: str, command_line: str) -> str:
    client.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line=command_line))
    return task_id


@pytest.fixture
def gated_task(client, tmp_path):
    """A one-node pool running one task that finishes when `gate` is touched."""
    pool = unique_id("graceful")
    [node] = create_pool_and_wait(client, pool, nodes=1)
    job_id = create_job(client, pool)
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    _add(client, job_id, "gated",
         f"/bin/bash -c 'touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done; echo finished'")
    wait_for(lambda: started.exists(), "the gated task to start")
    return pool, node, job_id, gate


def test_resize_down_with_task_completion_lets_the_task_finish_first(client, gated_task):
    pool, node, job_id, gate = gated_task
    client.begin_resize_pool(pool, models.BatchPoolResizeOptions(target_dedicated_nodes=0,
                                                                 node_deallocation_option="taskcompletion"),
                             polling_interval=LRO_POLLING)
    assert client.get_pool(pool).allocation_state == "resizing"
    _add(client, job_id, "later", "/bin/true")
    assert client.get_task(job_id, "gated").state == "running"
    assert client.get_task(job_id, "later").state == "active"  # nothing new starts on a leaving node
    gate.touch()
    task = wait_for_task(client, job_id, "gated")
    assert task.execution_info.exit_code == 0 and task.execution_info.requeue_count == 0
    wait_for(lambda: client.get_pool(pool).allocation_state == "steady", "the resize to finish")
    assert list(client.list_nodes(pool)) == []
    assert client.get_task(job_id, "later").state == "active"


def test_remove_nodes_with_task_completion_lets_the_task_finish_first(client, gated_task):
    pool, node, job_id, gate = gated_task
    poller = client.begin_remove_nodes(pool, models.BatchNodeRemoveOptions(
        node_ids=[node.id], node_deallocation_option="retaineddata"), polling_interval=LRO_POLLING)
    assert client.get_task(job_id, "gated").state == "running"
    gate.touch()
    poller.result()
    assert wait_for_task(client, job_id, "gated").execution_info.exit_code == 0
    assert list(client.list_nodes(pool)) == []


def test_reboot_with_task_completion_reboots_after_the_task(client, gated_task):
    pool, node, job_id, gate = gated_task
    client.begin_reboot_node(pool, node.id, reboot_options("taskcompletion"), polling_interval=LRO_POLLING).result()
    assert client.get_task(job_id, "gated").state == "running"
    gate.touch()
    task = wait_for_task(client, job_id, "gated")
    assert task.execution_info.exit_code == 0 and task.execution_info.requeue_count == 0
    rebooted = wait_for(lambda: (n := client.get_node(pool, node.id)).last_boot_time > node.last_boot_time
                        and n.state == "idle" and n, "the node to reboot after its task")
    assert rebooted.id == node.id


def test_growing_again_keeps_a_node_that_was_waiting_to_leave(client, gated_task):
    pool, node, job_id, gate = gated_task
    client.begin_resize_pool(pool, models.BatchPoolResizeOptions(target_dedicated_nodes=0,
                                                                 node_deallocation_option="taskcompletion"),
                             polling_interval=LRO_POLLING)
    client.begin_stop_pool_resize(pool, polling_interval=LRO_POLLING).result()
    client.begin_resize_pool(pool, models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                             polling_interval=LRO_POLLING)
    gate.touch()
    wait_for_task(client, job_id, "gated")
    wait_for(lambda: client.get_pool(pool).allocation_state == "steady", "the resize to finish")
    assert [n.id for n in client.list_nodes(pool)] == [node.id]
    assert client.get_pool(pool).current_dedicated_nodes == 1


def test_nodes_carry_no_etag(client, pool_id, raw):
    node = next(iter(client.list_nodes(pool_id)))
    response = raw.request("GET", f"/pools/{pool_id}/nodes/{node.id}")
    assert response.status == 200
    assert "eTag" not in response.json() and "etag" not in response.headers
    assert "last-modified" in response.headers
