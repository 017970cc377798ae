"""The Azure resources the local stack knows by name: its subscription, resource group and
location, the vault, and the user-assigned managed identities a pool can be given.

Like the well-known accounts (accounts.py), these are published on purpose and protect nothing.
The identities are the local token issuer's (identity/tokens.py); on Azure, ``az identity
create`` prints the same three values (resource id, client id, principal id) for one of yours.
"""
from __future__ import annotations

from typing import Optional

from ..identity.tokens import (DEVELOPER_IDENTITY, LOCAL_TENANT_ID, RESOURCE_GROUP, SUBSCRIPTION_ID,
                               WELL_KNOWN_USER_ASSIGNED_IDENTITY, ManagedIdentity, user_assigned_resource_id)

LOCAL_SUBSCRIPTION_ID = SUBSCRIPTION_ID
LOCAL_RESOURCE_GROUP = RESOURCE_GROUP
LOCAL_TENANT = LOCAL_TENANT_ID
LOCAL_LOCATION = "local"
LOCAL_VAULT_NAME = "localvault"

# Who DefaultAzureCredential is on the local stack: Contributor on the account, and Key Vault
# Crypto Officer and Secrets Officer on the vault.
LOCAL_DEVELOPER = DEVELOPER_IDENTITY
# The identity sample 3 gives its pool: the vault lets it read keys and wrap/unwrap with them.
POOL_IDENTITY = WELL_KNOWN_USER_ASSIGNED_IDENTITY
# An identity that exists but holds no role on the vault (a pool with it is refused by the vault).
UNPRIVILEGED_IDENTITY = ManagedIdentity(
    "localbatch-unprivileged-identity", client_id="5e1f0d3c-0000-4000-8000-00000000a011",
    principal_id="5e1f0d3c-0000-4000-8000-00000000a012",
    resource_id=user_assigned_resource_id("localbatch-unprivileged-identity"))
USER_ASSIGNED_IDENTITIES = (POOL_IDENTITY, UNPRIVILEGED_IDENTITY)


def find_identity(resource_id: str) -> Optional[ManagedIdentity]:
    """The known user-assigned identity with this resource id (compared case-insensitively), or None."""
    for identity in USER_ASSIGNED_IDENTITIES:
        if identity.resource_id and identity.resource_id.lower() == resource_id.lower():
            return identity
    return None
