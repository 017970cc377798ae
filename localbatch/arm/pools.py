"""A pool as the management plane (azure-mgmt-batch, Microsoft.Batch/batchAccounts/pools) sees it.

The management plane and the data plane describe one pool in two shapes: ARM nests the image
under ``deploymentConfiguration`` and the node counts under ``scaleSettings``, spells
``nodeAgentSkuId`` and ``interNodeCommunication`` differently, capitalises states, and is the only
plane that can give a pool a managed identity. This module translates between the two; the pool
itself is the data plane's (domain/pools.py), so both planes see the same pool.
"""
from __future__ import annotations

from typing import Any, Optional

from ..domain.entities import Pool
from ..errors import BatchServiceError, invalid_property
from .identities import find_identity

# ARM pool properties the local stack can create a pool with, and those it cannot emulate.
CREATABLE = ("displayName", "vmSize", "deploymentConfiguration", "scaleSettings", "interNodeCommunication",
             "networkConfiguration", "taskSlotsPerNode", "taskSchedulingPolicy", "userAccounts", "metadata",
             "startTask", "mountConfiguration", "upgradePolicy")
NOT_EMULATED = ("applicationPackages",)
_CAPITALISED_STATES = {"steady": "Steady", "resizing": "Resizing", "stopping": "Stopping"}
_NODE_FILL_TYPES = {"spread": "Spread", "pack": "Pack"}


def _object(value: Any, name: str) -> dict:
    """`value` when it is a JSON object (None: empty); anything else is an InvalidPropertyValue."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_property(name, "...", "Expected a JSON object.")
    return value


def data_plane_body(name: str, properties: dict) -> dict:
    """The data plane's pool-create body for an ARM pool's `properties` (raises BatchServiceError)."""
    for key in properties:
        if key in NOT_EMULATED:
            raise BatchServiceError("FeatureNotEmulated", f"The pool property '{key}' is not emulated by localbatch.",
                                    values={"PropertyName": f"properties.{key}"})
        if key not in CREATABLE:
            raise invalid_property(f"properties.{key}", "...", "The property is read-only or not known.")
    body: dict[str, Any] = {"id": name}
    for same in ("displayName", "vmSize", "networkConfiguration", "taskSlotsPerNode", "userAccounts", "metadata",
                 "startTask", "mountConfiguration", "upgradePolicy"):
        if properties.get(same) is not None:
            body[same] = properties[same]
    deployment = _object(properties.get("deploymentConfiguration"), "properties.deploymentConfiguration")
    vm_config = deployment.get("virtualMachineConfiguration")
    if vm_config is None:
        raise BatchServiceError("MissingRequiredProperty", values={
            "PropertyName": "properties.deploymentConfiguration.virtualMachineConfiguration"})
    vm_config = dict(_object(vm_config, "properties.deploymentConfiguration.virtualMachineConfiguration"))
    if "nodeAgentSkuId" in vm_config:
        vm_config["nodeAgentSKUId"] = vm_config.pop("nodeAgentSkuId")
    body["virtualMachineConfiguration"] = vm_config
    scale = _object(properties.get("scaleSettings"), "properties.scaleSettings")
    auto = _object(scale.get("autoScale"), "properties.scaleSettings.autoScale")
    fixed = _object(scale.get("fixedScale"), "properties.scaleSettings.fixedScale")
    if auto and fixed:
        raise invalid_property("properties.scaleSettings", "...", "Give fixedScale or autoScale, not both.")
    if auto:
        body["enableAutoScale"] = True
        body["autoScaleFormula"] = auto.get("formula")
        if auto.get("evaluationInterval") is not None:
            body["autoScaleEvaluationInterval"] = auto["evaluationInterval"]
    for key in ("targetDedicatedNodes", "targetLowPriorityNodes", "resizeTimeout"):
        if fixed.get(key) is not None:
            body[key] = fixed[key]
    if fixed.get("nodeDeallocationOption") is not None:
        raise BatchServiceError("FeatureNotEmulated", values={
            "PropertyName": "properties.scaleSettings.fixedScale.nodeDeallocationOption"})
    communication = properties.get("interNodeCommunication")
    if communication is not None:
        if communication not in ("Enabled", "Disabled"):
            raise invalid_property("properties.interNodeCommunication", communication, "Expected Enabled or Disabled.")
        body["enableInterNodeCommunication"] = communication == "Enabled"
    policy = properties.get("taskSchedulingPolicy")
    if policy is not None:
        policy = _object(policy, "properties.taskSchedulingPolicy")
        body["taskSchedulingPolicy"] = {**policy, "nodeFillType": str(policy.get("nodeFillType", "Spread")).lower()}
    return body


def pool_identity(identity: Optional[dict]) -> Optional[dict]:
    """The data plane's `identity` of a pool for an ARM `identity` (None: the pool has none)."""
    if identity is None:
        return None
    identity = _object(identity, "identity")
    kind = identity.get("type")
    assigned = identity.get("userAssignedIdentities") or {}
    if kind == "None":
        if assigned:
            raise invalid_property("identity.userAssignedIdentities", "...",
                                   "An identity of type None has no user-assigned identities.")
        return None
    if kind != "UserAssigned":
        raise invalid_property("identity.type", kind, "A Batch pool's identity is of type UserAssigned or None.")
    if not isinstance(assigned, dict) or not assigned:
        raise invalid_property("identity.userAssignedIdentities", "{}",
                               "An identity of type UserAssigned needs at least one user-assigned identity.")
    identities = []
    for resource_id in assigned:
        known = find_identity(resource_id)
        if known is None:
            raise BatchServiceError("InvalidPropertyValue", f"Resource '{resource_id[:300]}' was not found: the local "
                                    "stack knows the user-assigned identities listed in README.", values={
                                        "PropertyName": "identity.userAssignedIdentities"}, status=400)
        identities.append({"resourceId": known.resource_id, "clientId": known.client_id,
                           "principalId": known.principal_id})
    return {"type": "UserAssigned", "userAssignedIdentities": identities}


