"""The request pipeline, in one place and one order:

request id -> diagnostics -> api-version -> authentication (which picks the account's world)
-> route -> durable store? -> body -> handler -> durable store -> headers.
Handlers raise BatchServiceError; only `_error_reply` turns errors into responses. No answer
leaves before the changes it reveals are committed (see store.py). Each account is its own
world (its own BatchService: store, entities, nodes); nothing of one is reachable from another.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional
from urllib.parse import parse_qs, unquote

from aiohttp import web

from . import auth, wire
from .connections import reset_connection
from .errors import BatchServiceError
from .store import StoreUnavailable

if TYPE_CHECKING:
    from .domain.service import BatchService

logger = logging.getLogger("localbatch.requests")

SUPPORTED_API_VERSIONS = ("2025-06-01", "2024-07-01.20.0")
MAX_BODY_BYTES = 1024 * 1024
DIAGNOSTIC_PREFIX = "/localbatch/"
LATENCY_WINDOW = 20_000


@dataclass
class FileRange:
    """`length` bytes of an open regular file from offset `start`, for `_send` to stream.

    The handler opens the file (off the event loop) so that a missing or unreadable file is still
    an ordinary error reply; from then on `_send` owns the file: it reads one chunk at a time in the
    default executor, never holding more than a chunk in memory, and closes the file when done.
    """
    file: BinaryIO                  # opened for reading, unbuffered (os.pread on its descriptor)
    start: int
    length: int
    path: str = ""                  # for the log only
    chunk_size: int = 256 * 1024

    def close(self) -> None:
        self.file.close()

    async def send(self, request: web.BaseRequest, status: int, headers: dict[str, str],
                   stall_seconds: float) -> web.StreamResponse:
        """Stream the range with Content-Length announced up front.

        A file that shrank under the stream cannot deliver the announced length: the response
        ends with what there was and the connection is closed, so the client sees a short body
        at once instead of waiting (no 500 after the headers, no hang). A client that goes away,
        or takes nothing for `stall_seconds`, just ends the stream.
        """
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = self.length
        reading: Optional[asyncio.Future] = None
        try:
            await response.prepare(request)
            offset, remaining = self.start, self.length
            while remaining > 0:
                reading = loop.run_in_executor(None, os.pread, self.file.fileno(),
                                               min(self.chunk_size, remaining), offset)
                # Shielded: if the request is cancelled, the read still finishes before the close.
                chunk = await asyncio.shield(reading)
                reading = None
                if not chunk:
                    break
                offset += len(chunk)
                remaining -= len(chunk)
                # Waits for the client to take it (flow control), but not for ever.
                await asyncio.wait_for(response.write(chunk), stall_seconds)
            if remaining > 0:
                logger.warning("%s shrank while being sent: %d of %d bytes were not there", self.path,
                               remaining, self.length)
                response.force_close()
        except ConnectionError:  # the client went away (reset, broken pipe, connection lost)
            response.force_close()
        except asyncio.TimeoutError:
            logger.info("dropping the download of %s: its client took nothing for %g s", self.path, stall_seconds)
            response.force_close()
            reset_connection(request.transport)
        except OSError:  # a read failed after the headers went out: all that can be done is to stop
            logger.exception("streaming %s failed", self.path)
            response.force_close()
        finally:
            if reading is not None and not reading.done():
                reading.add_done_callback(lambda _: self.close())
            else:
                self.close()
        return response


class ClientGone(Exception):
    """The client closed its connection before its request had arrived: there is no one to answer."""


@dataclass
class Reply:
    status: int = 200
    body: Any = None                # dict -> JSON; bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: Optional[str] = None
    stream: Optional[FileRange] = None  # a file range to stream as the body (GET of a file)
    close: bool = False                 # close the connection after this answer

    @classmethod
    def entity(cls, status: int, body: Optional[dict], etag: Optional[str], last_modified: str,
               data_service_id: Optional[str] = None) -> "Reply":
        headers = {"Last-Modified": wire.rfc1123(last_modified)}
        if etag:  # nodes, for one, have none
            headers["ETag"] = etag
        if data_service_id:
            headers["DataServiceId"] = data_service_id
        return cls(status, body, headers)


@dataclass
class Call:
    """What a handler needs to know about one request."""
    service: "BatchService"
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: Any
    raw_body: bytes
    base_url: str
    _json: Any = None

    def json(self) -> Any:
        if self._json is None:
            if not self.raw_body:
                raise BatchServiceError("InvalidRequestBody", values={"Reason": "The request body is empty."})
            try:
                self._json = json.loads(self.raw_body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BatchServiceError("InvalidRequestBody", values={"Reason": f"The body is not valid JSON: {exc}"}) from None
            except RecursionError:
                raise BatchServiceError("InvalidRequestBody", values={"Reason": "The body is nested too deeply."}) from None
        return self._json

    def metadata(self, fragment: str) -> str:
        return f"{self.base_url}/$metadata#{fragment}"


Handler = Callable[[Call], Reply]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, list[str], Handler, str]] = []

    def add(self, method: str, template: str, handler: Handler, operation: Optional[str] = None) -> None:
        """Serve `method template` with `handler`; the operation is named as the handler is, unless told."""
        self._routes.append((method, template.strip("/").split("/"), handler, operation or handler.__name__))

    def match(self, method: str, raw_path: str) -> tuple[Handler, dict[str, str], str]:
        segments = raw_path.strip("/").split("/") if raw_path.strip("/") else []
        path_known = False
        for route_method, template, handler, operation in self._routes:
            if len(template) != len(segments):
                continue
            params = {}
            for expected, actual in zip(template, segments):
                if expected.startswith("{"):
                    value = unquote(actual)
                    if not value:
                        break
                    params[expected[1:-1]] = value
                elif expected != actual.lower():
                    break
            else:
                path_known = True
                if route_method == method:
                    return handler, params, operation
        if path_known:
            raise BatchServiceError("InvalidUri", f"The HTTP verb {method} is not supported on this resource.",
                                    status=405)
        raise BatchServiceError("InvalidUri")


@dataclass
class RequestStatistics:
    """Requests served and their recent service times, per operation (for the status endpoint)."""
    counts: Counter = field(default_factory=Counter)
    times: dict[str, deque] = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=LATENCY_WINDOW)))

    def record(self, operation: str, seconds: float) -> None:
        self.counts[operation] += 1
        self.times[operation].append(seconds)

    def report(self) -> dict:
        return {"requests": dict(sorted(self.counts.items())),
                "serviceTimeMs": {operation: _percentiles(times) for operation, times in sorted(self.times.items())}}


class Pipeline:
    def __init__(self, services: dict[str, "BatchService"], router: Router, authenticator: auth.Authenticator,
                 debug: bool = False, body_seconds: float = 30.0, send_stall_seconds: float = 60.0,
                 public_url: Optional[str] = None):
        self.services = services          # account name -> its world
        self.router = router
        self.authenticator = authenticator
        self.debug = debug
        self.body_seconds = body_seconds
        self.send_stall_seconds = send_stall_seconds
        self.public_url = public_url.rstrip("/") if public_url else None  # else the scheme and host the client used
        # Per account; requests that were not authenticated are counted under None and shown nowhere.
        self.statistics: dict[Optional[str], RequestStatistics] = defaultdict(RequestStatistics)
        self.started = time.time()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        began = time.perf_counter()
        request_id = str(uuid.uuid4())
        raw_target = request.raw_path  # as sent: still percent-encoded, never normalised
        raw_path, _, raw_query = raw_target.partition("?")
        base_url = self.public_url or f"{request.scheme}://{request.host}"
        operation = "unknown"
        account: Optional[str] = None
        service: Optional["BatchService"] = None
        try:
            if raw_path.startswith(DIAGNOSTIC_PREFIX):
                operation = "diagnostics"
                _check_header_text(request.headers)
                if request.headers.get("Authorization"):
                    account = self.authenticator.authenticate(request.method, raw_path, raw_query, request.headers)
                reply = self._diagnostics(raw_path, account)
            else:
                query = {name: values[0] for name, values in parse_qs(raw_query, keep_blank_values=True).items()}
                _check_api_version(query)
                _check_timeout(query)
                _check_header_text(request.headers)
                account = self.authenticator.authenticate(request.method, raw_path, raw_query, request.headers)
                service = self._world_of(account)
                handler, params, operation = self.router.match(request.method, raw_path)
                if request.method not in ("GET", "HEAD"):
                    # A store that cannot commit takes no new change (it could not be acknowledged).
                    await service.store.settled()
                raw_body = await _read_body(request, self.body_seconds)
                call = Call(service, request.method, raw_path, params, query, request.headers, raw_body, base_url)
                reply = handler(call)
                if hasattr(reply, "__await__"):
                    reply = await reply
                # Whatever this answer reveals (a change it acknowledges, a state it reads) is durable first.
                await service.store.settled()
        except ClientGone:
            logger.debug("%s %s: the client left before its body had arrived", request.method, raw_path)
            reply = Reply(400, close=True)  # cannot be delivered; aiohttp drops it quietly
        except StoreUnavailable as unavailable:
            logger.error("answering %s %s with ServerBusy: %s", request.method, raw_path, unavailable)
            reply = _error_reply(BatchServiceError("ServerBusy"), request_id, base_url)
        except BatchServiceError as error:
            reply = await self._settled_error_reply(error, service, request_id, base_url)
        except Exception:  # an emulator bug: answer like the service would, keep the details in the log
            logger.exception("internal error while serving %s %s", request.method, raw_path)
            reply = _error_reply(BatchServiceError("InternalError"), request_id, base_url)
        response = await self._send(request, reply, request_id)
        elapsed = time.perf_counter() - began
        self.statistics[account].record(operation, elapsed)
        if self.debug:
            logger.debug("%s %s -> %d (%s, %.1f ms)", request.method, raw_path, reply.status, operation,
                         elapsed * 1000)
        return response

    def _world_of(self, account: str) -> "BatchService":
        """The account's own service: nothing of another account is reachable from it."""
        service = self.services.get(account)
        if service is None:
            raise BatchServiceError("AuthenticationFailed", values={
                "AuthenticationErrorDetail": f"The account '{account}' is not known to this emulator."})
        return service

    @staticmethod
    async def _settled_error_reply(error: BatchServiceError, service: Optional["BatchService"], request_id: str,
                                   base_url: str) -> Reply:
        """An error answer reveals state too (a 409 names what exists): it waits for the store as well."""
        if service is not None:
            try:
                await service.store.settled()
            except StoreUnavailable:
                error = BatchServiceError("ServerBusy")
        return _error_reply(error, request_id, base_url)

    def _diagnostics(self, raw_path: str, account: Optional[str]) -> Reply:
        """The health check. Without authentication it says only that localbatch runs and whether its
        state can be saved; signed with an account's key it also describes that account's world."""
        if raw_path.rstrip("/") != "/localbatch/status":
            raise BatchServiceError("InvalidUri")
        if account is None:
            healthy = all(service.store.failure is None for service in self.services.values())
            return Reply(200, {"status": "ok", "store": "ok" if healthy else "unavailable"})
        service = self._world_of(account)
        return Reply(200, {
            "status": "ok", "store": "ok" if service.store.failure is None else "unavailable",
            "account": account, "location": service.location,
            "uptimeSeconds": round(time.time() - self.started, 3),
            **self.statistics[account].report(),
            "pools": len(service.repo.pools), "jobs": len(service.repo.jobs),
            "tasks": sum(len(job.tasks) for job in service.repo.jobs.values()),
        })

    async def _send(self, request: web.BaseRequest, reply: Reply, request_id: str) -> web.StreamResponse:
        headers = {"request-id": request_id, "DataServiceVersion": "3.0", **reply.headers}
        client_request_id = request.headers.get("client-request-id")
        if client_request_id and _is_text(client_request_id):
            headers["client-request-id"] = client_request_id
        if isinstance(reply.body, dict):
            body = json.dumps(reply.body, separators=(",", ":")).encode("utf-8")
            content_type = reply.content_type or "application/json;odata=minimalmetadata"
        else:
            body = reply.body or b""
            content_type = reply.content_type
        if content_type:
            headers["Content-Type"] = content_type
        if reply.stream is not None:
            if request.method != "HEAD":
                return await reply.stream.send(request, reply.status, headers, self.send_stall_seconds)
            reply.stream.close()
            headers.setdefault("Content-Length", str(reply.stream.length))
            response = web.Response(status=reply.status, headers=headers)
        elif request.method == "HEAD":
            headers.setdefault("Content-Length", str(len(body)))
            response = web.Response(status=reply.status, headers=headers)
        else:
            response = web.Response(status=reply.status, body=body, headers=headers)
        if reply.close:
            response.force_close()
        return response


