"""The Key Vault REST subset over HTTP: keys (create RSA, get, list, list versions, delete, get and
list deleted, purge, wrap and unwrap) and secrets (set, get, delete, get deleted, purge).

Every request passes, in this order: api-version, the bearer token (401 with the challenge a real
vault sends when it is missing or not acceptable), route, role-based access for the token's
principal (403 ForbiddenByRbac), then the operation. Errors have Key Vault's shape,
``{"error": {"code", "message", "innererror"?}}``. Operations of Key Vault that the local vault
does not serve answer 501 FeatureNotEmulated, naming the operation.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable, Optional
from urllib.parse import unquote

from aiohttp import web

from . import rbac
from .vault import KeyVersion, Vault, VaultError, b64url, bad_parameter, public_jwk, wrap_or_unwrap

logger = logging.getLogger(__name__)

KEY_VAULT_AUDIENCE = "https://vault.azure.net"
# Key Vault accepts the resource with or without the trailing slash.
ACCEPTED_AUDIENCES = (KEY_VAULT_AUDIENCE, KEY_VAULT_AUDIENCE + "/")
SUPPORTED_API_VERSIONS = ("7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01")
PATH_PREFIXES = ("/keys", "/deletedkeys", "/secrets", "/deletedsecrets")
MAX_BODY_BYTES = 256 * 1024

Claims = dict
Verify = Callable[[str], Claims]  # token -> claims, raises an exception with `.reason` when refused


class KeyVaultApi:
    """aiohttp handler of everything under the vault's paths."""

    def __init__(self, vault: Vault, assignments: rbac.RoleAssignments, verify: Verify, tenant_id: str):
        self.vault = vault
        self.assignments = assignments
        self._verify = verify
        self.tenant_id = tenant_id

    @staticmethod
    def serves(path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in PATH_PREFIXES)

    async def __call__(self, request: web.BaseRequest) -> web.Response:
        try:
            _check_api_version(request.query.get("api-version"))
            claims = self._authenticate(request)
            operation, arguments = _route(request.method, request.raw_path.partition("?")[0])
            body = await _json_body(request) if request.method in ("POST", "PUT", "PATCH") else {}
            answer = operation(self, _base_url(request), claims, body, *arguments)
            return web.json_response(answer) if answer is not None else web.Response(status=204)
        except _Challenge as challenge:
            return self._challenge(challenge.message)
        except VaultError as error:
            return web.json_response(error.body(), status=error.status)

    # ---- authentication ----------------------------------------------------------------
    def _authenticate(self, request: web.BaseRequest) -> Claims:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Challenge("AKV10000: Request is missing a Bearer or PoP token.")
        try:
            return self._verify(token.strip())
        except Exception as refused:  # the verifier's own error type; its reason never quotes the token
            reason = getattr(refused, "reason", None)
            if reason is None:
                raise
            raise _Challenge(f"AKV10032: {reason}") from None

    def _challenge(self, message: str) -> web.Response:
        challenge = (f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
                     f'resource="{KEY_VAULT_AUDIENCE}"')
        return web.json_response({"error": {"code": "Unauthorized", "message": message}}, status=401,
                                 headers={"WWW-Authenticate": challenge})

    # ---- keys ---------------------------------------------------------------------------
    def create_key(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.KEY_CREATE, f"keys/{name}")
        return _key_bundle(base, self.vault.create_key(name, body))

    def get_key(self, base: str, claims: Claims, body: dict, name: str, version: str = "") -> dict:
        self.assignments.check(claims, rbac.KEY_READ, f"keys/{name}")
        return _key_bundle(base, self.vault.get_key(name, version))

    def list_key_versions(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.KEY_READ, f"keys/{name}")
        return {"value": [_key_item(base, key) for key in self.vault.key_versions(name)], "nextLink": None}

    def list_keys(self, base: str, claims: Claims, body: dict) -> dict:
        self.assignments.check(claims, rbac.KEY_READ, "keys")
        return {"value": [_key_item(base, key) for key, _ in self.vault.list_keys()], "nextLink": None}

    def list_deleted_keys(self, base: str, claims: Claims, body: dict) -> dict:
        self.assignments.check(claims, rbac.DELETED_KEY_READ, "deletedkeys")
        return {"value": [{"recoveryId": f"{base}/deletedkeys/{key.name}", **deletion, **_key_item(base, key)}
                          for key, deletion in self.vault.list_keys(deleted=True)], "nextLink": None}

    def delete_key(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.KEY_DELETE, f"keys/{name}")
        return _deleted(base, "key", *self.vault.delete_key(name))

    def get_deleted_key(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.DELETED_KEY_READ, f"deletedkeys/{name}")
        return _deleted(base, "key", *self.vault.get_deleted_key(name))

    def purge_deleted_key(self, base: str, claims: Claims, body: dict, name: str) -> None:
        self.assignments.check(claims, rbac.DELETED_KEY_PURGE, f"deletedkeys/{name}")
        self.vault.purge_deleted_key(name)

    def key_operation(self, base: str, claims: Claims, body: dict, name: str, version: str, operation: str) -> dict:
        action = rbac.KEY_WRAP if operation == "wrapkey" else rbac.KEY_UNWRAP
        self.assignments.check(claims, action, f"keys/{name}")
        key = self.vault.get_key(name, version)
        return {"kid": _kid(base, key), "value": b64url(wrap_or_unwrap(key, operation, body))}

    # ---- secrets ------------------------------------------------------------------------
    def set_secret(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.SECRET_SET, f"secrets/{name}")
        return _secret_bundle(base, self.vault.set_secret(name, body))

    def get_secret(self, base: str, claims: Claims, body: dict, name: str, version: str = "") -> dict:
        self.assignments.check(claims, rbac.SECRET_GET, f"secrets/{name}")
        return _secret_bundle(base, self.vault.get_secret(name, version))

    def delete_secret(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.SECRET_DELETE, f"secrets/{name}")
        record, deletion = self.vault.delete_secret(name)
        return _deleted(base, "secret", record, deletion)

    def get_deleted_secret(self, base: str, claims: Claims, body: dict, name: str) -> dict:
        self.assignments.check(claims, rbac.DELETED_SECRET_READ, f"deletedsecrets/{name}")
        record, deletion = self.vault.get_deleted_secret(name)
        return _deleted(base, "secret", record, deletion)

    def purge_deleted_secret(self, base: str, claims: Claims, body: dict, name: str) -> None:
        self.assignments.check(claims, rbac.DELETED_SECRET_PURGE, f"deletedsecrets/{name}")
        self.vault.purge_deleted_secret(name)


