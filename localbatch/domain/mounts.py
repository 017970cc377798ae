"""A pool's mountConfiguration: its checks, what is kept and shown of it (no secrets), the mounts
a node makes from it, and the node error a failed mount gives.

Only azureBlobFileSystemConfiguration is emulated (node/blobmount/); the other kinds answer
501 naming them. A secret credential (accountKey or sasKey) is kept apart from what GET returns,
in the pool's `mount_secrets`, by mount index, because nodes added later, rebooted or brought
back after a restart must mount again; an identityReference is no secret: the node's helper gets
Storage tokens for that identity from the node's managed identity endpoint.
"""
from __future__ import annotations

import re
from typing import Optional

from ..errors import invalid_property, missing_property
from ..node.blobmount.manager import BlobMount, MountError, account_url, fuse_unavailable_reason
from ..node.resourcefiles import check_relative_path
from .entities import Pool

MAX_MOUNTS = 10   # Batch's limit of mounted file systems per pool
BLOB = "azureBlobFileSystemConfiguration"
NOT_EMULATED_KINDS = ("nfsMountConfiguration", "cifsMountConfiguration", "azureFileShareConfiguration")
SECRETS = ("accountKey", "sasKey")
_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
MOUNT_ERROR_CODE = "MountConfigurationError"
MOUNT_ERROR_MESSAGE = "An error was encountered while configuring specified mount(s)"


def check_mount_configuration(mounts: Optional[list], prefix: str = "mountConfiguration") -> None:
    """What the service checks of a mountConfiguration (and what the emulator can mount)."""
    from .validation import not_emulated  # validation imports this module
    if not mounts:
        return
    if len(mounts) > MAX_MOUNTS:
        raise invalid_property(prefix, f"{len(mounts)} entries",
                               f"A pool may mount at most {MAX_MOUNTS} file systems.")
    paths: list[tuple[str, str]] = []
    for index, entry in enumerate(mounts):
        name = f"{prefix}[{index}]"
        kinds = [kind for kind in (BLOB, *NOT_EMULATED_KINDS) if (entry or {}).get(kind)]
        if len(kinds) != 1:
            raise invalid_property(name, ",".join(kinds) or "none",
                                   "Specify exactly one of azureBlobFileSystemConfiguration, nfsMountConfiguration, "
                                   "cifsMountConfiguration and azureFileShareConfiguration.")
        if kinds[0] != BLOB:
            raise not_emulated(f"{name}.{kinds[0]}")
        blob = entry[BLOB]
        path = f"{name}.{BLOB}"
        _check_blob(path, blob)
        paths.append((f"{path}.relativeMountPath", blob["relativeMountPath"].strip("/")))
    _check_distinct(paths)
    reason = fuse_unavailable_reason()
    if reason is not None:
        raise invalid_property(f"{prefix}[0].{BLOB}", "(not shown)", reason)


def _check_blob(path: str, blob: dict) -> None:
    for required in ("accountName", "containerName", "relativeMountPath"):
        if not blob.get(required):
            raise missing_property(f"{path}.{required}")
    credentials = [name for name in (*SECRETS, "identityReference") if blob.get(name)]
    if len(credentials) != 1:
        raise invalid_property(path, ",".join(credentials) or "none",
                               "Specify exactly one of accountKey, sasKey and identityReference.")
    if credentials[0] == "identityReference" and not blob["identityReference"].get("resourceId"):
        raise missing_property(f"{path}.identityReference.resourceId")
    if not _ACCOUNT_NAME.match(blob["accountName"]):
        raise invalid_property(f"{path}.accountName", blob["accountName"],
                               "A storage account name has 3 to 24 lower-case letters and digits.")
    if not _CONTAINER_NAME.match(blob["containerName"]):
        raise invalid_property(f"{path}.containerName", blob["containerName"],
                               "A container name has 3 to 63 lower-case letters, digits and single hyphens, "
                               "starting and ending with a letter or digit.")
    relative = blob["relativeMountPath"]
    reason = check_relative_path(relative) or (
        "The path may not contain control characters." if any(ord(c) < 32 for c in relative) else None) or (
        "The path must name a directory below the mounts directory." if any(
            segment in ("", ".") for segment in relative.strip("/").split("/")) else None)
    if reason:
        raise invalid_property(f"{path}.relativeMountPath", relative.encode("unicode_escape").decode("ascii"),
                               reason.replace("task working directory", "mounts directory (AZ_BATCH_NODE_MOUNTS_DIR)"))
    if blob.get("blobfuseOptions") is not None and "\x00" in blob["blobfuseOptions"]:
        raise invalid_property(f"{path}.blobfuseOptions", "(contains NUL)", "The options may not contain NUL.")


