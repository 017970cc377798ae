"""An OpenAPI 3.0 description of localbatch's REST operations, generated at run time for fuzzing.

Derived from two sources only, both read when the description is built (nothing is vendored):
- localbatch's route table (localbatch/routes.py): which method and path template each
  operation has, and its operation name (used as operationId);
- the installed azure-batch SDK (15.x, api-version 2025-06-01):
  * azure/batch/_operations/_operations.py, read with `ast`: for each `build_batch_*_request`
    function its URL template, verb, query parameters (`timeOut`, `$filter`, `maxresults`, ...)
    and optional request headers; for each client method the success status codes it accepts
    (`status_code not in [...]`), the model it sends as body and the model it deserializes;
  * azure/batch/models/_models.py and _enums.py: each model's rest fields give JSON names,
    types (from the type hints), read-only fields (visibility ["read"]) and enum values.

How it differs from the official description (BatchService.json in Azure/azure-rest-api-specs):
- no descriptions, examples, x-ms-* extensions, pageable or long-running markers;
- no constraints the SDK does not carry: no minLength/maximum/patterns on ids or counts, so
  requests are more hostile than the official document would allow;
- enums in answers are matched regardless of case (the SDK's enums are case-insensitive and the
  service answers e.g. nodeFillType "Spread"); requests use the SDK's spelling;
- "required" comes from the SDK's type hints (a field not Optional in the model), not from
  the specification's own lists, and only for requests (the SDK types read-only fields the
  service may leave out as required); durations are a pattern that allows days and fractional
  seconds; integers the SDK sends as strings (`format="str"`) are strings of digits; enums are closed here (the SDK's values), extensible there;
- a GET or HEAD that takes If-None-Match / If-Modified-Since also declares 304 without a body;
- error responses are declared once, as the Batch error body, for every 4XX and for 501;
- `client-request-id`, `ocp-date` and `Authorization` are left to the signer (requests are
  signed with Shared Key as the SDK signs them), `api-version` is the one version served;
- routes localbatch serves that the SDK has no operation for are left out.
"""
from __future__ import annotations

import ast
import datetime
import enum
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import azure.batch as batch_package
import azure.batch.models as models_package
from azure.batch.models import _models

from localbatch.routes import build_router

API_VERSION = "2025-06-01"
OPERATIONS_SOURCE = Path(batch_package.__file__).parent / "_operations" / "_operations.py"

# Headers the signer sets itself, or that the SDK sets the same on every request.
_SIGNER_HEADERS = {"ocp-date", "accept", "content-type", "client-request-id", "return-client-request-id"}
# ISO 8601 durations as the service writes them: days and fractional seconds included (its "unlimited"
# is P10675199DT2H48M5.4775807S), which JSON Schema's "duration" format (RFC 3339) does not allow.
ISO_DURATION = r"^P([0-9]+D)?(T([0-9]+H)?([0-9]+M)?([0-9]+(\.[0-9]+)?S)?)?$"
_SERIALIZER_TYPES = {"int": {"type": "integer"}, "str": {"type": "string"}, "bool": {"type": "boolean"},
                     "[str]": {"type": "array", "items": {"type": "string"}},
                     "rfc-1123": {"type": "string"}}


@dataclass
class SdkOperation:
    """What azure-batch knows of one REST operation."""
    builder: str
    method: str
    url: str
    query: dict[str, dict] = field(default_factory=dict)
    headers: dict[str, dict] = field(default_factory=dict)
    has_body: bool = False
    body_model: Optional[str] = None
    body_required: bool = True
    statuses: list[int] = field(default_factory=list)
    response_model: Optional[str] = None
    response_is_list: bool = False
    streams: bool = False


def _string(node: ast.AST) -> Optional[str]:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _read_builders(tree: ast.Module) -> dict[str, SdkOperation]:
    builders: dict[str, SdkOperation] = {}
    for function in tree.body:
        if not (isinstance(function, ast.FunctionDef) and function.name.startswith("build_batch_")):
            continue
        operation = SdkOperation(function.name, "", "")
        operation.has_body = "content_type" in ast.unparse(function)
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "_url":
                operation.url = _string(node.value) or ""
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "HttpRequest":
                for keyword in node.keywords:
                    if keyword.arg == "method":
                        operation.method = _string(keyword.value) or ""
            elif (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                  and isinstance(node.targets[0].value, ast.Name) and isinstance(node.value, ast.Call)):
                where, name = node.targets[0].value.id, _string(node.targets[0].slice)
                arguments = [_string(arg) for arg in node.value.args]
                kind = arguments[2] if len(arguments) > 2 else "str"
                schema = dict(_SERIALIZER_TYPES.get(kind or "str", {"type": "string"}))
                if name is None or name.lower() in _SIGNER_HEADERS or name == "api-version":
                    continue
                if where == "_params":
                    operation.query[name] = schema
                elif where == "_headers":
                    operation.headers[name] = schema
        builders[function.name] = operation
    return builders


