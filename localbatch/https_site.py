"""Serving https on a port that answers a plain-http request with a clear 400, not a dropped connection.

aiohttp's own TCPSite with an SSL context hangs up on a client that speaks plain http to it,
which the client reports as a "connection aborted". This site accepts each connection itself,
looks at its first byte without consuming it (a TLS connection starts with a handshake record,
0x16), then hands a TLS connection to aiohttp's server with the SSL context, and answers
anything else with ``400`` and a one-line text saying to use https.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Optional

from aiohttp import web

logger = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
FIRST_BYTE_TIMEOUT_SECONDS = 30.0   # a connection that sends nothing is closed after this
DRAIN_TIMEOUT_SECONDS = 1.0         # what a refused plain-http client still sends is read, then dropped
BACKLOG = 128


class HttpsSite:
    """Listens on ``host``:``port`` (0: a free one) for ``runner``, with ``ssl_context``.

    Once a connection is handed to aiohttp's server it is that server's (and its connection limits');
    until then this site holds it, at most ``FIRST_BYTE_TIMEOUT_SECONDS``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, ssl_context: ssl.SSLContext,
                 max_waiting: int = 512):
        """``max_waiting``: connections that have not said yet whether they speak TLS; one more is closed."""
        self._runner = runner
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._max_waiting = max_waiting
        self._listener: Optional[socket.socket] = None
        self._accepting: Optional[asyncio.Task] = None
        self._waiting: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.getsockname()[1]

    async def start(self) -> None:
        family, kind, protocol, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, protocol)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        for task in list(self._waiting):
            task.cancel()
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                connection, _ = await loop.sock_accept(self._listener)
            except OSError as error:  # e.g. too many open files: keep listening
                logger.warning("accepting a connection failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            if len(self._waiting) >= self._max_waiting:
                connection.close()
                continue
            task = loop.create_task(self._route(connection))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)

    async def _route(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handed_over = False
        try:
            first = await asyncio.wait_for(_peek_first_byte(connection), FIRST_BYTE_TIMEOUT_SECONDS)
            if first is None:
                return
            if first == TLS_HANDSHAKE_RECORD:
                await loop.connect_accepted_socket(self._runner.server, connection, ssl=self._ssl_context)
                handed_over = True
                return
            await _refuse_plain_http(connection, self.port)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as error:
            logger.debug("connection dropped before it was served: %s", error)
        finally:
            if not handed_over:
                connection.close()


async def _peek_first_byte(connection: socket.socket) -> Optional[int]:
    """The first byte the client sent, left in the socket for whoever reads it next (None: it hung up)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = connection.recv(1, socket.MSG_PEEK)
            return data[0] if data else None
        except (BlockingIOError, InterruptedError):
            readable = loop.create_future()
            loop.add_reader(connection.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(connection.fileno())


async def _refuse_plain_http(connection: socket.socket, port: int) -> None:
    loop = asyncio.get_running_loop()
    message = (f"This localbatch serves https on port {port}: use https://, not http:// "
               f"(and trust the local stack's development CA).\n").encode("ascii")
    head = ("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(message)}\r\nConnection: close\r\n\r\n").encode("ascii")
    await loop.sock_sendall(connection, head + message)
    connection.shutdown(socket.SHUT_WR)
    # Read what the client still sends (its headers, a body) so closing does not reset the
    # connection before it has read the answer.
    async def drain() -> None:
        while await loop.sock_recv(connection, 65536):
            pass

    with contextlib.suppress(asyncio.TimeoutError, OSError):
        await asyncio.wait_for(drain(), DRAIN_TIMEOUT_SECONDS)
