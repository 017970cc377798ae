"""The Azure services beside Batch that the local stack plays, on their own https listener:
Key Vault (keyvault/) and the management plane for the Batch account (arm/).

They live in the localbatch process because the management plane creates the very pools the
data plane serves. They need https whatever the Batch endpoint uses: Key Vault and ARM clients
send bearer tokens over https only. Tokens are the local issuer's (identity/tokens.py).
"""
from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Callable, Optional

from aiohttp import web

from .arm.handlers import ARM_AUDIENCES, ManagementApi
from .identity.tokens import LOCAL_TENANT_ID, TokenIssuer
from .keyvault.handlers import ACCEPTED_AUDIENCES as KEY_VAULT_AUDIENCES
from .keyvault.handlers import KeyVaultApi
from .keyvault.rbac import RoleAssignments
from .keyvault.vault import Vault

if TYPE_CHECKING:
    from .domain.service import BatchService

logger = logging.getLogger(__name__)


class AzureServices:
    """One aiohttp handler for every path of the services listener."""

    def __init__(self, account_service: Callable[[str], Optional["BatchService"]], issuer: TokenIssuer,
                 state_directory: str):
        """`account_service(name)`: the BatchService of a Batch account, or None."""
        self.vault = Vault(state_directory)
        self.key_vault = KeyVaultApi(self.vault, RoleAssignments(),
                                     lambda token: issuer.verify(token, KEY_VAULT_AUDIENCES), LOCAL_TENANT_ID)
        self.management = ManagementApi(account_service, lambda token: issuer.verify(token, ARM_AUDIENCES), LOCAL_TENANT_ID)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        try:
            if self.key_vault.serves(path):
                return await self.key_vault(request)
            if self.management.serves(path):
                return await self.management(request)
        except sqlite3.Error as exc:  # the vault's state cannot be written (a full or read-only disk)
            logger.error("%s %s: the vault's state could not be written: %s", request.method, path[:200], exc)
            return web.json_response({"error": {"code": "ServiceUnavailable", "message": "The vault's state could "
                                                "not be written; nothing was changed. Retry later."}}, status=503,
                                     headers={"Retry-After": "1"})
        except Exception:  # a defect of ours: never a traceback to the client, always one in the log
            logger.exception("%s %s failed", request.method, path[:200])
            return web.json_response({"error": {"code": "InternalServerError",
                                                "message": "The local service failed; see localbatch's log."}},
                                     status=500)
        return web.json_response({"error": {"code": "NotFound", "message": "This endpoint serves Key Vault "
                                            "(/keys, /secrets, /deletedkeys, /deletedsecrets) and the management "
                                            "plane of the Batch account (/subscriptions/...)."}}, status=404)

    def close(self) -> None:
        self.vault.close()
