"""Pools, supported images and node counts, through the real azure-batch SDK."""
from __future__ import annotations

import re

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from .support import (LRO_POLLING, create_pool_and_wait, pool_options, ubuntu_configuration, unique_id,
                      wait_for, wait_for_nodes)


# ---- create / get / exists / list --------------------------------------------------------------
def test_create_pool_reports_resizing_then_becomes_steady_with_its_nodes(server, client):
    pool_id = unique_id("pool")
    with server.holding("node_creating"):
        client.create_pool(pool_options(pool_id, nodes=2, display_name="two nodes",
                                        metadata=[models.BatchMetadataItem(name="owner", value="tests")]))
        created = client.get_pool(pool_id)
        assert [node.state for node in client.list_nodes(pool_id)] == ["creating", "creating"]
    assert created.state == "active"
    assert created.allocation_state == "resizing"
    assert created.target_dedicated_nodes == 2
    assert created.vm_size == "standard_d2s_v3"
    assert created.resize_timeout.total_seconds() == 15 * 60
    assert created.task_slots_per_node == 1
    assert created.task_scheduling_policy.node_fill_type.lower() == "spread"
    assert created.virtual_machine_configuration.image_reference.version == "latest"
    assert created.display_name == "two nodes"
    assert [(m.name, m.value) for m in created.metadata] == [("owner", "tests")]
    assert created.url.endswith(f"/pools/{pool_id}")
    assert re.fullmatch(r"0x[0-9A-F]{15}", created.etag)

    wait_for(lambda: client.get_pool(pool_id).allocation_state == "steady", "allocation to finish")
    nodes = wait_for_nodes(client, pool_id, 2)
    steady = client.get_pool(pool_id)
    assert steady.current_dedicated_nodes == 2
    assert len({node.id for node in nodes}) == 2
    assert all(re.fullmatch(r"tvmps_[0-9a-f]{64}_d", node.id) for node in nodes)


def test_get_pool_with_select_returns_only_the_selected_properties(client, raw):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0))
    selected = client.get_pool(pool_id, select=["id", "state"])
    assert selected.id == pool_id
    assert selected.state == "active"
    assert selected.vm_size is None and selected.allocation_state is None

    response = raw.request("GET", f"/pools/{pool_id}?$select=id,state")
    assert response.status == 200
    assert set(response.json()) == {"odata.metadata", "id", "state"}


def test_get_pool_with_expand_still_returns_the_pool(client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0))
    pool = client.get_pool(pool_id, expand=["stats"])
    assert pool.id == pool_id and pool.vm_size == "standard_d2s_v3"


def test_creating_an_existing_pool_fails_with_pool_exists(client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0))
    with pytest.raises(ResourceExistsError) as caught:
        client.create_pool(pool_options(pool_id.upper(), nodes=0))  # ids are case-insensitive
    assert caught.value.status_code == 409
    assert caught.value.error.code == "PoolExists"
    assert "The specified pool already exists." in caught.value.error.message


def test_get_missing_pool_fails_with_pool_not_found(client):
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_pool("no-such-pool")
    assert caught.value.error.code == "PoolNotFound"


def test_pool_exists(client, raw):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0))
    assert client.pool_exists(pool_id) is True
    # The SDK raises instead of returning False on a 404 (its own quirk); the wire answer is a 404.
    with pytest.raises(ResourceNotFoundError):
        client.pool_exists("no-such-pool")
    assert raw.request("HEAD", "/pools/no-such-pool").status == 404
    assert raw.request("HEAD", f"/pools/{pool_id}").status == 200


def test_list_pools_filters_on_id_and_state(client):
    prefix = unique_id("listed")
    ids = [f"{prefix}-{n}" for n in range(3)]
    for pool_id in ids:
        client.create_pool(pool_options(pool_id, nodes=0))
    assert [p.id for p in client.list_pools(filter=f"startswith(id, '{prefix}')")] == ids
    assert [p.id for p in client.list_pools(filter=f"id eq '{ids[1]}'")] == [ids[1]]
    client.begin_delete_pool(ids[2], polling_interval=LRO_POLLING)  # deleting for a short while
    active = [p.id for p in client.list_pools(filter=f"startswith(id, '{prefix}') and state eq 'active'")]
    assert active == ids[:2]
    by_id_or = [p.id for p in client.list_pools(filter=f"id eq '{ids[0]}' or id eq '{ids[1]}'", select=["id"])]
    assert by_id_or == ids[:2]


def test_list_pools_pages_with_max_results(client):
    prefix = unique_id("paged")
    ids = [f"{prefix}-{n:02d}" for n in range(7)]
    for pool_id in ids:
        client.create_pool(pool_options(pool_id, nodes=0))
    pages = list(client.list_pools(filter=f"startswith(id, '{prefix}')", max_results=3).by_page())
    listed = [[pool.id for pool in page] for page in pages]
    assert listed == [ids[0:3], ids[3:6], ids[6:7]]