def _check_distinct(paths: list[tuple[str, str]]) -> None:
    """Two mounts may not share a path, and one may not lie inside another (blobfuse2 does not
    support overlapping mount paths)."""
    for position, (name, path) in enumerate(paths):
        for other_name, other in paths[:position]:
            if path == other:
                raise invalid_property(name, path, f"The relativeMountPath is already used by {other_name}.")
            if path.startswith(other + "/") or other.startswith(path + "/"):
                raise invalid_property(name, path, f"The mount overlaps the one of {other_name} ({other}).")


def without_mount_secrets(mounts: Optional[list]) -> tuple[Optional[list], dict]:
    """The mountConfiguration as kept and shown (no accountKey or sasKey), and the secrets by index."""
    if not mounts:
        return mounts, {}
    kept, secrets = [], {}
    for index, entry in enumerate(mounts):
        blob = (entry or {}).get(BLOB)
        if blob:
            secrets[str(index)] = {name: blob[name] for name in SECRETS if blob.get(name)}
            entry = {**entry, BLOB: {key: value for key, value in blob.items() if key not in SECRETS}}
        kept.append(entry)
    return kept, secrets


def auto_pool_mount_secrets(pool_info: dict) -> dict:
    """The mount secrets of a poolInfo's auto-pool specification (kept apart, like a pool's)."""
    pool = ((pool_info or {}).get("autoPoolSpecification") or {}).get("pool") or {}
    return without_mount_secrets(pool.get("mountConfiguration"))[1]


def with_mount_secrets(pool_info: dict, secrets: dict) -> dict:
    """A kept poolInfo with its auto-pool's mount secrets put back, to create the auto-pool from."""
    pool = ((pool_info or {}).get("autoPoolSpecification") or {}).get("pool") or {}
    if not secrets or not pool.get("mountConfiguration"):
        return pool_info
    mounts = []
    for index, entry in enumerate(pool["mountConfiguration"]):
        if (entry or {}).get(BLOB) and str(index) in secrets:
            entry = {**entry, BLOB: {**entry[BLOB], **secrets[str(index)]}}
        mounts.append(entry)
    return {**pool_info, "autoPoolSpecification": {**pool_info["autoPoolSpecification"],
                                                   "pool": {**pool, "mountConfiguration": mounts}}}


def has_identity_mounts(pool: Pool) -> bool:
    """Whether a node of the pool mounts a container through its managed identity (which needs the
    node's identity endpoint, up only once localbatch listens)."""
    return any(((entry or {}).get(BLOB) or {}).get("identityReference")
               for entry in pool.data.get("mountConfiguration") or [])


def pool_mounts(pool: Pool, blob_endpoint: str) -> list[BlobMount]:
    """The blob mounts a node of `pool` makes, credentials included; MountError for a mount
    through an identity the pool does not have."""
    mounts = []
    for index, entry in enumerate(pool.data.get("mountConfiguration") or []):
        blob = (entry or {}).get(BLOB)
        if blob:
            credential = dict((pool.mount_secrets or {}).get(str(index)) or {})
            if blob.get("identityReference"):
                credential = _identity_credential(pool, index, blob["identityReference"]["resourceId"])
            mounts.append(BlobMount(index, blob["relativeMountPath"].strip("/"), blob["accountName"],
                                    blob["containerName"], account_url(blob_endpoint, blob["accountName"]),
                                    credential, blob.get("blobfuseOptions") or ""))
    return mounts


def _identity_credential(pool: Pool, index: int, resource_id: str) -> dict:
    """How the helper asks the node's endpoint for Storage tokens of that identity (by its client
    id); MountError when the identity is not one of the pool's, as Batch cannot mount with it."""
    for identity in ((pool.data.get("identity") or {}).get("userAssignedIdentities") or []):
        if identity.get("resourceId", "").lower() == resource_id.lower():
            return {"identityResourceId": identity["resourceId"], "identityClientId": identity.get("clientId")}
    relative = pool.data["mountConfiguration"][index][BLOB]["relativeMountPath"].strip("/")
    raise MountError(relative, f"Identity not found: {resource_id} is not a user-assigned identity of pool "
                               f"{pool.id}, so the node cannot get Storage tokens for it.")


def mount_error(relative_mount_path: str, message: str) -> dict:
    """The node error of a node whose mount failed (the node is unusable)."""
    return {"code": MOUNT_ERROR_CODE, "message": MOUNT_ERROR_MESSAGE,
            "errorDetails": [{"name": "Message", "value": message},
                             {"name": "MountConfigurationPath", "value": relative_mount_path}]}
