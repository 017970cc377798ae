"""Identity for the local stack: a development CA and certificates, and a local token issuer.

- ``certificates``: ``ensure_development_certificates(directory)`` (CA, server certificate, trust bundle);
- ``tokens``: ``TokenIssuer`` (issue, verify, register identities, JWKS) and the well-known identities;
- ``endpoint``: the managed identity endpoint (App Service protocol, 2019-08-01) and key discovery.
"""
from .tokens import (ARM_AUDIENCE, BATCH_AUDIENCE, DEVELOPER_IDENTITY, KEY_VAULT_AUDIENCE, LOCAL_TENANT_ID,
                     STORAGE_AUDIENCE, WELL_KNOWN_USER_ASSIGNED_IDENTITY, IssuedToken, ManagedIdentity,
                     TokenIssuer, TokenRejected, new_identity, tenant_issuer, user_assigned_resource_id)

__all__ = ["ARM_AUDIENCE", "BATCH_AUDIENCE", "DEVELOPER_IDENTITY", "KEY_VAULT_AUDIENCE", "LOCAL_TENANT_ID",
           "STORAGE_AUDIENCE", "WELL_KNOWN_USER_ASSIGNED_IDENTITY", "IssuedToken", "ManagedIdentity",
           "TokenIssuer", "TokenRejected", "new_identity", "tenant_issuer", "user_assigned_resource_id"]