class _Challenge(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


Operation = Callable[..., Optional[dict]]
_ROUTES: list[tuple[str, re.Pattern, Operation]] = []


def _add(method: str, pattern: str, operation: Operation) -> None:
    _ROUTES.append((method, re.compile("^" + pattern + "$", re.IGNORECASE), operation))


_NAME = r"([^/]+)"
_VERSION = r"([^/]*)"
_add("GET", r"/keys/?", KeyVaultApi.list_keys)
_add("GET", r"/deletedkeys/?", KeyVaultApi.list_deleted_keys)
_add("POST", rf"/keys/{_NAME}/create", KeyVaultApi.create_key)
_add("GET", rf"/keys/{_NAME}/versions", KeyVaultApi.list_key_versions)
_add("GET", rf"/keys/{_NAME}/?", KeyVaultApi.get_key)
_add("GET", rf"/keys/{_NAME}/{_VERSION}", KeyVaultApi.get_key)
_add("DELETE", rf"/keys/{_NAME}", KeyVaultApi.delete_key)
_add("POST", rf"/keys/{_NAME}/{_VERSION}/(wrapkey|unwrapkey)", KeyVaultApi.key_operation)
_add("GET", rf"/deletedkeys/{_NAME}", KeyVaultApi.get_deleted_key)
_add("DELETE", rf"/deletedkeys/{_NAME}", KeyVaultApi.purge_deleted_key)
_add("PUT", rf"/secrets/{_NAME}", KeyVaultApi.set_secret)
_add("GET", rf"/secrets/{_NAME}/?", KeyVaultApi.get_secret)
_add("GET", rf"/secrets/{_NAME}/{_VERSION}", KeyVaultApi.get_secret)
_add("DELETE", rf"/secrets/{_NAME}", KeyVaultApi.delete_secret)
_add("GET", rf"/deletedsecrets/{_NAME}", KeyVaultApi.get_deleted_secret)
_add("DELETE", rf"/deletedsecrets/{_NAME}", KeyVaultApi.purge_deleted_secret)


def _route(method: str, raw_path: str) -> tuple[Operation, list[str]]:
    for route_method, pattern, operation in _ROUTES:
        match = pattern.match(raw_path)
        if match and route_method == method:
            arguments = [unquote(group) for group in match.groups()]
            if operation is KeyVaultApi.key_operation:
                arguments[-1] = arguments[-1].lower()
            return operation, arguments
    raise VaultError(501, "FeatureNotEmulated", f"The local vault does not emulate {method} {raw_path[:200]}: it "
                     "serves create, get, list, versions, delete, purge, wrapkey and unwrapkey of RSA keys, and set, get, "
                     "delete and purge of secrets.")


def _check_api_version(version: Optional[str]) -> None:
    if not version:
        raise bad_parameter("The 'api-version' query parameter is missing.")
    if version not in SUPPORTED_API_VERSIONS:
        raise bad_parameter(f"The specified version ({version[:40]}) is not recognized. Consider using the latest "
                            f"supported version ({SUPPORTED_API_VERSIONS[-1]}).")


async def _json_body(request: web.BaseRequest) -> dict:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise VaultError(413, "RequestEntityTooLarge", "The request body is too large.")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_parameter("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_parameter("The request body must be a JSON object.")
    return body


def _base_url(request: web.BaseRequest) -> str:
    return f"{request.scheme}://{request.host}"


def _kid(base: str, key: KeyVersion) -> str:
    return f"{base}/keys/{key.name}/{key.version}"


def _key_item(base: str, key: KeyVersion) -> dict:
    """A key in a list: its id and attributes, never its key material."""
    item = {"kid": _kid(base, key), "attributes": key.attributes}
    if key.tags:
        item["tags"] = key.tags
    return item


def _key_bundle(base: str, key: KeyVersion) -> dict:
    bundle = {"key": {"kid": _kid(base, key), **public_jwk(key)}, "attributes": key.attributes}
    if key.tags:
        bundle["tags"] = key.tags
    return bundle


def _secret_bundle(base: str, record: dict) -> dict:
    bundle = {"value": record["value"], "id": f"{base}/secrets/{record['name']}/{record['version']}",
              "attributes": record["attributes"]}
    for optional in ("contentType", "tags"):
        if record.get(optional):
            bundle[optional] = record[optional]
    return bundle


def _deleted(base: str, kind: str, item: Any, deletion: dict) -> dict:
    if kind == "key":
        bundle = _key_bundle(base, item)
        name = item.name
        collection = "deletedkeys"
    else:
        bundle = {key: value for key, value in _secret_bundle(base, item).items() if key != "value"}
        name = item["name"]
        collection = "deletedsecrets"
    return {"recoveryId": f"{base}/{collection}/{name}", **deletion, **bundle}
