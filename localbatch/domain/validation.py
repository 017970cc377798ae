"""Checks of request bodies that the SDK's models cannot express, and what is kept of secrets."""
from __future__ import annotations

import datetime as dt
import re

from .. import images, wire
from ..errors import BatchServiceError, invalid_property
from ..node.credentials import hash_password
from ..node.engines import docker_unavailable_reason
from ..node.layout import CONTAINER_DATA_PATH_SOURCES
from ..node.resourcefiles import check_relative_path
from .autoscale.checks import check_formula, check_interval
from .endpoints import check_endpoint_configuration
from .extensions import without_protected_settings
from .mounts import check_mount_configuration, without_mount_secrets
from .networking import check_pool_network

_ID_ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
# An image reference as `docker pull` takes it: [registry/]repository[:tag][@digest].
_IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")


def check_id(name: str, value: str) -> None:
    if not value or len(value) > 64 or not set(value) <= _ID_ALLOWED:
        raise invalid_property(name, value, "An id may contain up to 64 letters, digits, hyphens and underscores.")


def check_durations(prefix: str, values: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if values.get(name) is not None:
            try:
                wire.parse_duration(values[name])
            except ValueError:
                raise invalid_property(f"{prefix}.{name}", values[name], "Expected an ISO-8601 duration.") from None


def check_resource_file(path: str, resource_file: dict) -> None:
    sources = [k for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if resource_file.get(k)]
    if len(sources) != 1:
        raise invalid_property(path, ",".join(sources) or "none",
                               "Specify exactly one of httpUrl, storageContainerUrl and autoStorageContainerName.")
    if sources[0] == "httpUrl" and not resource_file.get("filePath"):
        raise invalid_property(f"{path}.filePath", "", "filePath is required with httpUrl.")
    if resource_file.get("blobPrefix") and sources[0] == "httpUrl":
        raise invalid_property(f"{path}.blobPrefix", resource_file["blobPrefix"],
                               "blobPrefix applies to container sources only.")
    reason = check_relative_path(resource_file.get("filePath") or "")
    if reason:
        raise invalid_property(f"{path}.filePath", resource_file["filePath"], reason)
    if resource_file.get("fileMode"):
        try:
            int(resource_file["fileMode"], 8)
        except ValueError:
            raise invalid_property(f"{path}.fileMode", resource_file["fileMode"], "Expected an octal mode such as 0755.") from None


def check_pool_body(body: dict) -> None:
    vm_config = body.get("virtualMachineConfiguration")
    if not vm_config:
        raise BatchServiceError("MissingRequiredProperty", values={"PropertyName": "virtualMachineConfiguration"})
    check_virtual_machine_configuration(vm_config)
    check_pool_network(body.get("networkConfiguration"))
    if body.get("enableAutoScale"):
        check_formula(body.get("autoScaleFormula"))
        check_interval(body.get("autoScaleEvaluationInterval"))
        for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if body.get(name) is not None:
                raise invalid_property(name, body[name], "Target node counts cannot be set when enableAutoScale is true.")
    elif body.get("autoScaleFormula") is not None:
        raise invalid_property("autoScaleFormula", body["autoScaleFormula"], "A formula needs enableAutoScale set to true.")
    if body.get("applicationPackageReferences"):
        raise not_emulated("applicationPackageReferences")
    check_mount_configuration(body.get("mountConfiguration"))
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if (body.get(name) or 0) < 0:
            raise invalid_property(name, body[name], "The value must be zero or more.")
    if (body.get("taskSlotsPerNode") or 1) < 1:
        raise invalid_property("taskSlotsPerNode", body["taskSlotsPerNode"], "The value must be at least 1.")
    check_endpoint_configuration(body.get("networkConfiguration"))
    check_start_task(body.get("startTask"), vm_config)


def check_start_task(start_task: dict | None, vm_config: dict) -> None:
    """A pool's start task, as given to create, update or replace a pool with this VM configuration."""
    if start_task:
        for index, resource_file in enumerate(start_task.get("resourceFiles") or []):
            check_resource_file(f"startTask.resourceFiles[{index}]", resource_file)
        if start_task.get("containerSettings"):
            if not vm_config.get("containerConfiguration"):
                raise invalid_property("startTask.containerSettings", start_task["containerSettings"].get("imageName"),
                                       "The start task has containerSettings but the pool has no "
                                       "virtualMachineConfiguration.containerConfiguration.")
            check_container_settings("startTask.containerSettings", start_task["containerSettings"])


def check_virtual_machine_configuration(vm_config: dict) -> None:
    """The image is one the emulator offers; a container configuration can run on it, and here."""
    image = images.check_virtual_machine_configuration(vm_config)
    if vm_config.get("containerConfiguration"):
        check_container_configuration(vm_config["containerConfiguration"], image)


def check_container_configuration(container_config: dict, image: dict) -> None:
    """A container pool needs a DockerCompatible image, and a machine where dockerd can run."""
    name = "virtualMachineConfiguration.containerConfiguration"
    if container_config.get("type") == "criCompatible":
        raise not_emulated(f"{name}.type criCompatible")
    if container_config.get("type") != "dockerCompatible":
        raise invalid_property(f"{name}.type", container_config.get("type"),
                               "Expected dockerCompatible or criCompatible.")
    if "DockerCompatible" not in (image.get("capabilities") or []):
        reference = image["imageReference"]
        raise invalid_property(f"{name}.type", container_config["type"],
                               f"The image {reference['publisher']}/{reference['offer']}/{reference['sku']} does not "
                               "have the DockerCompatible capability (see list_supported_images()).")
    for index, image_name in enumerate(container_config.get("containerImageNames") or []):
        check_image_name(f"{name}.containerImageNames[{index}]", image_name)
    if container_config.get("containerRegistries"):
        raise not_emulated(f"{name}.containerRegistries")
    reason = docker_unavailable_reason()
    if reason is not None:
        raise invalid_property(name, container_config["type"], reason)


def check_image_name(name: str, value: str) -> None:
    if not isinstance(value, str) or not _IMAGE_REFERENCE.fullmatch(value):
        raise invalid_property(name, value, "Expected an image reference as docker pull takes it, such as "
                                            "busybox:latest or myregistry.azurecr.io/app:1.0.")


def check_container_settings(name: str, settings: dict) -> None:
    """What a (start) task's containerSettings may say here; the image is checked as a reference."""
    check_image_name(f"{name}.imageName", settings.get("imageName"))
    if settings.get("registry"):
        raise not_emulated(f"{name}.registry")
    for index, mount in enumerate(settings.get("containerHostBatchBindMounts") or []):
        if mount.get("source") not in CONTAINER_DATA_PATH_SOURCES:
            raise invalid_property(f"{name}.containerHostBatchBindMounts[{index}].source", mount.get("source"),
                                   f"Expected one of {', '.join(CONTAINER_DATA_PATH_SOURCES)}.")


def without_secrets(user_accounts: list[dict]) -> list[dict]:
    """User accounts as they are kept and shown: passwords and private keys are never stored or echoed.
    (Tasks run as the emulator's own user, so nothing needs them.)"""
    kept = []
    for account in user_accounts:
        account = {key: value for key, value in account.items() if key != "password"}
        if isinstance(account.get("linuxUserConfiguration"), dict):
            account["linuxUserConfiguration"] = {key: value for key, value in account["linuxUserConfiguration"].items()
                                                 if key != "sshPrivateKey"}
        kept.append(account)
    return kept


def pool_info_without_secrets(pool_info: dict) -> dict:
    """A job's poolInfo as kept and shown: its auto-pool's user passwords, private keys,
    extensions' protectedSettings and mount keys are never stored or echoed."""
    pool = ((pool_info or {}).get("autoPoolSpecification") or {}).get("pool") or {}
    vm_configuration = pool.get("virtualMachineConfiguration") or {}
    if not pool.get("userAccounts") and not vm_configuration.get("extensions") and not pool.get("mountConfiguration"):
        return pool_info
    kept = dict(pool)
    if pool.get("mountConfiguration"):
        kept["mountConfiguration"] = without_mount_secrets(pool["mountConfiguration"])[0]
    if pool.get("userAccounts"):
        kept["userAccounts"] = without_secrets(pool["userAccounts"])
    if vm_configuration.get("extensions"):
        kept["virtualMachineConfiguration"] = without_protected_settings(vm_configuration)
    return {**pool_info, "autoPoolSpecification": {**pool_info["autoPoolSpecification"], "pool": kept}}


def not_emulated(feature: str) -> BatchServiceError:
    return BatchServiceError("FeatureNotEmulated", values={
        "Feature": feature, "Reason": "localbatch does not emulate this feature; see LIMITATIONS in README.md."})


_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def user_record(body: dict) -> dict:
    """What a node keeps of a node user: the password only as a hash; the expiry defaults to a day
    from now, as on Azure. (A public key that is not a valid OpenSSH key is kept, and never matches.)
    The name becomes an account (and a home directory) on the node: letters, digits, '_', '.'
    and '-', not starting with '.' or '-', at most 64 characters."""
    if not _USER_NAME.match(body["name"]):
        raise invalid_property("name", body["name"].encode("unicode_escape").decode("ascii")[:80],
                               "A node user name may contain letters, digits, underscores, periods and hyphens, "
                               "must not start with a period or hyphen, and has at most 64 characters.")
    if body.get("expiryTime"):
        try:
            expiry = wire.iso(_parse_moment(body["expiryTime"]))
        except ValueError:
            raise invalid_property("expiryTime", body["expiryTime"], "Expected an ISO-8601 date and time.") from None
    else:
        expiry = wire.iso(wire.utcnow() + dt.timedelta(days=1))
    return {"name": body["name"], "isAdmin": bool(body.get("isAdmin")), "expiryTime": expiry,
            "sshPublicKey": body.get("sshPublicKey"),
            "passwordHash": hash_password(body["password"]) if body.get("password") else None}


def _parse_moment(text: str) -> dt.datetime:
    """An ISO-8601 date and time, with its offset honoured (UTC when it has none)."""
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = wire.parse_iso(text)  # 7 fraction digits, as the service writes them
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)


def job_closed(job) -> BatchServiceError:
    """The error for a change to a job that is completed, terminating or being deleted."""
    return BatchServiceError({"completed": "JobCompleted", "deleting": "JobBeingDeleted"}.get(
        job.state, "JobBeingTerminated"))


def check_output_file(path: str, output_file: dict) -> None:
    container = output_file["destination"].get("container")
    if not container:
        raise BatchServiceError("MissingRequiredProperty", values={"PropertyName": f"{path}.destination.container"})
    if not str(container["containerUrl"]).lower().startswith(("http://", "https://")):
        raise invalid_property(f"{path}.destination.container.containerUrl", "(not shown: it may hold a SAS)",
                               "Expected the http(s) URL of a blob container.")
    if not output_file["filePattern"].strip() or "\x00" in output_file["filePattern"]:
        raise invalid_property(f"{path}.filePattern", output_file["filePattern"], "Expected a file path or pattern.")
