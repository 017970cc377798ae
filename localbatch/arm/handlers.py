"""The management-plane endpoint (Azure Resource Manager) for the local Batch account: the
account itself (get) and its pools (create, get, list, delete), as azure-mgmt-batch calls them.

Order of a request: bearer token for ARM (401 with ARM's challenge and error body), api-version,
route (subscription, resource group and account must be the local stack's, or 404 as ARM
words it), authorization (only the developer holds Contributor on the account; anyone else gets
403 AuthorizationFailed), then the operation on the same BatchService the data plane uses.
Errors have ARM's shape, ``{"error": {"code", "message"}}``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from aiohttp import web

from ..errors import BatchServiceError
from . import pools as arm_pools
from .identities import LOCAL_DEVELOPER, LOCAL_LOCATION, LOCAL_RESOURCE_GROUP, LOCAL_SUBSCRIPTION_ID

if TYPE_CHECKING:
    from ..domain.service import BatchService

ARM_AUDIENCES = ("https://management.azure.com/", "https://management.azure.com",
                 "https://management.core.windows.net/")
SUPPORTED_API_VERSIONS = ("2025-06-01", "2024-07-01", "2024-02-01", "2023-11-01")
MAX_BODY_BYTES = 1024 * 1024
PATH_PREFIX = "/subscriptions/"
_ACCOUNT = (r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)"
            r"/providers/Microsoft\.Batch/batchAccounts/(?P<account>[^/]+)")
_ROUTES = (
    ("GET", re.compile(_ACCOUNT + r"/?$", re.IGNORECASE), "get_account"),
    ("GET", re.compile(_ACCOUNT + r"/pools/?$", re.IGNORECASE), "list_pools"),
    ("PUT", re.compile(_ACCOUNT + r"/pools/(?P<pool>[^/]+)$", re.IGNORECASE), "create_pool"),
    ("GET", re.compile(_ACCOUNT + r"/pools/(?P<pool>[^/]+)$", re.IGNORECASE), "get_pool"),
    ("DELETE", re.compile(_ACCOUNT + r"/pools/(?P<pool>[^/]+)$", re.IGNORECASE), "delete_pool"),
    ("GET", re.compile(_ACCOUNT + r"/pools/(?P<pool>[^/]+)/operationResults/delete$", re.IGNORECASE),
     "pool_deletion_status"),
)
WRITE_ACTIONS = {"create_pool": "Microsoft.Batch/batchAccounts/pools/write",
                 "delete_pool": "Microsoft.Batch/batchAccounts/pools/delete"}


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> web.Response:
        return web.json_response({"error": {"code": self.code, "message": self.message}}, status=self.status,
                                 headers=self.headers)


@dataclass(frozen=True)
class _Call:
    """What an operation needs of its request."""
    service: "BatchService"  # the account's world
    base: str    # scheme and host the client used
    path: str    # the resource's path, as sent
    query: str   # "?api-version=..." to carry into the URLs it returns
    body: dict
    if_match: Optional[str] = None
    if_none_match: Optional[str] = None


class ManagementApi:
    """aiohttp handler of everything under /subscriptions/."""

    def __init__(self, account_service: Callable[[str], Optional["BatchService"]], verify: Callable[[str], dict],
                 tenant_id: str):
        """`account_service(name)`: the BatchService (the world) of a Batch account, or None."""
        self._account_service = account_service
        self._verify = verify
        self.tenant_id = tenant_id

    @staticmethod
    def serves(path: str) -> bool:
        return path.lower().startswith(PATH_PREFIX)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            path = request.raw_path.partition("?")[0]
            claims = self._authenticate(request)
            _check_api_version(request.query.get("api-version"))
            operation, arguments, service = self._route(request.method, path)
            self._authorize(claims, operation, path)
            body = await _json_body(request) if request.method == "PUT" else {}
            call = _Call(service, f"{request.scheme}://{request.host}", path,
                         f"?api-version={request.query['api-version']}", body, request.headers.get("If-Match"),
                         request.headers.get("If-None-Match"))
            result = getattr(self, operation)(call, **arguments)
            await service.store.settled()  # what the answer reveals is durable first
            return result
        except ArmError as error:
            return error.response()
        except BatchServiceError as error:
            details = "; ".join(f"{key}: {value}" for key, value in error.values.items())
            return web.json_response({"error": {"code": error.code, "message": error.message
                                                + (f" ({details})" if details else "")}}, status=error.status)

    # ---- pipeline steps -------------------------------------------------------------------
    def _authenticate(self, request: web.BaseRequest) -> dict:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        challenge = f'Bearer authorization_uri="https://login.windows.net/{self.tenant_id}", error="invalid_token"'
        if scheme.lower() != "bearer" or not token.strip():
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
                           {"WWW-Authenticate": challenge + ', error_description="The authentication failed because '
                                                            'of missing \'Authorization\' header."'})
        try:
            return self._verify(token.strip())
        except Exception as refused:  # the verifier's own error type; its reason never quotes the token
            reason = getattr(refused, "reason", None)
            if reason is None:
                raise
            raise ArmError(401, "InvalidAuthenticationToken", f"The access token is invalid. {reason}",
                           {"WWW-Authenticate": challenge + ', error_description="The access token is invalid."'}
                           ) from None

    def _route(self, method: str, path: str) -> tuple[str, dict[str, str], "BatchService"]:
        path_known = False
        for route_method, pattern, operation in _ROUTES:
            match = pattern.match(path)
            if not match:
                continue
            path_known = True
            if route_method == method:
                arguments = {name: unquote(value) for name, value in match.groupdict().items()}
                service = self._check_scope(arguments)
                return operation, {key: value for key, value in arguments.items()
                                   if key in ("account", "pool")}, service
        if path_known:
            raise ArmError(405, "MethodNotAllowed", f"The method {method} is not allowed on this resource.")
        raise ArmError(404, "NotFound", "The local management endpoint serves the Batch account and its pools only: "
                                        "get account; create, get, list and delete pools.")

    def _check_scope(self, arguments: dict[str, str]) -> "BatchService":
        """The account's BatchService, once subscription, resource group and account are the stack's."""
        if arguments["subscription"].lower() != LOCAL_SUBSCRIPTION_ID:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{arguments['subscription'][:100]}' could "
                                                        "not be found.")
        if arguments["group"].lower() != LOCAL_RESOURCE_GROUP:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{arguments['group'][:100]}' could not be "
                                                         "found.")
        service = self._account_service(arguments["account"])
        if service is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource 'Microsoft.Batch/batchAccounts/"
                           f"{arguments['account'][:100]}' under resource group '{arguments['group'][:100]}' was not "
                           "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return service

    def _authorize(self, claims: dict, operation: str, path: str) -> None:
        if str(claims.get("oid", "")).lower() == LOCAL_DEVELOPER.principal_id:
            return
        action = WRITE_ACTIONS.get(operation, "Microsoft.Batch/batchAccounts/read")
        raise ArmError(403, "AuthorizationFailed", f"The client '{claims.get('oid', '')}' with object id "
                       f"'{claims.get('oid', '')}' does not have authorization to perform action '{action}' over scope "
                       f"'{path}' or the scope is invalid. If access was recently granted, please refresh your "
                       "credentials.")

    # ---- operations -----------------------------------------------------------------------
    def get_account(self, call: "_Call", account: str) -> web.Response:
        endpoint = urlsplit(call.service.base_url)
        return web.json_response({
            "id": call.path.rstrip("/"), "name": account, "type": "Microsoft.Batch/batchAccounts",
            "location": LOCAL_LOCATION, "identity": {"type": "None"},
            "properties": {
                "accountEndpoint": endpoint.netloc, "provisioningState": "Succeeded",
                "poolAllocationMode": "BatchService", "publicNetworkAccess": "Enabled",
                "dedicatedCoreQuota": call.service.context.quotas.cores(True),
                "lowPriorityCoreQuota": call.service.context.quotas.cores(False),
                "allowedAuthenticationModes": ["SharedKey", "AAD", "TaskAuthenticationToken"],
            }})

    def create_pool(self, call: "_Call", account: str, pool: str) -> web.Response:
        """PUT: create the pool. `If-None-Match: *` makes an existing pool 412; without it, an
        existing pool is 409 (ARM would update it: localbatch does not, see README)."""
        existing = call.service.repo.find_pool(pool)
        _check_conditions(call, existing)
        if existing is not None:
            raise ArmError(409, "PoolExists", f"The pool '{pool[:64]}' already exists; localbatch does not update "
                                              "pools through the management plane (delete it first).")
        properties = call.body.get("properties")
        if not isinstance(properties, dict):
            raise ArmError(400, "InvalidRequestBody", "The request body must have 'properties'.")
        identity = arm_pools.pool_identity(call.body.get("identity"))
        created = call.service.pools.create_pool(arm_pools.data_plane_body(pool, _validated(pool, properties)),
                                                 identity=identity)
        return web.json_response(arm_pools.arm_pool(call.path, created),
                                 headers={"ETag": f'W/"{created.data["eTag"]}"'})

    def get_pool(self, call: "_Call", account: str, pool: str) -> web.Response:
        found = call.service.repo.find_pool(pool)
        if found is None:
            raise ArmError(404, "PoolNotFound", f"The specified pool '{pool[:64]}' does not exist.")
        return web.json_response(arm_pools.arm_pool(call.path, found), headers={"ETag": f'W/"{found.data["eTag"]}"'})

    def list_pools(self, call: "_Call", account: str) -> web.Response:
        items = [arm_pools.arm_pool(f"{call.path.rstrip('/')}/{pool.id}", pool)
                 for pool in sorted(call.service.all_pools(), key=lambda p: p.id)]
        return web.json_response({"value": items})

    def delete_pool(self, call: "_Call", account: str, pool: str) -> web.Response:
        """202 and a Location to poll (ARM's asynchronous delete), or 204 when there is no such pool."""
        found = call.service.repo.find_pool(pool)
        if found is None:
            return web.Response(status=204)
        if found.state != "deleting":
            call.service.pools.delete_pool(found.id)
        return web.Response(status=202, headers={
            "Location": f"{call.base}{call.path}/operationResults/delete{call.query}"})

    def pool_deletion_status(self, call: "_Call", account: str, pool: str) -> web.Response:
        """202 while the pool is being deleted, 200 once it is gone."""
        found = call.service.repo.find_pool(pool)
        if found is not None and found.state == "deleting":
            return web.Response(status=202, headers={"Location": f"{call.base}{call.path}{call.query}"})
        return web.Response(status=200)


def _check_conditions(call: _Call, existing: Optional[Any]) -> None:
    """If-Match / If-None-Match against the pool's ETag, as ARM answers them (412)."""
    etag = f'W/"{existing.data["eTag"]}"' if existing is not None else None
    if call.if_none_match is not None and existing is not None and call.if_none_match.strip() in ("*", etag):
        raise ArmError(412, "ConditionNotMet", "The pool already exists (If-None-Match).")
    if call.if_match is not None and (existing is None or call.if_match.strip() not in ("*", etag)):
        raise ArmError(412, "ConditionNotMet", "The pool does not exist or has changed (If-Match).")


def _validated(pool_name: str, properties: dict) -> dict:
    """`properties` once the data plane's own checks (the SDK's models) accept the body they make."""
    from azure.batch import models

    from .. import schema
    schema.validate(models.BatchPoolCreateOptions, arm_pools.data_plane_body(pool_name, properties))
    return properties


def _check_api_version(version: Optional[str]) -> None:
    if not version:
        raise ArmError(400, "MissingApiVersionParameter",
                       "The api-version query parameter (?api-version=) is required for all requests.")
    if version not in SUPPORTED_API_VERSIONS:
        raise ArmError(400, "InvalidApiVersionParameter", f"The api-version '{version[:40]}' is invalid. The "
                       f"supported versions are '{','.join(SUPPORTED_API_VERSIONS)}'.")


async def _json_body(request: web.BaseRequest) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ArmError(413, "RequestEntityTooLarge", "The request body is too large.")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                                                     "deserialized.") from None
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return body
