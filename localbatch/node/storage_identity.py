"""Storage access through a node's identity: what Batch itself uses when it reads or writes blobs
"through a node identity" (an `identityReference`: resource files, output files, node log
uploads, blob container mounts).

On Azure the node agent asks the VM's IMDS for a Storage token of the named user-assigned
identity of the pool, and calls Storage with it. Here the agent asks the same local issuer the
node's managed identity endpoint asks (node/managed_identity.py), in-process and with the same
rule: only the identities of the node's pool. The token goes in an `Authorization: Bearer`
header (Azurite accepts them with `--oauth basic`, over https); it is never logged.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Callable, Optional, Union

STORAGE_RESOURCE = "https://storage.azure.com/"
# Bearer tokens need Storage service version 2017-11-09 or later: name one on every such call.
STORAGE_SERVICE_VERSION = "2021-08-06"

SslOption = Union[ssl.SSLContext, bool]


class StorageIdentityError(Exception):
    """No Storage token for that identity: it is not one of the pool's (the text says so, as IMDS would)."""


@dataclass(frozen=True)
class NodeStorageCredential:
    """How a node reaches Storage as one of its pool's identities.

    `issue(resource, identity_resource_id)` returns an access token or raises StorageIdentityError;
    `ssl` is what the node trusts for https (the node CA bundle, when the stack has one).
    """
    issue: Callable[[str, str], str]
    ssl: SslOption = True

    def headers(self, identity_reference: Optional[dict]) -> dict[str, str]:
        """The headers of a Storage call made as `identity_reference` (none without one)."""
        if not identity_reference:
            return {}
        resource_id = identity_reference.get("resourceId") or ""
        if not resource_id:
            raise StorageIdentityError("The identityReference names no resourceId.")
        token = self.issue(STORAGE_RESOURCE, resource_id)
        return {"Authorization": f"Bearer {token}", "x-ms-version": STORAGE_SERVICE_VERSION}


def ssl_option(ca_bundle: Optional[str]) -> SslOption:
    """What a node's Storage calls trust: the system's CAs, plus `ca_bundle` when given."""
    if not ca_bundle:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_bundle)
    return context