def _annotation_model(annotation: Optional[ast.AST]) -> tuple[Optional[str], bool]:
    """The model a parameter annotation names, and whether the parameter is required."""
    text = ast.unparse(annotation) if annotation is not None else ""
    match = re.fullmatch(r"(Optional\[)?_models\.(?:_models\.)?(\w+)\]?", text)
    return (match.group(2), not match.group(1)) if match else (None, True)


def read_sdk_operations() -> list[SdkOperation]:
    """Every operation of the SDK's client mixin, with its builder's wire details."""
    tree = ast.parse(OPERATIONS_SOURCE.read_text())
    builders = _read_builders(tree)
    found = []
    for mixin in (node for node in tree.body if isinstance(node, ast.ClassDef) and "OperationsMixin" in node.name):
        for method in (node for node in mixin.body if isinstance(node, ast.FunctionDef)):
            calls = [node.func.id for node in ast.walk(method) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Name) and node.func.id in builders]
            if not calls:
                continue
            operation = builders[calls[0]]
            for arg in method.args.args[1:]:
                model, required = _annotation_model(arg.annotation)
                if model:
                    operation.body_model, operation.body_required = model, required
            for node in ast.walk(method):
                if (isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.NotIn)
                        and ast.unparse(node.left) == "response.status_code"):
                    operation.statuses = [element.value for element in node.comparators[0].elts]
                elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_deserialize":
                    target = ast.unparse(node.args[0])
                    listed = re.fullmatch(r"list\[_models\.(\w+)\]", target)
                    single = re.fullmatch(r"_models\.(\w+)", target)
                    if listed:
                        operation.response_model, operation.response_is_list = listed.group(1), True
                    elif single:
                        operation.response_model = single.group(1)
                elif isinstance(node, ast.Attribute) and node.attr == "iter_bytes":
                    operation.streams = True   # every getter may stream; only a model-less one always does
            found.append(operation)
    return found


def _enum_schema(values: type[enum.Enum], for_request: bool) -> dict:
    """Requests use the SDK's spelling; answers may differ in case, as the SDK's enums (case-insensitive)
    allow and the service does (a pool without a policy reports nodeFillType "Spread")."""
    if for_request:
        return {"type": "string", "enum": [item.value for item in values]}
    return {"type": "string", "pattern": "(?i)^(?:" + "|".join(re.escape(item.value) for item in values) + ")$"}


class _ModelSchemas:
    """JSON schemas of the SDK's models, as components; `for_request` leaves out read-only fields."""

    def __init__(self) -> None:
        self.components: dict[str, dict] = {}
        self._namespace = {"_models": models_package, **vars(_models)}

    def reference(self, model: type, for_request: bool) -> dict:
        name = model.__name__ + ("Request" if for_request else "")
        if name not in self.components:
            self.components[name] = {}     # placeholder first: models refer to themselves
            self.components[name] = self._object(model, for_request)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, model: type, for_request: bool) -> dict:
        model()  # the SDK builds its rest-field table on first instantiation
        hints = typing.get_type_hints(model, globalns=self._namespace)
        properties, required = {}, []
        for attribute, rest_field in model._attr_to_rest_field.items():  # pylint: disable=protected-access
            if for_request and rest_field._visibility == ["read"]:  # pylint: disable=protected-access
                continue
            annotation = hints[attribute]
            optional = type(None) in typing.get_args(annotation)
            name = rest_field._rest_name  # pylint: disable=protected-access
            if rest_field._format == "str":  # pylint: disable=protected-access
                properties[name] = {"type": "string", "pattern": "^-?[0-9]+$"}   # an integer sent as a string
            else:
                properties[name] = self.type_schema(annotation, for_request)
            # The SDK types many read-only fields as not Optional that the service leaves out (ipv6Address
            # on an IPv4 node): only a request's required fields are enforced.
            if for_request and not optional:
                required.append(name)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        if for_request:
            schema["additionalProperties"] = False
        return schema

    def type_schema(self, annotation: Any, for_request: bool) -> dict:
        origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Union:
            members = [argument for argument in arguments if argument is not type(None)]
            enums = [member for member in members if isinstance(member, type) and issubclass(member, enum.Enum)]
            if enums:
                return _enum_schema(enums[0], for_request)
            if len(members) == 1:
                return self.type_schema(members[0], for_request)
            return {"anyOf": [self.type_schema(member, for_request) for member in members]}
        if origin is list:
            return {"type": "array", "items": self.type_schema(arguments[0], for_request)}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.type_schema(arguments[1], for_request)}
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return _enum_schema(annotation, for_request)
        if annotation is bool:
            return {"type": "boolean"}
        if annotation is int:
            return {"type": "integer", "format": "int32"}
        if annotation is float:
            return {"type": "number"}
        if annotation is str:
            return {"type": "string"}
        if annotation is datetime.datetime:
            return {"type": "string", "format": "date-time"}
        if annotation is datetime.timedelta:
            return {"type": "string", "pattern": ISO_DURATION}
        if annotation is bytes:
            return {"type": "string", "format": "byte"}
        if inspect.isclass(annotation) and hasattr(annotation, "_attr_to_rest_field") or (
                inspect.isclass(annotation) and issubclass(annotation, _models._Model)):  # pylint: disable=protected-access
            return self.reference(annotation, for_request)
        return {}


