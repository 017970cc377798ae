"""Azure role-based access control for the local vault: built-in roles, and who holds which.

A vault with RBAC authorization (``az keyvault create --enable-rbac-authorization``) lets a
caller do a data action only if one of its role assignments allows it; otherwise 403
ForbiddenByRbac, worded as the service words it. The roles and data actions are Azure's
built-in ones (only those of the operations the local vault serves).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from ..arm.identities import LOCAL_DEVELOPER, LOCAL_RESOURCE_GROUP, LOCAL_SUBSCRIPTION_ID, LOCAL_VAULT_NAME, \
    POOL_IDENTITY
from .vault import VaultError

KEY_READ = "Microsoft.KeyVault/vaults/keys/read"
KEY_CREATE = "Microsoft.KeyVault/vaults/keys/create/action"
KEY_DELETE = "Microsoft.KeyVault/vaults/keys/delete"
KEY_WRAP = "Microsoft.KeyVault/vaults/keys/wrap/action"
KEY_UNWRAP = "Microsoft.KeyVault/vaults/keys/unwrap/action"
DELETED_KEY_READ = "Microsoft.KeyVault/vaults/deletedKeys/read/action"
DELETED_KEY_PURGE = "Microsoft.KeyVault/vaults/deletedKeys/delete"
SECRET_SET = "Microsoft.KeyVault/vaults/secrets/setSecret/action"
SECRET_GET = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
SECRET_DELETE = "Microsoft.KeyVault/vaults/secrets/delete"
DELETED_SECRET_READ = "Microsoft.KeyVault/vaults/deletedSecrets/read/action"
DELETED_SECRET_PURGE = "Microsoft.KeyVault/vaults/deletedSecrets/delete"

_KEYS = {KEY_READ, KEY_CREATE, KEY_DELETE, KEY_WRAP, KEY_UNWRAP, DELETED_KEY_READ, DELETED_KEY_PURGE}
_SECRETS = {SECRET_SET, SECRET_GET, SECRET_DELETE, DELETED_SECRET_READ, DELETED_SECRET_PURGE}
BUILT_IN_ROLES: Mapping[str, frozenset[str]] = {
    "Key Vault Administrator": frozenset(_KEYS | _SECRETS),
    "Key Vault Crypto Officer": frozenset(_KEYS),
    "Key Vault Crypto User": frozenset({KEY_READ, KEY_WRAP, KEY_UNWRAP}),
    "Key Vault Crypto Service Encryption User": frozenset({KEY_READ, KEY_WRAP, KEY_UNWRAP}),
    "Key Vault Secrets Officer": frozenset(_SECRETS),
    "Key Vault Secrets User": frozenset({SECRET_GET}),
}
# What the local stack starts with: the developer (the sample's DefaultAzureCredential) manages
# keys and secrets; the pool identity may read keys and wrap/unwrap with them, nothing more.
DEFAULT_ASSIGNMENTS: Mapping[str, tuple[str, ...]] = {
    LOCAL_DEVELOPER.principal_id: ("Key Vault Crypto Officer", "Key Vault Secrets Officer"),
    POOL_IDENTITY.principal_id: ("Key Vault Crypto Service Encryption User",),
}
VAULT_RESOURCE_ID = (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourcegroups/{LOCAL_RESOURCE_GROUP}"
                     f"/providers/microsoft.keyvault/vaults/{LOCAL_VAULT_NAME}")


class RoleAssignments:
    """principal id (a token's `oid`) -> the built-in roles it holds on the vault."""

    def __init__(self, assignments: Mapping[str, Iterable[str]] = DEFAULT_ASSIGNMENTS):
        self._roles = {principal.lower(): tuple(roles) for principal, roles in assignments.items()}
        for roles in self._roles.values():
            for role in roles:
                if role not in BUILT_IN_ROLES:
                    raise ValueError(f"unknown Key Vault role {role!r}")

    def allows(self, principal_id: str, action: str) -> bool:
        return any(action in BUILT_IN_ROLES[role] for role in self._roles.get(principal_id.lower(), ()))

    def check(self, claims: Mapping[str, object], action: str, object_path: str) -> None:
        """Raise 403 ForbiddenByRbac unless the token's principal may do `action` on `object_path`."""
        principal = str(claims.get("oid") or "")
        if self.allows(principal, action):
            return
        caller = f"appid={claims.get('appid', '')};oid={principal};iss={claims.get('iss', '')}"
        raise VaultError(403, "Forbidden", "Caller is not authorized to perform action on resource.\r\n"
                         "If role assignments, deny assignments or role definitions were changed recently, please "
                         "observe propagation time.\r\n"
                         f"Caller: {caller}\r\n"
                         f"Action: '{action}'\r\n"
                         f"Resource: '{VAULT_RESOURCE_ID}/{object_path.lower()}'\r\n"
                         "Assignment: (not found)\r\n"
                         "DenyAssignmentId: null\r\n"
                         "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
                         f"Vault: {LOCAL_VAULT_NAME};location=local\r\n", "ForbiddenByRbac")
