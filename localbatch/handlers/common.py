"""What every handler shares: body validation, entity replies, paging, `$filter` and `$select`."""
from __future__ import annotations

import datetime as dt
import email.utils
from typing import Any, Callable, Iterable, Optional
from urllib.parse import quote

from .. import odata, schema, wire
from ..errors import BatchServiceError
from ..http import Call, Reply

DEFAULT_PAGE_SIZE = 1000


def check_conditions(call: Call, data: dict) -> None:
    """Honour If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since against an entity.

    The SDK sends them for `etag=`/`match_condition=` and `if_(un)modified_since=`. A failed
    condition is 412 ConditionNotMet, except that a GET or HEAD answers 304 when the entity is
    unchanged (If-None-Match / If-Modified-Since).
    """
    etag = data.get("eTag", "")
    reading = call.method in ("GET", "HEAD")
    if_match = call.headers.get("If-Match")
    if if_match and if_match.strip() != "*" and etag not in _etags(if_match):
        raise BatchServiceError("ConditionNotMet")
    if_none_match = call.headers.get("If-None-Match")
    if if_none_match and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
        raise BatchServiceError("NotModified" if reading else "ConditionNotMet")
    modified = wire.parse_iso(data["lastModified"]).replace(microsecond=0) if data.get("lastModified") else None
    unmodified_since = _http_date(call, "If-Unmodified-Since")
    if modified and unmodified_since and modified > unmodified_since:
        raise BatchServiceError("ConditionNotMet")
    modified_since = _http_date(call, "If-Modified-Since")
    if modified and modified_since and modified <= modified_since:
        raise BatchServiceError("NotModified" if reading else "ConditionNotMet")


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/").strip('"') for part in header.split(",")}


def _http_date(call: Call, name: str):
    text = call.headers.get(name)
    if not text:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise BatchServiceError("InvalidHeaderValue", values={"HeaderName": name, "HeaderValue": text}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def body_of(call: Call, model_cls: type) -> dict:
    return schema.validate(model_cls, call.json())


def entity_reply(call: Call, view: dict, fragment: str) -> Reply:
    """A GET of one entity, with `$select` applied and its ETag/Last-Modified headers."""
    body = {"odata.metadata": call.metadata(fragment), **odata.select(view, odata.parse_select(call.query.get("$select")))}
    return Reply.entity(200, body, view.get("eTag"),
                        view.get("lastModified") or view.get("stateTransitionTime") or wire.now_iso())


def created(call: Call, location: str, data: dict) -> Reply:
    reply = Reply.entity(201, None, data["eTag"], data["lastModified"], data_service_id=location)
    reply.headers["Location"] = location
    return reply


def accepted(call: Call, location: str, status: int = 202) -> Reply:
    return Reply(status, None, {"DataServiceId": location})


def updated(call: Call, location: str, data: dict, status: int = 200) -> Reply:
    return Reply.entity(status, None, data["eTag"], data["lastModified"], data_service_id=location)


def page_size(call: Call) -> int:
    text = call.query.get("maxresults")
    if text is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= DEFAULT_PAGE_SIZE:
        raise BatchServiceError("InvalidQueryParameterValue", values={
            "QueryParameterName": "maxresults", "QueryParameterValue": text,
            "Reason": f"maxresults must be between 1 and {DEFAULT_PAGE_SIZE}."})
    return size


def list_reply(call: Call, items: Iterable[Any], fragment: str, key: Callable[[Any], str] = lambda v: v["id"],
               filterable: bool = True, fields_of: Callable[[Any], dict] = lambda item: item,
               view: Callable[[Any], dict] = lambda item: item) -> Reply:
    """A list operation: filter, sort by key, page with an absolute nextLink, then `$select`.

    `$filter` is tested against `fields_of(item)` and only the items of the page are turned into
    their wire `view`, so a poll of a long list costs little more than the filter itself.
    """
    predicate = odata.parse_filter(call.query.get("$filter")) if filterable else None
    fields = odata.parse_select(call.query.get("$select"))
    size = page_size(call)
    after = call.query.get("$skiptoken")
    matching = (item for item in items if predicate is None or predicate(fields_of(item)))
    if after:
        matching = (item for item in matching if key(item) > after)
    ordered = sorted(matching, key=key)
    page, rest = ordered[:size], ordered[size:]
    body: dict[str, Any] = {"odata.metadata": call.metadata(fragment),
                            "value": [odata.select(view(item), fields) for item in page]}
    if rest:
        body["odata.nextLink"] = _next_link(call, key(page[-1]), size)
    return Reply(200, body)


def entity_list_reply(call: Call, entities: Iterable[Any], view: Callable[[Call, Any], dict], fragment: str) -> Reply:
    """A list of pools, nodes, jobs or tasks, filtered on their stored wire form (everything but URLs)."""
    return list_reply(call, entities, fragment, key=lambda entity: entity.id,
                      fields_of=lambda entity: entity.data, view=lambda entity: view(call, entity))


def _next_link(call: Call, last_key: str, size: int) -> str:
    query = {"api-version": call.query["api-version"], "maxresults": str(size), "$skiptoken": last_key}
    for carried in ("$filter", "$select", "$expand", "recursive"):
        if call.query.get(carried):
            query[carried] = call.query[carried]
    encoded = "&".join(f"{name}={quote(value, safe='')}" for name, value in query.items())
    return f"{call.base_url}{call.path}?{encoded}"


def bool_query(call: Call, name: str) -> Optional[bool]:
    text = call.query.get(name)
    if text is None:
        return None
    if text.lower() not in ("true", "false"):
        raise BatchServiceError("InvalidQueryParameterValue", values={
            "QueryParameterName": name, "QueryParameterValue": text, "Reason": "Expected true or false."})
    return text.lower() == "true"


def optional_body(call: Call, model_cls: type) -> dict:
    return body_of(call, model_cls) if call.raw_body else {}
