"""Connection hygiene: how many connections localbatch keeps, and how long it waits for each.

No client, careless or hostile, can hold the emulator's descriptors or its attention for ever:

- at most `max_connections` connections are open at once, and at most
  `max_connections_per_client` from one client address; one more is answered at once with
  `503 ServerBusy` (which the SDK retries) and closed, before anything is read from it;
- a connection must deliver a complete request header within `idle_seconds` of opening or of its
  previous answer, so an idle keep-alive connection and a slow-loris header end the same way:
  closed (aiohttp's keep-alive timer, which watches both);
- a request body must arrive whole within `body_seconds` of its header (`408 RequestTimeout`,
  and the connection is closed);
- a download whose client takes nothing for `send_stall_seconds` is dropped;
- on stop, requests in flight get `shutdown_seconds` to finish, and as long again to end once
  cancelled (aiohttp's two phases), instead of aiohttp's default of 60 s each.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 512
    max_connections_per_client: int = 256
    idle_seconds: float = 30.0
    body_seconds: float = 30.0
    send_stall_seconds: float = 60.0
    shutdown_seconds: float = 1.0
    # After an answer sent before the whole body was read (a 413, a 403), what is left of the body
    # is read and dropped for at most this long, so the client sees the answer rather than a reset.
    lingering_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_client < 1:
            raise ValueError("connection limits must be at least 1")


class ConnectionLimitedServer(web.Server):
    """aiohttp's low-level server, counting connections per client address and in total."""

    def __init__(self, handler: Any, limits: ConnectionLimits, **kwargs: Any):
        super().__init__(handler, keepalive_timeout=limits.idle_seconds, lingering_time=limits.lingering_seconds,
                         **kwargs)
        self.limits = limits
        self._admitted: dict[RequestHandler, str] = {}
        self._per_client: Counter[str] = Counter()
        self.refused = 0  # connections turned away since the start

    @property
    def open_connections(self) -> int:
        return len(self._admitted)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
        if len(self._admitted) >= self.limits.max_connections:
            self._refuse(handler, transport, f"localbatch has {len(self._admitted)} connections open, its limit.")
            return
        if self._per_client[client] >= self.limits.max_connections_per_client:
            self._refuse(handler, transport, f"This client address has {self._per_client[client]} connections "
                                             "open, the limit for one client.")
            return
        self._admitted[handler] = client
        self._per_client[client] += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: Optional[BaseException] = None) -> None:
        client = self._admitted.pop(handler, None)
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
        super().connection_lost(handler, exc)

    def _refuse(self, handler: RequestHandler, transport: asyncio.Transport, reason: str) -> None:
        """Answer 503 ServerBusy at once and close: a refused connection holds nothing, not even for
        the time it would take to read its request."""
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            logger.warning("refusing connections: %s (%d refused so far)", reason, self.refused)
        transport.write(_refusal(reason))
        handler.force_close()  # closes the transport once the answer is written; starts no request


def _refusal(reason: str) -> bytes:
    body = json.dumps({
        "code": "ServerBusy",
        "message": {"lang": "en-US", "value": "The server is currently unable to receive requests. "
                                              "Please retry your request.\n" + reason},
        "values": [{"key": "Reason", "value": reason}],
    }, separators=(",", ":")).encode("utf-8")
    head = ("HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json;odata=minimalmetadata\r\n"
            "DataServiceVersion: 3.0\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
    return head + body


def reset_connection(transport: Optional[asyncio.BaseTransport]) -> None:
    """Drop a connection now, with a reset rather than a close (SO_LINGER 0): the kernel neither keeps
    trickling what was left to send to a client that does not read, nor lets a refused client think
    it was served."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()