def test_list_pools_with_a_malformed_filter_is_a_clear_400(client):
    with pytest.raises(HttpResponseError) as caught:
        list(client.list_pools(filter="id eq"))
    assert caught.value.status_code == 400
    assert caught.value.error.code == "InvalidQueryParameterValue"


# ---- delete ---------------------------------------------------------------------------------------
def test_delete_pool_goes_through_deleting_and_the_poller_ends_when_it_is_gone(server, client):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=1)
    with server.holding("pool_deleting"):
        poller = client.begin_delete_pool(pool_id, polling_interval=LRO_POLLING)
        assert client.get_pool(pool_id).state == "deleting"
        assert not poller.done()
        with pytest.raises(HttpResponseError) as caught:
            client.update_pool(pool_id, models.BatchPoolUpdateOptions(display_name="late"))
        assert caught.value.error.code == "PoolBeingDeleted"
        with pytest.raises(ResourceExistsError) as caught:
            client.create_pool(pool_options(pool_id, nodes=0))
        assert caught.value.error.code == "PoolBeingDeleted"
    poller.result()
    assert poller.done()
    with pytest.raises(ResourceNotFoundError):
        client.get_pool(pool_id)
    assert pool_id not in [p.id for p in client.list_pools()]


def test_delete_missing_pool_fails_with_pool_not_found(client):
    with pytest.raises(ResourceNotFoundError) as caught:
        client.begin_delete_pool("no-such-pool", polling_interval=LRO_POLLING)
    assert caught.value.error.code == "PoolNotFound"


# ---- resize / stop resize / remove nodes --------------------------------------------------------
def test_resize_pool_up_and_down(server, client):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=1)
    with server.holding("node_creating"):
        poller = client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=3),
                                          polling_interval=LRO_POLLING)
        assert client.get_pool(pool_id).allocation_state == "resizing"
        assert not poller.done()
    poller.result()
    pool = client.get_pool(pool_id)
    assert pool.allocation_state == "steady"
    assert pool.target_dedicated_nodes == 3 and pool.current_dedicated_nodes == 3
    wait_for_nodes(client, pool_id, 3)

    client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                             polling_interval=LRO_POLLING).result()
    pool = client.get_pool(pool_id)
    assert pool.allocation_state == "steady"
    assert pool.current_dedicated_nodes == 1
    assert len(list(client.list_nodes(pool_id))) == 1


def test_resize_while_resizing_is_rejected(server, client):
    pool_id = unique_id("pool")
    with server.holding("node_creating"):
        client.create_pool(pool_options(pool_id, nodes=1))  # resizing until its node is allocated
        with pytest.raises(ResourceExistsError) as caught:
            client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=2),
                                     polling_interval=LRO_POLLING)
    assert caught.value.error.code == "PoolBeingResized"


def test_stop_resize_leaves_the_pool_steady(client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=2))
    client.begin_stop_pool_resize(pool_id, polling_interval=LRO_POLLING).result()
    pool = client.get_pool(pool_id)
    assert pool.allocation_state == "steady"
    assert pool.target_dedicated_nodes == pool.current_dedicated_nodes


def test_remove_nodes_removes_exactly_the_named_nodes(client):
    pool_id = unique_id("pool")
    nodes = create_pool_and_wait(client, pool_id, nodes=3)
    removed = nodes[0].id
    client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=[removed]),
                              polling_interval=LRO_POLLING).result()
    pool = client.get_pool(pool_id)
    assert pool.allocation_state == "steady"
    assert pool.target_dedicated_nodes == 2
    remaining = wait_for(lambda: (ids := {n.id for n in client.list_nodes(pool_id)}) and len(ids) == 2 and ids,
                         "the node to leave the pool")
    assert remaining == {nodes[1].id, nodes[2].id}
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_node(pool_id, removed)
    assert caught.value.error.code == "NodeNotFound"


def test_remove_unknown_node_is_rejected(client):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=1)
    with pytest.raises(HttpResponseError) as caught:
        client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=["tvmps_nope_d"]),
                                  polling_interval=LRO_POLLING)
    assert caught.value.status_code == 400


# ---- patch / replace ------------------------------------------------------------------------------
def test_update_pool_patches_only_what_it_names(client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0, metadata=[models.BatchMetadataItem(name="a", value="1")]))
    before = client.get_pool(pool_id)
    client.update_pool(pool_id, models.BatchPoolUpdateOptions(
        start_task=models.BatchStartTask(command_line="/bin/true")))
    after = client.get_pool(pool_id)
    assert after.start_task.command_line == "/bin/true"
    assert [(m.name, m.value) for m in after.metadata] == [("a", "1")]
    assert after.etag != before.etag
    assert after.last_modified >= before.last_modified


