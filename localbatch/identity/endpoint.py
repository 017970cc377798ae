"""The token issuer over HTTP: the managed identity endpoint, and the published keys.

It speaks Azure App Service's managed identity protocol (api-version 2019-08-01), which
azure-identity's ``ManagedIdentityCredential`` and ``DefaultAzureCredential`` (through MSAL) use when
the environment holds ``IDENTITY_ENDPOINT`` (this endpoint's URL) and ``IDENTITY_HEADER`` (its
secret)::

    GET /msi/token?api-version=2019-08-01&resource=https://batch.core.windows.net/[&client_id=|&mi_res_id=|&principal_id=]
    X-IDENTITY-HEADER: <secret>
    -> 200 {"access_token", "expires_on", "resource", "token_type", "client_id"}

Keys and discovery, as Entra ID publishes them for a tenant:
``/<tenant>/discovery/keys`` (JWKS) and ``/<tenant>/.well-known/openid-configuration``.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from .tokens import ISSUER_PREFIX, TokenIssuer

logger = logging.getLogger(__name__)

TOKEN_PATH = "/msi/token"
API_VERSION = "2019-08-01"
IDENTITY_HEADER_FILE = "identity-header"
IDENTITY_HEADER_ENV_VAR = "LOCALBATCH_IDENTITY_HEADER"


def load_identity_header(directory: Path | str) -> str:
    """The secret a caller of the token endpoint must send: ``LOCALBATCH_IDENTITY_HEADER`` if set,
    else the one kept in ``DIRECTORY/identity-header`` (made on first use, 0600)."""
    from_environment = os.environ.get(IDENTITY_HEADER_ENV_VAR)
    if from_environment:
        return from_environment
    path = Path(directory) / IDENTITY_HEADER_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, value.encode("ascii"))
    finally:
        os.close(descriptor)
    return value


class IdentityEndpoint:
    """Request handlers for the token endpoint and the key discovery documents."""

    def __init__(self, issuer: TokenIssuer, identity_header: str):
        self.issuer = issuer
        self._identity_header = identity_header

    def routes(self) -> dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]]:
        """Path -> handler, for GET."""
        tenant = self.issuer.tenant_id
        return {TOKEN_PATH: self.token, f"/{tenant}/discovery/keys": self.keys,
                f"/{tenant}/discovery/v2.0/keys": self.keys,
                f"/{tenant}/.well-known/openid-configuration": self.openid_configuration}

    def in_front_of(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        """A request handler that serves this endpoint's paths (GET) and passes anything else to ``handler``."""
        routes = self.routes()

        async def serve(request: web.BaseRequest) -> web.StreamResponse:
            own = routes.get(request.path) if request.method == "GET" else None
            return await (own or handler)(request)
        return serve

    async def token(self, request: web.BaseRequest) -> web.Response:
        sent = request.headers.get("X-IDENTITY-HEADER", "")
        if not sent:
            return _error(400, "The X-IDENTITY-HEADER header is missing.")
        if not hmac.compare_digest(sent.encode("utf-8", "replace"), self._identity_header.encode("utf-8")):
            return _error(401, "The X-IDENTITY-HEADER header is not this endpoint's secret.")
        query = request.query
        if query.get("api-version") != API_VERSION:
            return _error(400, f"api-version must be {API_VERSION}.")
        resource = query.get("resource", "")
        if not resource:
            return _error(400, "The resource query parameter is missing.")
        if not resource.startswith("https://"):
            return _error(400, f"AADSTS500011: The resource principal named {resource[:200]} was not found in "
                               f"the tenant {self.issuer.tenant_id}.")
        selectors = {name: query.get(name) for name in ("client_id", "principal_id", "object_id", "mi_res_id")}
        identity = self.issuer.find_identity(
            client_id=selectors["client_id"], object_id=selectors["principal_id"] or selectors["object_id"],
            resource_id=selectors["mi_res_id"])
        if identity is None:
            named = ", ".join(f"{name}={value}" for name, value in selectors.items() if value)
            return _error(400, f"No managed identity found for the specified {named[:300]}.")
        issued = self.issuer.issue(resource, identity)
        logger.info("issued a token for %s to %s", resource, identity.name)
        return web.json_response({
            "access_token": issued.access_token, "expires_on": str(issued.expires_on),
            "resource": issued.resource, "token_type": issued.token_type, "client_id": issued.client_id,
        }, headers={"Cache-Control": "no-store"})

    async def keys(self, _request: web.BaseRequest) -> web.Response:
        return web.json_response(self.issuer.jwks())

    async def openid_configuration(self, request: web.BaseRequest) -> web.Response:
        base = f"{request.scheme}://{request.host}/{self.issuer.tenant_id}"
        return web.json_response({
            "issuer": self.issuer.issuer, "jwks_uri": f"{base}/discovery/keys",
            "token_endpoint": f"{request.scheme}://{request.host}{TOKEN_PATH}",
            "id_token_signing_alg_values_supported": ["RS256"], "tenant_region_scope": "local",
            "cloud_instance_name": "localbatch", "issuer_prefix": ISSUER_PREFIX,
        })


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"statusCode": status, "message": message}, status=status)
