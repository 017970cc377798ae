"""The OData subset Batch list operations take: `$filter` expressions and `$select`."""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from .errors import BatchServiceError

Predicate = Callable[[dict], bool]

_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<paren>[(),])|(?P<number>-?\d+(?:\.\d+)?)\b"
                    r"|(?P<word>[A-Za-z_][\w/.]*))")
_COMPARISONS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b, "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b, "le": lambda a, b: a is not None and a <= b,
}


def _bad_filter(text: str, reason: str) -> BatchServiceError:
    return BatchServiceError("InvalidQueryParameterValue", values={
        "QueryParameterName": "$filter", "QueryParameterValue": text, "Reason": reason})


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            raise _bad_filter(text, f"Unexpected text at position {position}.")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _lookup(entity: dict, path: str) -> Any:
    value: Any = entity
    for part in path.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _normalize(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.position = 0

    def peek(self) -> Optional[tuple[str, str]]:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: Optional[str] = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (expected is not None and token[1].lower() != expected):
            raise _bad_filter(self.text, f"Expected {expected or 'more text'}.")
        self.position += 1
        return token

    def parse(self) -> Predicate:
        predicate = self.or_expression()
        if self.peek() is not None:
            raise _bad_filter(self.text, f"Unexpected '{self.peek()[1]}'.")
        return predicate

    def or_expression(self) -> Predicate:
        parts = [self.and_expression()]
        while self.peek() and self.peek()[1].lower() == "or":
            self.take()
            parts.append(self.and_expression())
        return parts[0] if len(parts) == 1 else (lambda e: any(p(e) for p in parts))

    def and_expression(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() and self.peek()[1].lower() == "and":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda e: all(p(e) for p in parts))

    def unary(self) -> Predicate:
        token = self.peek()
        if token is None:
            raise _bad_filter(self.text, "The expression ends too early.")
        if token[1].lower() == "not":
            self.take()
            inner = self.unary()
            return lambda e: not inner(e)
        if token[1] == "(":
            self.take()
            inner = self.or_expression()
            self.take(")")
            return inner
        if token[1].lower() == "startswith":
            self.take()
            self.take("(")
            path = self.take()[1]
            self.take(",")
            prefix = self.literal()
            self.take(")")
            return lambda e: isinstance(_lookup(e, path), str) and _lookup(e, path).casefold().startswith(prefix)
        if token[0] != "word":
            raise _bad_filter(self.text, f"Expected a property name, found '{token[1]}'.")
        path = self.take()[1]
        operator = self.take()[1].lower()
        if operator not in _COMPARISONS:
            raise _bad_filter(self.text, f"Unknown operator '{operator}'.")
        compare, value = _COMPARISONS[operator], self.literal()

        def predicate(entity: dict) -> bool:
            try:
                return compare(_normalize(_lookup(entity, path)), value)
            except TypeError:
                return False
        return predicate

    def literal(self) -> Any:
        kind, text = self.take()
        if kind == "string":
            return text[1:-1].replace("''", "'").casefold()
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "word" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind == "word" and text.lower() == "null":
            return None
        raise _bad_filter(self.text, f"Expected a value, found '{text}'.")


def parse_filter(text: Optional[str]) -> Optional[Predicate]:
    """A predicate over wire-form entities, or None when there is no filter."""
    if not text or not text.strip():
        return None
    try:
        predicate = _Parser(text).parse()
    except RecursionError:
        raise _bad_filter(text, "The filter is nested too deeply.") from None

    def checked(entity: dict) -> bool:
        try:
            return predicate(entity)
        except RecursionError:
            raise _bad_filter(text, "The filter is nested too deeply.") from None
    return checked


def select(entity: dict, fields: Optional[list[str]]) -> dict:
    """Apply `$select`: only the named top-level properties, in the order given."""
    if not fields:
        return entity
    return {name: entity[name] for name in fields if name in entity}


def parse_select(text: Optional[str]) -> Optional[list[str]]:
    if not text:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]
