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
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from aiohttp import web

if TYPE_CHECKING:
    from ..domain.entities import Pool

logger = logging.getLogger(__name__)

TOKEN_PATH = "/msi/node/token"
API_VERSION = "2019-08-01"
HEADER_NAME = "X-IDENTITY-HEADER"


class NodeIdentityEndpoint:
    """The per-node managed identity endpoint, and the environment that points a node's programs at it."""

    def __init__(self, find_pool: Callable[[str, str], Optional["Pool"]], issue: Callable[[str, Any], Any],
                 find_identity: Callable[..., Any]):
        """`find_pool(account, pool_id)` finds a pool of an account; `issue(resource, identity)` signs a
        token; `find_identity(client_id=, object_id=, resource_id=)` finds a registered identity."""
        self._find_pool = find_pool
        self._issue = issue
        self._find_identity = find_identity
        self._key = secrets.token_bytes(32)
        self.base_url = ""  # the emulator's URL, known once it listens

    # ---- what a node's programs get -------------------------------------------------------
    def environment(self, account: str, pool_id: str, node_id: str) -> dict[str, str]:
        if not self.base_url:
            return {}
        return {"IDENTITY_ENDPOINT": f"{self.base_url}{TOKEN_PATH}",
                "IDENTITY_HEADER": self._header(account, pool_id, node_id)}

    def _header(self, account: str, pool_id: str, node_id: str) -> str:
        named = ".".join(base64.urlsafe_b64encode(part.encode("utf-8")).decode("ascii")
                         for part in (account, pool_id, node_id))
        return f"{named}.{self._mac(named)}"

    def _mac(self, named: str) -> str:
        return hmac.new(self._key, named.encode("ascii"), hashlib.sha256).hexdigest()

    def _node_of(self, header: str) -> Optional[tuple[str, str, str]]:
        """(account, pool id, node id) of a header this endpoint made, else None."""
        named, _, mac = header.rpartition(".")
        if not named.isascii() or not mac.isascii():
            return None
        if not named or not hmac.compare_digest(mac.encode("ascii"), self._mac(named).encode("ascii")):
            return None
        try:
            account, pool_id, node_id = (base64.urlsafe_b64decode(part).decode("utf-8") for part in named.split("."))
        except ValueError:
            return None
        return account, pool_id, node_id

    def issue_for_node(self, account: str, pool_id: str, node_id: str, resource: str,
                       wanted: dict[str, Optional[str]]) -> Any:
        """A token for `resource` as one of the node's pool identities: the one `wanted` names
        (client_id, object_id, principal_id or mi_res_id), or the pool's only one. Raises
        IdentityNotFound, with what IMDS would say, when the pool has no such identity."""
        pool = self._find_pool(account, pool_id)
        if pool is None or node_id not in pool.nodes:
            raise IdentityNotFound("Identity not found: this node no longer exists.")
        assigned = (pool.data.get("identity") or {}).get("userAssignedIdentities") or []
        if not assigned:
            raise IdentityNotFound("Identity not found")
        if any(wanted.values()):
            chosen = [item for item in assigned if _matches(item, wanted)]
        else:
            chosen = assigned if len(assigned) == 1 else []  # IMDS picks the only one, or none
        if not chosen:
            raise IdentityNotFound("Identity not found" if any(wanted.values()) else
                                   "Multiple user assigned identities exist, please specify the clientId / "
                                   "resourceId of the identity in the token request")
        identity = self._find_identity(resource_id=chosen[0]["resourceId"])
        if identity is None:
            raise IdentityNotFound("Identity not found")
        return self._issue(resource, identity)

    # ---- the endpoint ---------------------------------------------------------------------
    def in_front_of(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """A request handler that serves GET TOKEN_PATH and passes anything else to ``handler``."""
        async def serve(request: web.BaseRequest) -> web.StreamResponse:
            if request.method == "GET" and request.path == TOKEN_PATH:
                return await self.token(request)
            return await handler(request)
        return serve

    async def token(self, request: web.BaseRequest) -> web.Response:
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
        account, pool_id, node_id = node
        wanted = {name: request.query.get(name) for name in ("client_id", "object_id", "principal_id", "mi_res_id")}
        try:
            issued = self.issue_for_node(account, pool_id, node_id, resource, wanted)
        except IdentityNotFound as not_found:
            return _error(400, "invalid_request", not_found.description)
        logger.info("issued a token for %s to a program on node %s of pool %s", resource, node_id, pool_id)
        return web.json_response({
            "access_token": issued.access_token, "expires_on": str(issued.expires_on),
            "resource": issued.resource, "token_type": issued.token_type, "client_id": issued.client_id,
        }, headers={"Cache-Control": "no-store"})


class IdentityNotFound(Exception):
    """The node's pool has no identity that matches; `description` is what IMDS answers."""

    def __init__(self, description: str):
        super().__init__(description)
        self.description = description


def _matches(item: dict, wanted: dict[str, Optional[str]]) -> bool:
    principal = wanted.get("object_id") or wanted.get("principal_id")
    return ((not wanted.get("client_id") or item["clientId"].lower() == wanted["client_id"].lower())
            and (not principal or item["principalId"].lower() == principal.lower())
            and (not wanted.get("mi_res_id") or item["resourceId"].lower() == wanted["mi_res_id"].lower()))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "error_description": message}, status=status)
