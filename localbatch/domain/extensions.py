"""VM extensions as a node reports them (list_node_extensions, get_node_extension).

A local node has no VM agent to run an extension's handler: the extensions of the pool's
virtualMachineConfiguration are recorded, and each node reports them as the service does, with a
provisioningState that follows the node's own provisioning: `Creating` while the node is created
and started, `Succeeded` once it has booted. The instance view says, in its status message, that
the handler did not run. protectedSettings are never kept or shown.
"""
from __future__ import annotations

from ..errors import BatchServiceError
from .entities import Node, Pool

NOT_RUN_MESSAGE = "localbatch recorded this extension; its handler does not run on a local node."


def node_extensions(pool: Pool, node: Node) -> list[dict]:
    extensions = (pool.data.get("virtualMachineConfiguration") or {}).get("extensions") or []
    return [_view(extension, node) for extension in extensions]


def node_extension(pool: Pool, node: Node, name: str) -> dict:
    for view in node_extensions(pool, node):
        if view["vmExtension"]["name"] == name:
            return view
    raise BatchServiceError("ResourceNotFound", f"The node has no extension named {name}.")


def without_protected_settings(vm_configuration: dict) -> dict:
    """The configuration as kept and shown: extensions' protectedSettings are secrets."""
    extensions = vm_configuration.get("extensions")
    if not extensions:
        return vm_configuration
    return {**vm_configuration, "extensions": [{k: v for k, v in extension.items() if k != "protectedSettings"}
                                               for extension in extensions]}


def _view(extension: dict, node: Node) -> dict:
    booting = node.state in ("creating", "starting")
    state = "Creating" if booting else "Succeeded"
    status = {"code": f"ProvisioningState/{state.lower()}", "level": "Info",
              "displayStatus": "Provisioning in progress" if booting else "Provisioning succeeded",
              "message": NOT_RUN_MESSAGE}
    moment = node.data.get("lastBootTime") or node.data.get("allocationTime")
    if moment:
        status["time"] = moment
    return {"provisioningState": state, "vmExtension": dict(extension),
            "instanceView": {"name": extension["name"], "statuses": [status]}}
