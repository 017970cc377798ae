"""The JSON the real service returns, key by key (BATCH_FACTS: "Shapes and formats seen on the
real service"), read over raw HTTP so nothing in the SDK papers over a difference."""
from __future__ import annotations

import re

from azure.batch import models

from .support import create_job, pool_options, run_task, ubuntu_configuration, unique_id, wait_for, wait_for_nodes

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")
TIMESTAMP_KEYS = {"creationTime", "lastModified", "stateTransitionTime", "allocationStateTransitionTime",
                  "allocationTime", "lastBootTime", "startTime", "endTime", "previousStateTransitionTime",
                  "lastUpdateTime", "lastRetryTime", "lastRequeueTime"}


def _timestamps_are_iso(value, path: str = "") -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in TIMESTAMP_KEYS:
                assert TIMESTAMP.match(inner), f"{path}.{key} = {inner!r}"
            _timestamps_are_iso(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _timestamps_are_iso(inner, f"{path}[{index}]")


def test_pool_keys(raw, client):
    pool = unique_id("shape")
    client.create_pool(pool_options(pool, nodes=1))
    body = wait_for(lambda: (r := raw.request("GET", f"/pools/{pool}").json())["allocationState"] == "steady" and r,
                    "a steady pool")
    assert {"id", "url", "eTag", "lastModified", "creationTime", "state", "stateTransitionTime", "allocationState",
            "allocationStateTransitionTime", "vmSize", "resizeTimeout", "currentDedicatedNodes",
            "targetDedicatedNodes", "currentLowPriorityNodes", "targetLowPriorityNodes", "enableAutoScale",
            "enableInterNodeCommunication", "taskSlotsPerNode", "taskSchedulingPolicy",
            "virtualMachineConfiguration"} <= set(body)
    assert body["resizeTimeout"] == "PT15M"
    # The service's own answer for a pool created without a policy, as recorded by azure-sdk-for-python
    # (test_batch_update_pools[sync]); the API's enum spells it "spread", and the SDK reads either.
    assert body["taskSchedulingPolicy"] == {"nodeFillType": "Spread"}
    assert body["virtualMachineConfiguration"]["imageReference"]["version"] == "latest"
    _timestamps_are_iso(body)


def test_node_keys(raw, client):
    pool = unique_id("shape")
    client.create_pool(pool_options(pool, nodes=1))
    [node] = wait_for_nodes(client, pool, 1)
    body = raw.request("GET", f"/pools/{pool}/nodes/{node.id}").json()
    assert {"id", "url", "state", "schedulingState", "stateTransitionTime", "allocationTime", "ipAddress",
            "affinityId", "vmSize", "totalTasksRun", "totalTasksSucceeded", "runningTasksCount",
            "runningTaskSlotsCount", "isDedicated", "endpointConfiguration", "virtualMachineInfo", "lastBootTime",
            "nodeAgentInfo"} <= set(body)
    assert "eTag" not in body
    _timestamps_are_iso(body)


def test_job_keys(raw, client, pool_id):
    job_id = create_job(client, pool_id)
    body = raw.request("GET", f"/jobs/{job_id}").json()
    assert {"id", "url", "eTag", "lastModified", "creationTime", "state", "stateTransitionTime", "priority",
            "maxParallelTasks", "usesTaskDependencies", "allowTaskPreemption", "constraints", "poolInfo",
            "executionInfo", "onAllTasksComplete", "onTaskFailure"} <= set(body)
    assert body["constraints"] == {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0}
    assert set(body["executionInfo"]) >= {"startTime", "poolId"}
    _timestamps_are_iso(body)


def test_task_keys_before_and_after_it_runs(raw, client, pool_id):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/true")
    body = raw.request("GET", f"/jobs/{job_id}/tasks/{task.id}").json()
    assert {"id", "url", "eTag", "creationTime", "lastModified", "state", "stateTransitionTime", "commandLine",
            "userIdentity", "constraints", "requiredSlots", "executionInfo", "previousState",
            "previousStateTransitionTime", "nodeInfo"} <= set(body)
    assert body["constraints"]["retentionTime"] == "P7D"
    assert set(body["nodeInfo"]) == {"affinityId", "nodeUrl", "poolId", "nodeId", "taskRootDirectory",
                                     "taskRootDirectoryUrl"}
    _timestamps_are_iso(body)


def test_task_counts_and_node_counts_shapes(raw, client, pool_id):
    job_id = create_job(client, pool_id)
    counts = raw.request("GET", f"/jobs/{job_id}/taskcounts").json()
    assert set(counts["taskCounts"]) == {"active", "running", "completed", "succeeded", "failed"}
    assert set(counts["taskSlotCounts"]) == {"active", "running", "completed", "succeeded", "failed"}
    node_counts = raw.request("GET", "/nodecounts").json()["value"]
    entry = next(c for c in node_counts if c["poolId"] == pool_id)
    assert len(entry["dedicated"]) == 17 and len(entry["lowPriority"]) == 17


def test_secrets_are_never_echoed(raw, client):
    pool = unique_id("secret")
    client.create_pool(pool_options(pool, nodes=0, user_accounts=[
        models.UserAccount(name="worker", password="Pool-Secret-1!", elevation_level="nonadmin")]))
    for path in (f"/pools/{pool}", "/pools", f"/pools/{pool}?$select=userAccounts"):
        response = raw.request("GET", path)
        assert response.status == 200
        assert b"Pool-Secret-1!" not in response.body
    accounts = raw.request("GET", f"/pools/{pool}").json()["userAccounts"]
    assert [account["name"] for account in accounts] == ["worker"]


def test_secrets_in_an_auto_pool_specification_are_never_echoed(raw, client):
    job_id = unique_id("secret")
    account = models.UserAccount(name="worker", password="Auto-Secret-2!", linux_user_configuration=
                                 models.LinuxUserConfiguration(ssh_private_key="-----BEGIN PRIVATE KEY-----xyz"))
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(
        auto_pool_specification=models.BatchAutoPoolSpecification(
            pool_lifetime_option="job",
            pool=models.BatchPoolSpecification(vm_size="standard_d2s_v3", user_accounts=[account],
                                               virtual_machine_configuration=ubuntu_configuration())))))
    pool_id = client.get_job(job_id).execution_info.pool_id
    for path in (f"/jobs/{job_id}", "/jobs", f"/pools/{pool_id}"):
        body = raw.request("GET", path).body
        assert b"Auto-Secret-2!" not in body and b"PRIVATE KEY" not in body
    assert client.get_pool(pool_id).user_accounts[0].name == "worker"


def test_updated_user_accounts_are_kept_without_their_secrets(raw, client):
    pool = unique_id("secret")
    client.create_pool(pool_options(pool, nodes=0))
    client.update_pool(pool, models.BatchPoolUpdateOptions(user_accounts=[
        models.UserAccount(name="later", password="Later-Secret-3!")]))
    body = raw.request("GET", f"/pools/{pool}").body
    assert b"Later-Secret-3!" not in body
    assert [a.name for a in client.get_pool(pool).user_accounts] == ["later"]
