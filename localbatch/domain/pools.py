"""Pools: create, update, resize, remove nodes, delete.

State active -> deleting (then gone); allocationState steady -> resizing -> steady (stopping on
the way when a resize is stopped). A new pool reports `resizing` until its nodes are allocated.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Optional

from .. import wire
from ..errors import BatchServiceError, invalid_property
from .context import DomainContext
from .endpoints import check_endpoint_configuration, nat_pools, ssh_nat_pool
from .entities import Pool
from .nodes import Nodes, count_nodes, node_counts
from .quotas import cores_of, quota_error
from .tasks import Tasks
from .autoscale.checks import check_interval
from .extensions import without_protected_settings
from .mounts import check_mount_configuration, without_mount_secrets
from .networking import check_pool_network
from .validation import check_id, check_pool_body, check_start_task, check_virtual_machine_configuration, without_secrets

UPDATABLE_PROPERTIES = ("startTask", "metadata", "displayName", "taskSchedulingPolicy", "networkConfiguration",
                        "vmSize", "taskSlotsPerNode", "virtualMachineConfiguration", "upgradePolicy",
                        "enableInterNodeCommunication", "mountConfiguration", "resizeTimeout")
# Properties that updatepoolproperties (a full replace) clears when the body leaves them out.
REPLACED_PROPERTIES = ("startTask", "metadata")


class Pools:
    def __init__(self, context: DomainContext, nodes: Nodes, tasks: Tasks):
        self.context = context
        self.repo = context.repo
        self.nodes = nodes
        self.tasks = tasks
        # Set by the autoscaler: start evaluating a pool created with enableAutoScale.
        self.start_auto_scale: Callable[[Pool], None] = lambda pool: None

    def create_pool(self, body: dict, auto_pool_job_id: Optional[str] = None,
                    identity: Optional[dict] = None) -> Pool:
        """`identity` (the data plane's BatchPoolIdentity shape) only comes from the management plane."""
        check_id("id", body["id"])
        existing = self.repo.find_pool(body["id"])
        if existing is not None:
            raise BatchServiceError("PoolBeingDeleted" if existing.state == "deleting" else "PoolExists")
        check_pool_body(body)
        self._check_ssh_possible(body)
        now = wire.now_iso()
        data = {
            "id": body["id"], "creationTime": now, "state": "active", "stateTransitionTime": now,
            "allocationState": "resizing", "allocationStateTransitionTime": now,
            "vmSize": body["vmSize"].lower(), "resizeTimeout": body.get("resizeTimeout") or "PT15M",
            "currentDedicatedNodes": 0, "currentLowPriorityNodes": 0,
            "targetDedicatedNodes": body.get("targetDedicatedNodes") or 0,
            "targetLowPriorityNodes": body.get("targetLowPriorityNodes") or 0,
            "enableAutoScale": bool(body.get("enableAutoScale")),
            "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication")),
            "taskSlotsPerNode": body.get("taskSlotsPerNode") or 1,
            # Capitalised, unlike the API's enum ("spread"), because that is what the service answers for a
            # pool created without a policy (azure-sdk-for-python's recording test_batch_update_pools[sync]).
            "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "Spread"},
        }
        vm_config = without_protected_settings(dict(body["virtualMachineConfiguration"]))
        vm_config["imageReference"] = {"version": "latest", **vm_config["imageReference"]}
        data["virtualMachineConfiguration"] = vm_config
        for optional in ("displayName", "startTask", "metadata", "networkConfiguration", "upgradePolicy"):
            if body.get(optional) is not None:
                data[optional] = body[optional]
        mounts, mount_secrets = without_mount_secrets(body.get("mountConfiguration"))
        if mounts:
            data["mountConfiguration"] = mounts
        if body.get("userAccounts") is not None:
            data["userAccounts"] = without_secrets(body["userAccounts"])
        if data["enableAutoScale"]:
            data["autoScaleFormula"] = body["autoScaleFormula"]
            data["autoScaleEvaluationInterval"] = check_interval(body.get("autoScaleEvaluationInterval"))
        if identity is not None:
            data["identity"] = identity
        pool = Pool(data, auto_pool_job_id=auto_pool_job_id, mount_secrets=mount_secrets)
        pool.touch()
        self.repo.add_pool(pool)
        self._resize_to_target(pool)
        if data["enableAutoScale"]:
            self.start_auto_scale(pool)  # evaluates the formula now: its targets replace the zeros above
        return pool

    def _check_ssh_possible(self, body: dict) -> None:
        """A pool that publishes SSH (an inbound NAT pool with backend port 22) needs node SSH
        servers, which need port 22: refused, saying why, where the emulator cannot bind it."""
        nat = ssh_nat_pool(body)
        reason = self.context.services.ssh_unavailable
        if nat is not None and reason is not None:
            index = nat_pools(body).index(nat)
            raise invalid_property(
                f"networkConfiguration.endpointConfiguration.inboundNATPools[{index}].backendPort", 22,
                f"localbatch cannot publish SSH here: {reason}.")

    def resize_to(self, pool: Pool, dedicated: int, low_priority: int, deallocation: str) -> None:
        """New targets (an autoscale run's), met as a resize would meet them."""
        pool.data["targetDedicatedNodes"] = dedicated
        pool.data["targetLowPriorityNodes"] = low_priority
        pool.touch()
        self._resize_to_target(pool, deallocation)

    def update_pool(self, pool_id: str, body: dict) -> Pool:
        return self._update(pool_id, body, replace=False)

    def replace_pool_properties(self, pool_id: str, body: dict) -> Pool:
        return self._update(pool_id, body, replace=True)

    def _update(self, pool_id: str, body: dict, replace: bool) -> Pool:
        pool = self.repo.get_pool(pool_id)
        if pool.state == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        check_endpoint_configuration(body.get("networkConfiguration"))
        self._check_ssh_possible(body)
        if body.get("virtualMachineConfiguration") is not None:
            check_virtual_machine_configuration(body["virtualMachineConfiguration"])
        check_pool_network(body.get("networkConfiguration"))
        check_mount_configuration(body.get("mountConfiguration"))
        check_start_task(body.get("startTask"),
                         body.get("virtualMachineConfiguration") or pool.data.get("virtualMachineConfiguration") or {})
        if body.get("mountConfiguration") is not None:  # nodes that boot from now on mount the new list
            pool.data["mountConfiguration"], pool.mount_secrets = without_mount_secrets(body["mountConfiguration"])
        for name in UPDATABLE_PROPERTIES:
            if name == "mountConfiguration":
                continue
            if body.get(name) is not None:
                pool.data[name] = (without_protected_settings(body[name]) if name == "virtualMachineConfiguration"
                                   else body[name])
            elif replace and name in REPLACED_PROPERTIES:
                pool.data.pop(name, None)
        if body.get("userAccounts") is not None:
            pool.data["userAccounts"] = without_secrets(body["userAccounts"])
        pool.touch()
        return pool

    def resize_pool(self, pool_id: str, body: dict) -> Pool:
        pool = self._steady_pool(pool_id)
        if pool.data.get("enableAutoScale"):
            raise BatchServiceError("OperationInvalidForCurrentState",
                                    "A pool with auto scale enabled cannot be resized manually.")
        for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if body.get(name) is not None:
                if body[name] < 0:
                    raise invalid_property(name, body[name], "The value must be zero or more.")
                pool.data[name] = body[name]
        pool.data["resizeTimeout"] = body.get("resizeTimeout") or pool.data["resizeTimeout"]
        pool.touch()
        self._resize_to_target(pool, body.get("nodeDeallocationOption") or "requeue")
        return pool

    def stop_pool_resize(self, pool_id: str) -> Pool:
        pool = self.repo.get_pool(pool_id)
        if pool.allocation_state == "resizing":
            # Nodes are allocated at once here, so stopping keeps what exists as the new target.
            pool.data["targetDedicatedNodes"] = count_nodes(pool, dedicated=True)
            pool.data["targetLowPriorityNodes"] = count_nodes(pool, dedicated=False)
            pool.set_allocation_state("stopping")
            pool.set_allocation_state("steady")
            pool.touch()
        return pool

    def remove_nodes(self, pool_id: str, body: dict) -> Pool:
        pool = self._steady_pool(pool_id)
        node_ids = body["nodeList"]
        missing = [node_id for node_id in node_ids if node_id not in pool.nodes]
        if missing:
            raise invalid_property("nodeList", missing[0], "The node does not belong to the pool.")
        for node_id in node_ids:
            key = "targetDedicatedNodes" if pool.nodes[node_id].is_dedicated else "targetLowPriorityNodes"
            pool.data[key] = max(0, pool.data[key] - 1)
        pool.set_allocation_state("resizing")
        pool.touch()
        for node_id in node_ids:
            self.nodes.remove_node(pool, pool.nodes[node_id], body.get("nodeDeallocationOption") or "requeue")
        self.context.background.spawn(self.nodes.settle_allocation(pool))
        return pool

    def _steady_pool(self, pool_id: str) -> Pool:
        pool = self.repo.get_pool(pool_id)
        if pool.state == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        if pool.allocation_state != "steady":
            raise BatchServiceError("PoolBeingResized", "The pool is resizing; wait until its allocationState "
                                                        "is steady or stop the resize.")
        return pool

    def delete_pool(self, pool_id: str) -> None:
        pool = self.repo.get_pool(pool_id)
        if pool.state == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        pool.set_state("deleting")
        pool.touch()
        self.context.background.spawn(self._finish_delete(pool))

    async def _finish_delete(self, pool: Pool) -> None:
        await self.context.transitions.step("pool_deleting")
        nodes = list(pool.nodes.values())
        for node in nodes:
            self.tasks.evict(node, "requeue")
            node.boot_generation += 1
            self.context.agent.stop(f"start:{node.key}", "shutdown")
            await self.nodes.stop_services(node)
        await asyncio.gather(*(self.nodes.stop_engine(node) for node in nodes),
                             *(self.nodes.unmount_file_systems(node) for node in nodes))
        self.repo.remove_pool(pool)
        for node in nodes:
            self.nodes.release_network(node)
        await asyncio.get_running_loop().run_in_executor(None, self.context.agent.layout.remove_pool, pool.id)

    def list_pool_node_counts(self) -> list[dict]:
        return node_counts(list(self.repo.pools.values()))

    def _resize_to_target(self, pool: Pool, deallocation: str = "requeue") -> None:
        """Add or remove nodes so the pool meets its targets, within the account's core quotas;
        steady once allocation is done."""
        pool.set_allocation_state("resizing")
        pool.data.pop("resizeErrors", None)
        for dedicated, target_key in ((True, "targetDedicatedNodes"), (False, "targetLowPriorityNodes")):
            kind = [n for n in pool.nodes.values() if n.is_dedicated == dedicated and n.state != "leavingpool"]
            current = [n for n in kind if n.after_tasks != "remove"]
            # Growing again: keep nodes that were only waiting for their tasks to leave, then add.
            for node in [n for n in kind if n.after_tasks == "remove"][:max(0, pool.data[target_key] - len(current))]:
                node.after_tasks = None
                current.append(node)
            missing = pool.data[target_key] - len(current)
            if missing > 0:
                allowed = self._nodes_within_quota(pool, dedicated)
                addresses = self.nodes.free_addresses()
                for _ in range(min(missing, allowed, addresses)):
                    self.nodes.add_node(pool, dedicated)
                if allowed < missing:
                    pool.data["resizeErrors"] = [*pool.data.get("resizeErrors", []),
                                                 quota_error(dedicated, self.context.quotas.cores(dedicated))]
                elif addresses < missing:
                    pool.data["resizeErrors"] = [*pool.data.get("resizeErrors", []),
                                                 subnet_full_error(str(self.context.network.subnet))]
            surplus = len(current) - pool.data[target_key]
            if surplus > 0:
                # Idle nodes go first, as on Azure.
                ordered = sorted(current, key=lambda n: (n.state == "running", -n.index))
                for node in ordered[:surplus]:
                    self.nodes.remove_node(pool, node, deallocation)
        self.context.background.spawn(self.nodes.settle_allocation(pool))

    def _nodes_within_quota(self, pool: Pool, dedicated: bool) -> int:
        """How many more nodes of this pool's size the account's quota leaves room for."""
        used = sum(count_nodes(other, dedicated) * cores_of(other.data["vmSize"]) for other in self.repo.pools.values())
        return max(0, self.context.quotas.cores(dedicated) - used) // cores_of(pool.data["vmSize"])

    def resume(self) -> None:
        """Once the loop runs: finish deletions and allocations that were in flight."""
        for pool in list(self.repo.pools.values()):
            if pool.state == "deleting":
                self.context.background.spawn(self._finish_delete(pool))
                continue
            self.nodes.resume(pool)
            if pool.allocation_state != "steady":
                self._resize_to_target(pool)
            self.context.kick(pool.id)


def subnet_full_error(subnet: str) -> dict:
    """The resize error of a pool whose allocation stopped because the node subnet is full."""
    return {"code": "AllocationFailed", "message": "Desired number of nodes could not be allocated",
            "values": [{"name": "Reason", "value": f"The node subnet {subnet} has no free address left."}]}