def _percentiles(times: deque) -> dict[str, float]:
    ordered = sorted(times)
    return {"count": len(ordered), "p50": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)}


def _is_text(value: str) -> bool:
    """False for a header value with bytes that are not UTF-8 (kept by aiohttp as surrogates)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_header_text(headers: Any) -> None:
    for name, value in headers.items():
        if not _is_text(value):
            raise BatchServiceError("InvalidHeaderValue", values={
                "HeaderName": name if _is_text(name) else "?", "Reason": "The value is not valid UTF-8."})


def _check_timeout(query: dict[str, str]) -> None:
    """`timeOut`, the seconds the server may spend on the request, is a positive whole number."""
    text = query.get("timeOut")
    if text is not None and not (text.isascii() and text.isdigit() and int(text) > 0):
        raise BatchServiceError("InvalidQueryParameterValue", values={
            "QueryParameterName": "timeOut", "QueryParameterValue": text,
            "Reason": "timeOut is a whole number of seconds, at least 1."})


def _check_api_version(query: dict[str, str]) -> None:
    version = query.get("api-version")
    if not version:
        raise BatchServiceError("MissingRequiredQueryParameter", values={"QueryParameterName": "api-version"})
    if version not in SUPPORTED_API_VERSIONS:
        raise BatchServiceError("InvalidQueryParameterValue", values={
            "QueryParameterName": "api-version", "QueryParameterValue": version,
            "Reason": "localbatch supports api-version " + " and ".join(SUPPORTED_API_VERSIONS) + "."})


async def _read_body(request: web.BaseRequest, timeout_seconds: float) -> bytes:
    """The whole body, which must arrive within `timeout_seconds` (else 408 RequestTimeout)."""
    if not request.can_read_body:
        return b""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise BatchServiceError("RequestBodyTooLarge", values={"MaxLimit": str(MAX_BODY_BYTES)})
    try:
        return await asyncio.wait_for(_read_to_the_end(request), timeout_seconds)
    except ConnectionError:
        raise ClientGone() from None
    except asyncio.TimeoutError:
        raise BatchServiceError("RequestTimeout", values={
            "Reason": f"The request body did not arrive within {timeout_seconds:g} seconds."}) from None


async def _read_to_the_end(request: web.BaseRequest) -> bytes:
    # StreamReader.read(n) returns what has arrived so far, not n bytes: read to the end.
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BatchServiceError("RequestBodyTooLarge", values={"MaxLimit": str(MAX_BODY_BYTES)})
        chunks.append(chunk)


def _error_reply(error: BatchServiceError, request_id: str, base_url: str) -> Reply:
    if error.status == 304:  # a 304 never has a body
        return Reply(304)
    # After a timed-out body the rest of the request is unknown: nothing more can be read from it.
    return Reply(error.status, error.body(request_id, wire.now_iso(), base_url), dict(error.headers),
                 close=error.status == 408)