def test_replace_pool_properties_replaces_start_task_and_metadata(client):
    pool_id = unique_id("pool")
    client.create_pool(pool_options(pool_id, nodes=0, start_task=models.BatchStartTask(command_line="/bin/true"),
                                    metadata=[models.BatchMetadataItem(name="a", value="1")]))
    client.replace_pool_properties(pool_id, models.BatchPoolReplaceOptions(
        metadata=[models.BatchMetadataItem(name="b", value="2")], application_package_references=[]))
    pool = client.get_pool(pool_id)
    assert pool.start_task is None
    assert [(m.name, m.value) for m in pool.metadata] == [("b", "2")]


# ---- node counts -----------------------------------------------------------------------------------
def test_node_counts_list_every_pool_with_seventeen_counters(client):
    busy, empty = unique_id("counted"), unique_id("counted")
    create_pool_and_wait(client, busy, nodes=2)
    client.create_pool(pool_options(empty, nodes=0))
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}
    assert counts[busy].dedicated.idle == 2
    assert counts[busy].dedicated.total == 2
    assert counts[busy].low_priority.total == 0
    assert counts[empty].dedicated.total == 0
    wire = counts[busy].dedicated.as_dict()
    assert len(wire) == 17


# ---- supported images ---------------------------------------------------------------------------
def test_supported_images_are_a_realistic_linux_catalog(client):
    images = list(client.list_supported_images())
    linux = [image for image in images if image.os_type == "linux"]
    assert {image.node_agent_sku_id for image in linux} >= {"batch.node.ubuntu 22.04", "batch.node.ubuntu 24.04"}
    for image in linux:
        assert image.image_reference.publisher and image.image_reference.offer and image.image_reference.sku
        assert image.verification_type == "verified"
        assert image.batch_support_end_of_life is not None


def test_every_linux_image_in_the_catalog_can_back_a_pool(client):
    for image in client.list_supported_images():
        if image.os_type != "linux":
            continue
        pool_id = unique_id("image")
        client.create_pool(models.BatchPoolCreateOptions(
            id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=0,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=image.image_reference, node_agent_sku_id=image.node_agent_sku_id)))
        assert client.get_pool(pool_id).virtual_machine_configuration.node_agent_sku_id == image.node_agent_sku_id


@pytest.mark.parametrize("reference, agent, reason_words", [
    (models.BatchVmImageReference(publisher="microsoftwindowsserver", offer="windowsserver", sku="2022-datacenter"),
     "batch.node.windows amd64", ("linux", "windows")),
    (models.BatchVmImageReference(publisher="nobody", offer="nothing", sku="none"),
     "batch.node.ubuntu 22.04", ("supported",)),
    (models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
     "batch.node.centos 7", ("node agent",)),
    (models.BatchVmImageReference(virtual_machine_image_id="/subscriptions/x/resourceGroups/y/providers/"
                                  "Microsoft.Compute/galleries/g/images/i/versions/1.0.0"),
     "batch.node.ubuntu 22.04", ("custom",)),
], ids=["windows", "unknown-image", "wrong-agent", "custom-image"])
def test_a_pool_on_an_image_localbatch_cannot_run_is_a_400_that_says_why(client, reference, agent, reason_words):
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(models.BatchPoolCreateOptions(
            id=unique_id("pool"), vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=reference, node_agent_sku_id=agent)))
    error = caught.value
    assert error.status_code == 400
    assert error.error.code == "InvalidPropertyValue"
    reason = " ".join(detail.message for detail in error.error.details).lower()
    assert all(word in reason for word in reason_words), reason


def test_pool_body_errors_name_the_property(client):
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(models.BatchPoolCreateOptions(
            id="bad id with spaces", vm_size="standard_d2s_v3", virtual_machine_configuration=ubuntu_configuration()))
    assert caught.value.status_code == 400
    details = {d.code: d.message for d in caught.value.error.details}
    assert details["PropertyName"] == "id"


def test_a_pool_is_steady_by_the_time_its_nodes_are_idle(client):
    pool_id = unique_id("pool")
    create_pool_and_wait(client, pool_id, nodes=2)
    assert client.get_pool(pool_id).allocation_state == "steady"
    # ...so it can be resized straight away.
    client.begin_resize_pool(pool_id, models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                             polling_interval=LRO_POLLING).result()
    assert client.get_pool(pool_id).current_dedicated_nodes == 1


def test_low_priority_nodes(client):
    pool_id = unique_id("spot")
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1, target_low_priority_nodes=2,
        virtual_machine_configuration=ubuntu_configuration()))
    nodes = wait_for_nodes(client, pool_id, 3)
    assert sorted(n.is_dedicated for n in nodes) == [False, False, True]
    assert all(n.id.endswith("_p") for n in nodes if not n.is_dedicated)
    pool = wait_for(lambda: (p := client.get_pool(pool_id)).allocation_state == "steady" and p, "steady")
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (1, 2)
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}[pool_id]
    assert (counts.dedicated.total, counts.low_priority.total) == (1, 2)
