"""Managed identities on nodes: what a task gets when it asks for a token of its pool's identity.

On Azure a Batch node reaches its pool's user-assigned identities through the VM's Instance
Metadata Service; the network tells IMDS which VM asks. Here every node is a directory on one
machine, so each node's programs get the managed identity endpoint in their environment, in
the protocol azure-identity's ``ManagedIdentityCredential`` speaks from the environment
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``, App Service's, api-version 2019-08-01), with a
header that names the node and proves it (an HMAC under a key only the emulator holds). The
endpoint issues tokens only for the identities of that node's pool: a pool without one gets
``400 Identity not found``, as IMDS answers on a VM without one, and asking for an identity of
another pool gets the same.

Tasks are not isolated from each other (README, Limitations): a task can read another node's
environment if it goes looking. What this guards is the contract, not a boundary.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Any, Callable, Optional

from aiohttp import web

if TYPE_CHECKING:
    from ..domain.repository import Repository

logger = logging.getLogger(__name__)

TOKEN_PATH = "/msi/node/token"
API_VERSION = "2019-08-01"
HEADER_NAME = "X-IDENTITY-HEADER"


class NodeIdentityEndpoint:
    """The per-node managed identity endpoint, and the environment that points a node's programs at it."""

    def __init__(self, repo: "Repository", issue: Callable[[str, Any], Any], find_identity: Callable[..., Any]):
        """`issue(resource, identity)` signs a token; `find_identity(client_id=, object_id=, resource_id=)`
        finds a registered identity (both from the local token issuer)."""
        self._repo = repo
        self._issue = issue
        self._find_identity = find_identity
        self._key = secrets.token_bytes(32)
        self.base_url = ""  # the emulator's URL, known once it listens

    # ---- what a node's programs get -------------------------------------------------------
    def environment(self, pool_id: str, node_id: str) -> dict[str, str]:
        if not self.base_url:
            return {}
        return {"IDENTITY_ENDPOINT": f"{self.base_url}{TOKEN_PATH}", "IDENTITY_HEADER": self._header(pool_id, node_id)}

    def _header(self, pool_id: str, node_id: str) -> str:
        named = ".".join(base64.urlsafe_b64encode(part.encode("utf-8")).decode("ascii") for part in (pool_id, node_id))
        return f"{named}.{self._mac(named)}"

    def _mac(self, named: str) -> str:
        return hmac.new(self._key, named.encode("ascii"), hashlib.sha256).hexdigest()

    def _node_of(self, header: str) -> Optional[tuple[str, str]]:
        named, _, mac = header.rpartition(".")
        if not named or not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(named).encode("ascii")):
            return None
        try:
            pool_id, node_id = (base64.urlsafe_b64decode(part).decode("utf-8") for part in named.split("."))
        except ValueError:
            return None
        return pool_id, node_id

    # ---- the endpoint ---------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(TOKEN_PATH, self.token)

    async def token(self, request: web.Request) -> web.Response:
        header = request.headers.get(HEADER_NAME, "")
        if not header:
            return _error(400, "invalid_request", f"Required metadata header not specified: {HEADER_NAME}")
        node = self._node_of(header)
        if node is None:
            return _error(401, "invalid_request", f"The {HEADER_NAME} header is not one this emulator gave a node.")
        if request.query.get("api-version") != API_VERSION:
            return _error(400, "invalid_request", f"api-version must be {API_VERSION}.")
        resource = request.query.get("resource", "")
        if not resource.startswith("https://"):
            return _error(400, "invalid_resource", "The resource query parameter must be an https:// resource URI.")
        pool = self._repo.find_pool(node[0])
        if pool is None or node[1] not in pool.nodes:
            return _error(400, "invalid_request", "Identity not found: this node no longer exists.")
        assigned = (pool.data.get("identity") or {}).get("userAssignedIdentities") or []
        if not assigned:
            return _error(400, "invalid_request", "Identity not found")
        wanted = {name: request.query.get(name) for name in ("client_id", "object_id", "principal_id", "mi_res_id")}
        if any(wanted.values()):
            chosen = [item for item in assigned if _matches(item, wanted)]
        else:
            chosen = assigned if len(assigned) == 1 else []  # IMDS picks the only one, or none
        if not chosen:
            return _error(400, "invalid_request", "Identity not found" if any(wanted.values()) else
                          "Multiple user assigned identities exist, please specify the clientId / resourceId of the "
                          "identity in the token request")
        identity = self._find_identity(resource_id=chosen[0]["resourceId"])
        if identity is None:
            return _error(400, "invalid_request", "Identity not found")
        issued = self._issue(resource, identity)
        logger.info("issued a token for %s to a task on node %s of pool %s", resource, node[1], node[0])
        return web.json_response({
            "access_token": issued.access_token, "expires_on": str(issued.expires_on),
            "resource": issued.resource, "token_type": issued.token_type, "client_id": issued.client_id,
        }, headers={"Cache-Control": "no-store"})


def _matches(item: dict, wanted: dict[str, Optional[str]]) -> bool:
    principal = wanted["object_id"] or wanted["principal_id"]
    return ((not wanted["client_id"] or item["clientId"].lower() == wanted["client_id"].lower())
            and (not principal or item["principalId"].lower() == principal.lower())
            and (not wanted["mi_res_id"] or item["resourceId"].lower() == wanted["mi_res_id"].lower()))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "error_description": message}, status=status)
