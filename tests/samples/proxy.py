"""A real TCP proxy in front of localbatch or Azurite that injects network faults into chosen requests.

A sample run as a subprocess is pointed at the proxy instead of the service; the proxy forwards
each request on a fresh upstream connection and, for a request matching a ``Rule``, does what the
rule says: reset the connection after the service has done the work (the answer is lost), hold
the answer (a stalled service), or, with ``forward=False``, never let the request through. A rule
can also call back when it matches (to send the sample a Ctrl-C at that exact step), and
``go_down()`` makes the whole service unreachable (connections refused), as a killed service is.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit

RESET = "reset"
STALL = "stall"
_HEAD_LIMIT = 1 << 20


@dataclass
class Rule:
    """What to do with the requests whose method and path match (the first ``times`` of them)."""

    method: str
    path_pattern: str
    action: Optional[str] = None
    """``RESET``, ``STALL`` or None (forward normally; only ``on_match`` happens)."""
    times: int = 1
    forward: bool = True
    """Whether the service sees the request at all (False: the request is lost on the way)."""
    on_match: Optional[Callable[[], None]] = None
    matched: int = field(default=0)

    def matches(self, method: str, path: str) -> bool:
        return self.matched < self.times and method == self.method and re.search(self.path_pattern, path) is not None


class FaultyProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``upstream_url``'s host and port."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._path = parts.path.rstrip("/")
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._clients: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="faulty-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        """The proxy's URL, with the upstream URL's path (e.g. ``/devstoreaccount1``)."""
        return f"http://127.0.0.1:{self.port}{self._path}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def go_down(self) -> None:
        """Stop answering: refuse new connections and drop the open ones, as a killed service does."""
        self.close()

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for client in clients:
            _reset(client)

    def __enter__(self) -> "FaultyProxy":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _rule_for(self, method: str, path: str) -> Optional[Rule]:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.matched += 1
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        try:
            request = _read_request(client)
            if request is None or self._closed.is_set():
                _reset(client)
                return
            method, path, raw = request
            rule = self._rule_for(method, path)
            if rule is not None and rule.on_match is not None:
                rule.on_match()
            if rule is not None and not rule.forward:
                answer = b""
            else:
                answer = self._forward(raw)
            if rule is not None and rule.action == STALL:
                self._closed.wait()
                _reset(client)
            elif rule is not None and rule.action == RESET:
                _reset(client)
            else:
                client.sendall(answer)
                client.close()
        except OSError:
            _reset(client)
        finally:
            with self._lock:
                self._clients.discard(client)

    def _forward(self, raw: bytes) -> bytes:
        with socket.create_connection(self._upstream) as upstream:
            upstream.sendall(raw)
            chunks = []
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return _with_connection_close(b"".join(chunks))


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset (RST), not an orderly FIN."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        connection.close()
    except OSError:
        pass


def _read_request(client: socket.socket) -> Optional[tuple[str, str, bytes]]:
    """Read one request; return (method, path, bytes to send upstream with ``Connection: close``)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > _HEAD_LIMIT:
            return None
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = [line for line in lines[1:] if not line.lower().startswith("connection:")]
    length = next((int(line.split(":", 1)[1]) for line in headers if line.lower().startswith("content-length:")), 0)
    while len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            return None
        body += chunk
    raw = "\r\n".join([lines[0], *headers, "Connection: close"]).encode("latin-1") + b"\r\n\r\n" + body
    return method, urlsplit(target).path, raw


def _with_connection_close(response: bytes) -> bytes:
    """The upstream answer, telling the client not to reuse the connection (the proxy closes it)."""
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        return response
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body
