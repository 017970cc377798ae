"""The Azure resources the local stack knows by name: its subscription, resource group, tenant,
and the user-assigned managed identities a pool can be given.

Like the well-known accounts (accounts.py), these are published on purpose and protect nothing.
On Azure they are yours: ``az identity create`` prints the same three values (resource id,
client id, principal id) for an identity of your own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

LOCAL_TENANT_ID = "72f988bf-0000-4000-8000-00000000beef"
LOCAL_SUBSCRIPTION_ID = "00000000-0000-4000-8000-000000000001"
LOCAL_RESOURCE_GROUP = "localbatch"
LOCAL_LOCATION = "local"
LOCAL_VAULT_NAME = "localvault"


@dataclass(frozen=True)
class UserAssignedIdentity:
    """A user-assigned managed identity: what ARM reports for it, and who it is in tokens."""
    name: str
    client_id: str       # appid / client_id in tokens and in ManagedIdentityCredential(client_id=...)
    principal_id: str    # oid in tokens: what role assignments name

    @property
    def resource_id(self) -> str:
        return (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{LOCAL_RESOURCE_GROUP}"
                f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{self.name}")


# The identity sample 3 gives its pool; the local vault lets it read keys and wrap/unwrap with them.
POOL_IDENTITY = UserAssignedIdentity("localbatch-pool-identity",
                                     client_id="5f0c8c6e-0000-4000-8000-00000000a001",
                                     principal_id="9a1d2f3b-0000-4000-8000-00000000b001")
# An identity that exists but holds no role on the vault (for tests of refusals).
UNPRIVILEGED_IDENTITY = UserAssignedIdentity("localbatch-unprivileged-identity",
                                             client_id="5f0c8c6e-0000-4000-8000-00000000a002",
                                             principal_id="9a1d2f3b-0000-4000-8000-00000000b002")
USER_ASSIGNED_IDENTITIES = (POOL_IDENTITY, UNPRIVILEGED_IDENTITY)


@dataclass(frozen=True)
class Principal:
    """Who a token names: its `oid` (what role assignments name) and `appid`."""
    principal_id: str
    client_id: str


# The developer running the samples: who DefaultAzureCredential is on the local stack.
LOCAL_DEVELOPER = Principal(principal_id="3c5e7a90-0000-4000-8000-00000000d001",
                            client_id="04b07795-8ddb-461a-bbee-02f9e1bf7b46")


def find_identity(resource_id: str) -> Optional[UserAssignedIdentity]:
    """The known identity with this resource id (ARM ids compare case-insensitively), or None."""
    for identity in USER_ASSIGNED_IDENTITIES:
        if identity.resource_id.lower() == resource_id.lower():
            return identity
    return None
