"""Request-body validation against the SDK's own models (azure.batch.models).

The property names, which ones are required and the enum values all come from the
generated models, so the emulator accepts exactly what the SDK can send and rejects
what the real service would reject as unknown or malformed.
"""
from __future__ import annotations

import datetime as dt
import enum
import functools
import typing
from typing import Any

import azure.batch.models as _sdk_package
import azure.batch.models._models as _sdk_models

from .errors import BatchServiceError, invalid_property, missing_property

_HINT_NAMESPACE = dict(vars(_sdk_models), _models=_sdk_package)


class _Field(typing.NamedTuple):
    hint: Any
    required: bool


@functools.lru_cache(maxsize=None)
def _fields(model_cls: type) -> dict[str, _Field]:
    model_cls()  # the SDK computes _attr_to_rest_field on first construction
    hints = typing.get_type_hints(model_cls, globalns=_HINT_NAMESPACE)
    fields = {}
    for attr, rest_field in model_cls._attr_to_rest_field.items():
        hint = hints.get(attr, Any)
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        # Read-only properties (the service's output, e.g. BatchJob.id in a replace) are never
        # sent by the SDK, so they cannot be required in a request body.
        read_only = getattr(rest_field, "_visibility", None) == ["read"]
        fields[rest_field._rest_name] = _Field(hint, not optional and not read_only)
    return fields


def validate(model_cls: type, body: Any, path: str = "") -> dict:
    """Check `body` against `model_cls`; raise a Batch 400 error naming the first problem."""
    if not isinstance(body, dict):
        raise BatchServiceError("InvalidRequestBody", values={
            "Reason": f"{path or 'The request body'} must be a JSON object."})
    fields = _fields(model_cls)
    for name, value in body.items():
        field = fields.get(name)
        if field is None:
            raise BatchServiceError("InvalidRequestBody", values={
                "Reason": f"The property '{_join(path, name)}' does not exist on type '{model_cls.__name__}'."})
        if value is not None:
            _check(field.hint, value, _join(path, name))
    for name, field in fields.items():
        if field.required and body.get(name) is None:
            raise missing_property(_join(path, name))
    return body


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check(hint: Any, value: Any, path: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        members = [a for a in args if a is not type(None)]
        enums = [a for a in members if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:
            allowed = {str(m.value).lower(): m.value for e in enums for m in e}
            if not isinstance(value, str) or value.lower() not in allowed:
                raise invalid_property(path, value, "Allowed values: " + ", ".join(sorted(allowed.values())))
            return
        if len(members) == 1:
            return _check(members[0], value, path)
        return  # a union the service documents loosely: accept as sent
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise invalid_property(path, value, "Expected a JSON array.")
        for index, item in enumerate(value):
            if item is not None:
                _check(args[0] if args else Any, item, f"{path}[{index}]")
        return
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise invalid_property(path, value, "Expected a JSON object.")
        return
    if hint is Any:
        return
    if isinstance(hint, type) and hasattr(hint, "_attr_to_rest_field") or _is_model(hint):
        validate(hint, value, path)
        return
    if hint is bool and not isinstance(value, bool):
        raise invalid_property(path, value, "Expected true or false.")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise invalid_property(path, value, "Expected an integer.")
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise invalid_property(path, value, "Expected a number.")
    if hint in (str, dt.datetime, dt.timedelta) and not isinstance(value, str):
        raise invalid_property(path, value, "Expected a string.")


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and getattr(hint, "_is_model", False)
