"""The supported-image catalog localbatch offers, modelled on what the real service lists."""
from __future__ import annotations

from .errors import invalid_property

_LINUX = "linux"


def _image(agent: str, publisher: str, offer: str, sku: str, os_type: str, end_of_life: str,
           capabilities: list[str] | None = None) -> dict:
    entry = {
        "nodeAgentSKUId": agent,
        "imageReference": {"publisher": publisher, "offer": offer, "sku": sku, "version": "latest"},
        "osType": os_type,
        "batchSupportEndOfLife": end_of_life,
        "verificationType": "verified",
    }
    if capabilities:
        entry["capabilities"] = capabilities
    return entry


SUPPORTED_IMAGES: list[dict] = [
    _image("batch.node.ubuntu 22.04", "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", _LINUX,
           "2027-04-30T00:00:00.0000000Z"),
    _image("batch.node.ubuntu 22.04", "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", _LINUX,
           "2027-04-30T00:00:00.0000000Z"),
    _image("batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server", _LINUX,
           "2029-04-30T00:00:00.0000000Z"),
    _image("batch.node.ubuntu 22.04", "microsoft-dsvm", "ubuntu-hpc", "2204", _LINUX,
           "2027-04-30T00:00:00.0000000Z", ["DockerCompatible", "NvidiaTeslaDriverInstalled"]),
    _image("batch.node.windows amd64", "microsoftwindowsserver", "windowsserver", "2022-datacenter", "windows",
           "2031-10-14T00:00:00.0000000Z"),
]


def _key(reference: dict) -> tuple[str, str, str]:
    return tuple((reference.get(k) or "").lower() for k in ("publisher", "offer", "sku"))  # type: ignore


def check_virtual_machine_configuration(vm_config: dict) -> dict:
    """Return the catalog entry the configuration names, or raise a 400 that says why not."""
    reference = vm_config.get("imageReference") or {}
    if reference.get("virtualMachineImageId") or reference.get("sharedGalleryImageId") \
            or reference.get("communityGalleryImageId"):
        raise invalid_property("virtualMachineConfiguration.imageReference", "custom image",
                               "localbatch emulates Marketplace images only; custom and gallery images "
                               "cannot be emulated. Choose one from list_supported_images().")
    agent = vm_config.get("nodeAgentSKUId", "")
    matches = [entry for entry in SUPPORTED_IMAGES if _key(entry["imageReference"]) == _key(reference)]
    if not matches:
        raise invalid_property("virtualMachineConfiguration.imageReference",
                               "/".join(_key(reference)),
                               "The image is not in the supported-image list (GET /supportedimages).")
    entry = next((e for e in matches if e["nodeAgentSKUId"].lower() == agent.lower()), None)
    if entry is None:
        raise invalid_property("virtualMachineConfiguration.nodeAgentSKUId", agent,
                               f"The image needs node agent SKU '{matches[0]['nodeAgentSKUId']}'.")
    if entry["osType"] != _LINUX:
        raise invalid_property("virtualMachineConfiguration.imageReference", "/".join(_key(reference)),
                               "localbatch runs Linux nodes only; Windows pools cannot be emulated.")
    return entry
