"""A node's agent log: what localbatch's node agent did on that node, one line per event.

On a Linux Batch node the agent writes `/mnt/batch/sys/logs/agent-debug.log`, beside the node
root (`/mnt/batch/tasks`) and so outside what the node files API lists; upload_node_logs sends it
to support. Here each node has `agent-debug.log` at the same place relative to its root (see
layout.py), one line per event:

    2026-11-23T16:14:53.1234567Z INFO task job-1/t1 completed: result failure, exit code 3, ...

The file is bounded: once it would pass `max_bytes` it becomes `agent-debug.log.1` (the one
older generation kept) and a new file starts. Every line is scrubbed of what looks like a secret
(a SAS signature or any URL query, a bearer token, a base64 key) before it is written; the
events themselves are written so as never to quote one (no command lines, environments or URLs
with their queries).

What a program run does on the node (its resource file downloads) is noted through `note()`,
which writes to the log of the node whose program the current asyncio task runs (`bind()`).
"""
from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import re
from collections import OrderedDict
from typing import Iterator, Optional

from .. import wire

logger = logging.getLogger(__name__)

AGENT_LOG_NAME = "agent-debug.log"
MAX_BYTES = 1 << 20          # per generation; with the one older generation a node keeps at most 2 MiB
MAX_LINE_CHARACTERS = 4000   # a longer message (a huge failure text) is cut
OPEN_LOGS = 32               # node logs kept open at once (the least recently written are closed first)

_SECRETS = (
    (re.compile(r"(https?://[^\s?'\"]*)\?[^\s'\"]*"), r"\1?<query removed>"),   # SAS tokens ride in URL queries
    (re.compile(r"(?i)\bsig=[^&\s'\"]*"), "sig=<removed>"),
    (re.compile(r"(?i)\bbearer\s+[\w.~+/=-]+"), "Bearer <removed>"),
    (re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*"), "<token removed>"),           # a JWT
    (re.compile(r"[A-Za-z0-9+/]{40,}={1,2}"), "<key removed>"),                    # a base64 key (32 or 64 bytes)
)


def scrub(text: str) -> str:
    """`text` without anything that looks like a SAS, a token or a key, on one line."""
    text = " ".join(text.split())
    if _may_hold_a_secret(text):
        for pattern, replacement in _SECRETS:
            text = pattern.sub(replacement, text)
    return text[:MAX_LINE_CHARACTERS]


def _may_hold_a_secret(text: str) -> bool:
    """False only for text none of _SECRETS can match: each needs a '?' or a '=', a JWT's 'eyJ'
    or the word bearer. Most lines have none, and skip the five patterns."""
    return "?" in text or "=" in text or "eyJ" in text or "earer" in text.lower()


class AgentLog:
    """The agent logs of every node under one node layout (one per account).

    The logs written last stay open (at most OPEN_LOGS, unbuffered: a line is in the file once
    written), so a busy node costs one write per line rather than an open, a stat and a close.
    """

    def __init__(self, path_of, max_bytes: int = MAX_BYTES):
        """`path_of(pool_id, node_id)` is where the node's log lives (layout.agent_log)."""
        self._path_of = path_of
        self.max_bytes = max_bytes
        self._open: "OrderedDict[str, list[int]]" = OrderedDict()  # path -> [descriptor, size]
        self._closed = False

    def write(self, pool_id: str, node_id: str, message: str, level: str = "INFO", create: bool = False) -> None:
        """Append one event to the node's log. Only the node's own state changes (`create`) start
        a log; anything else about a node whose log directory is gone (a node removed meanwhile) is dropped.
        Never raises: a log that cannot be written is the emulator's own warning, not a failure
        of what it describes."""
        line = f"{wire.now_iso()} {level} {scrub(message)}\n".encode("utf-8", "replace")
        path = self._path_of(pool_id, node_id)
        try:
            entry = self._entry(path, create)
            if entry is None:
                return
            if entry[1] and entry[1] + len(line) > self.max_bytes:
                self._forget(path)
                os.replace(path, path + ".1")
                entry = self._entry(path, True)
            os.write(entry[0], line)
            entry[1] += len(line)
            if self._closed:
                self._forget(path)
        except OSError as exc:
            self._forget(path)
            logger.warning("could not write the agent log of node %s: %s", node_id, exc.strerror or exc)

    def close(self) -> None:
        """Close the open logs; later lines (a node stopping) open and close their log each time."""
        self._closed = True
        for path in list(self._open):
            self._forget(path)

    def _entry(self, path: str, create: bool) -> Optional[list[int]]:
        """[descriptor, size] of the node's open log; None when its directory is gone (a removed
        node) and `create` is not set."""
        entry = self._open.get(path)
        if entry is not None:
            self._open.move_to_end(path)
            return entry
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            descriptor = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if not create:
                return None
            os.makedirs(os.path.dirname(path), exist_ok=True)
            descriptor = os.open(path, flags, 0o644)
        entry = self._open[path] = [descriptor, os.fstat(descriptor).st_size]
        while len(self._open) > OPEN_LOGS:
            self._forget(next(iter(self._open)))
        return entry

    def _forget(self, path: str) -> None:
        entry = self._open.pop(path, None)
        if entry is not None:
            os.close(entry[0])

    def lines_between(self, pool_id: str, node_id: str, start: dt.datetime,
                      end: Optional[dt.datetime]) -> bytes:
        """The node's log lines (older generation first) whose time is within [start, end]."""
        path = self._path_of(pool_id, node_id)
        return b"".join(line for name in (path + ".1", path) for line in _lines(name)
                        if _within(line, start, end))


def _lines(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            yield from handle
    except FileNotFoundError:
        return


def _within(line: bytes, start: dt.datetime, end: Optional[dt.datetime]) -> bool:
    try:
        moment = wire.parse_iso(line.split(b" ", 1)[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return moment >= start and (end is None or moment <= end)


# ---- what the current program run does on its node ------------------------------------------------
_current: contextvars.ContextVar[Optional[tuple[AgentLog, str, str]]] = contextvars.ContextVar(
    "agent_log_node", default=None)


def bind(log: AgentLog, pool_id: str, node_id: str) -> contextvars.Token:
    """From now on in this asyncio task, `note()` writes to this node's log; `unbind(token)` ends it."""
    return _current.set((log, pool_id, node_id))


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)


def note(message: str, level: str = "INFO") -> None:
    """Write to the log of the node whose program this asyncio task runs (nothing outside one)."""
    bound = _current.get()
    if bound is not None:
        log, pool_id, node_id = bound
        log.write(pool_id, node_id, message, level)