BATCH_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "odata.metadata": {"type": "string"},
        "code": {"type": "string", "minLength": 1},
        "message": {"type": "object", "required": ["value"],
                    "properties": {"lang": {"type": "string"}, "value": {"type": "string"}}},
        "values": {"type": "array", "items": {"type": "object", "required": ["key"],
                                              "properties": {"key": {"type": "string"},
                                                             "value": {"type": "string"}}}},
    },
}


def _template_key(method: str, template: str) -> tuple[str, str]:
    return method, re.sub(r"\{[^}]+\}", "{}", "/" + template.strip("/")).lower()


def build_description() -> dict:
    """The OpenAPI 3.0 document for every localbatch route the SDK also knows."""
    sdk = {_template_key(operation.method, operation.url): operation for operation in read_sdk_operations()}
    schemas = _ModelSchemas()
    paths: dict[str, dict] = {}
    router = build_router()
    for method, segments, _handler, name in router._routes:  # pylint: disable=protected-access
        template = "/" + "/".join(segments)
        operation = sdk.get(_template_key(method, template))
        if operation is None:
            continue
        parameters = [{"name": "api-version", "in": "query", "required": True,
                       "schema": {"type": "string", "enum": [API_VERSION]}}]
        parameters += [{"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
                       for part in segments if part.startswith("{")]
        parameters += [{"name": query, "in": "query", "required": False, "schema": schema}
                       for query, schema in operation.query.items()]
        parameters += [{"name": header, "in": "header", "required": False, "schema": schema}
                       for header, schema in operation.headers.items()]
        error = {"description": "a Batch error", "content": {"application/json": {"schema": BATCH_ERROR}}}
        responses: dict[str, dict] = {"4XX": error, "501": error}
        if method in ("GET", "HEAD") and {"If-None-Match", "If-Modified-Since"} & set(operation.headers):
            # A conditional read that matches answers 304 (azure-core maps it to ResourceNotModifiedError).
            responses["304"] = {"description": "not modified"}
        for status in operation.statuses:
            responses[str(status)] = {"description": "success"}
            if operation.streams and not operation.response_model and method == "GET":
                responses[str(status)]["content"] = {"*/*": {"schema": {}}}   # a file, of its own type
            elif operation.response_model and method != "HEAD":
                item = schemas.reference(getattr(_models, operation.response_model), for_request=False)
                body = ({"type": "object", "required": ["value"],
                         "properties": {"value": {"type": "array", "items": item},
                                        "odata.nextLink": {"type": "string"}}}
                        if operation.response_is_list else item)
                responses[str(status)]["content"] = {"application/json": {"schema": body}}
        entry: dict[str, Any] = {"operationId": name, "parameters": parameters, "responses": responses}
        if operation.has_body and operation.body_model:
            entry["requestBody"] = {"required": operation.body_required, "content": {"application/json; odata=minimalmetadata": {
                "schema": schemas.reference(getattr(_models, operation.body_model), for_request=True)}}}
        paths.setdefault(template, {})[method.lower()] = entry
    return {"openapi": "3.0.3",
            "info": {"title": "localbatch (from azure-batch's models)", "version": API_VERSION},
            "paths": paths, "components": {"schemas": schemas.components}}


def uncovered_routes() -> list[str]:
    """localbatch routes the description leaves out (the SDK has no operation for them)."""
    sdk = {_template_key(operation.method, operation.url) for operation in read_sdk_operations()}
    return [f"{method} /{'/'.join(segments)}" for method, segments, _handler, _name in build_router()._routes  # pylint: disable=protected-access
            if _template_key(method, "/".join(segments)) not in sdk]