def arm_identity(data: dict) -> Optional[dict]:
    identity = data.get("identity")
    if not identity:
        return None
    return {"type": identity["type"], "userAssignedIdentities": {
        item["resourceId"]: {"principalId": item["principalId"], "clientId": item["clientId"]}
        for item in identity.get("userAssignedIdentities", [])}}


def arm_pool(resource_id: str, pool: Pool) -> dict:
    """The ARM resource of a pool: what azure-mgmt-batch's pool.get returns."""
    data = pool.data
    vm_config = dict(data["virtualMachineConfiguration"])
    if "nodeAgentSKUId" in vm_config:
        vm_config["nodeAgentSkuId"] = vm_config.pop("nodeAgentSKUId")
    if data.get("enableAutoScale"):
        scale = {"autoScale": {"formula": data.get("autoScaleFormula"),
                               "evaluationInterval": data.get("autoScaleEvaluationInterval")}}
    else:
        scale = {"fixedScale": {"targetDedicatedNodes": data["targetDedicatedNodes"],
                                "targetLowPriorityNodes": data["targetLowPriorityNodes"],
                                "resizeTimeout": data["resizeTimeout"]}}
    properties: dict[str, Any] = {
        "lastModified": data.get("lastModified"), "creationTime": data["creationTime"],
        "provisioningState": "Deleting" if pool.state == "deleting" else "Succeeded",
        "provisioningStateTransitionTime": data["stateTransitionTime"],
        "allocationState": _CAPITALISED_STATES.get(data["allocationState"], data["allocationState"]),
        "allocationStateTransitionTime": data["allocationStateTransitionTime"],
        "vmSize": data["vmSize"], "deploymentConfiguration": {"virtualMachineConfiguration": vm_config},
        "currentDedicatedNodes": data["currentDedicatedNodes"],
        "currentLowPriorityNodes": data["currentLowPriorityNodes"],
        "scaleSettings": scale,
        "interNodeCommunication": "Enabled" if data.get("enableInterNodeCommunication") else "Disabled",
        "taskSlotsPerNode": data["taskSlotsPerNode"],
        "taskSchedulingPolicy": {**data["taskSchedulingPolicy"], "nodeFillType": _NODE_FILL_TYPES.get(
            str(data["taskSchedulingPolicy"].get("nodeFillType", "spread")).lower(), "Spread")},
    }
    for same in ("displayName", "networkConfiguration", "userAccounts", "metadata", "startTask",
                 "mountConfiguration", "upgradePolicy"):
        if data.get(same) is not None:
            properties[same] = data[same]
    if data.get("autoScaleRun") is not None:
        properties["autoScaleRun"] = data["autoScaleRun"]
    if data.get("resizeErrors"):
        properties["resizeOperationStatus"] = {"errors": data["resizeErrors"]}
    resource: dict[str, Any] = {"id": resource_id, "name": pool.id, "type": "Microsoft.Batch/batchAccounts/pools",
                                "etag": f'W/"{data["eTag"]}"', "properties": properties}
    identity = arm_identity(data)
    if identity is not None:
        resource["identity"] = identity
    return resource

