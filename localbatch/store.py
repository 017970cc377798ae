"""Persistence: every entity is one JSON row in SQLite, committed before the answers that reveal it.

Entities mark themselves changed (see domain/entities.py); the store collects the marks and
commits them in one transaction: at the start of the next event-loop turn as soon as anything
waits for them, otherwise (background changes nobody has seen yet) within
BACKGROUND_FLUSH_SECONDS. The request pipeline awaits `settled()` before it answers, so any
change a client is told about (any 2xx, or a state it reads) is on disk first and survives a
SIGKILL; a program starts only once the record that it runs is durable, so a crash makes its
re-run a counted requeue.

When a commit fails (the disk is full, the directory became read-only) nothing is dropped: the
batch stays pending and is retried, `settled()` raises StoreUnavailable so the request is
answered with a retryable 5xx instead of an acknowledgement, and the log says why.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from typing import Iterator, Optional, Protocol

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
BACKGROUND_FLUSH_SECONDS = 0.05
SCHEMA_VERSION = "1"
DATABASE_NAME = "localbatch.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Persistent(Protocol):
    """What the store needs of an entity."""
    kind: str

    @property
    def key(self) -> str: ...

    @property
    def attached(self) -> bool: ...

    def record(self) -> dict: ...


class StoreUnavailable(RuntimeError):
    """Changes could not be made durable; they stay pending and are retried."""


class StateDatabaseError(RuntimeError):
    """The state database cannot be opened or read."""


class Store:
    """SQLite under `<location>/state`, written in one transaction per event-loop turn."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, DATABASE_NAME)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit is in the OS's hands when it returns, so it survives a killed
            # process (only a power cut can lose the last commits).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if found is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.Error as exc:
            raise StateDatabaseError(f"cannot open the state database {self.path}: {exc}") from exc
        if found is not None and found[0] != SCHEMA_VERSION:
            raise StateDatabaseError(f"{self.path} has state schema {found[0]}; this localbatch reads {SCHEMA_VERSION}")
        # (kind, key) -> the entity to write, or None to delete the row.
        self._pending: dict[tuple[str, str], Optional[Persistent]] = {}
        self._prefix_deletes: list[tuple[str, str]] = []
        self._flush: Optional[asyncio.Handle] = None
        self._flush_is_soon = False
        self._waiters: list[asyncio.Future] = []
        self._retry: Optional[asyncio.TimerHandle] = None
        self.failure: Optional[str] = None  # why the last commit failed, until one succeeds

    # ---- reading ------------------------------------------------------------------------------
    def load(self, kind: str) -> Iterator[dict]:
        try:
            rows = self._db.execute("SELECT body FROM entities WHERE kind=? ORDER BY key", (kind,)).fetchall()
        except sqlite3.Error as exc:
            raise StateDatabaseError(f"cannot read the state database {self.path}: {exc}") from exc
        for (body,) in rows:
            yield json.loads(body)

    # ---- what changed ---------------------------------------------------------------------------
    def mark(self, entity: Persistent) -> None:
        """`entity` changed (or was added): write its latest form with the next commit."""
        self._pending[(entity.kind, entity.key)] = entity
        self._schedule()

    def forget(self, kind: str, key: str) -> None:
        """The entity is gone: delete its row with the next commit."""
        self._pending[(kind, key)] = None
        self._schedule()

    def forget_prefix(self, kind: str, key_prefix: str) -> None:
        """Delete every row of `kind` whose key starts with `key_prefix` (e.g. a job's tasks)."""
        self._pending = {k: v for k, v in self._pending.items() if not (k[0] == kind and k[1].startswith(key_prefix))}
        self._prefix_deletes.append((kind, key_prefix))
        self._schedule()

    @property
    def dirty(self) -> bool:
        return bool(self._pending or self._prefix_deletes)

    def _schedule(self, soon: bool = False) -> None:
        """Commit on the next turn (`soon`: something waits for it) or a little later (background)."""
        if self.failure is not None or (self._flush is not None and (self._flush_is_soon or not soon)):
            return  # already planned; a failing store retries on its own timer
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # at start-up, before the loop runs: load() commits at its end
        if self._flush is not None:
            self._flush.cancel()
        self._flush_is_soon = soon
        self._flush = loop.call_soon(self.flush) if soon else loop.call_later(BACKGROUND_FLUSH_SECONDS, self.flush)

    # ---- committing -----------------------------------------------------------------------------
    def flush(self) -> bool:
        """Commit what is pending; True when everything is durable. Never raises."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.dirty:
            try:
                self._commit()
            except sqlite3.Error as exc:
                self._failed(exc)
                return False
            if self.failure is not None:
                logger.warning("the state database %s is writable again; pending changes are saved", self.path)
            self.failure = None
        self._wake(None)
        return True

    def _commit(self) -> None:
        upserts, deletes = [], []
        for (kind, key), entity in self._pending.items():
            if entity is None:
                deletes.append((kind, key))
            elif entity.attached:  # work finishing after a delete never brings the row back
                upserts.append((kind, key, json.dumps(entity.record(), separators=(",", ":"))))
        with self._db:
            self._db.execute("BEGIN")
            for kind, prefix in self._prefix_deletes:
                escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                self._db.execute("DELETE FROM entities WHERE kind=? AND key LIKE ? ESCAPE '\\'", (kind, escaped + "%"))
            if deletes:
                self._db.executemany("DELETE FROM entities WHERE kind=? AND key=?", deletes)
            if upserts:
                self._db.executemany("INSERT OR REPLACE INTO entities VALUES (?, ?, ?)", upserts)
        self._pending.clear()
        self._prefix_deletes.clear()

    def _failed(self, exc: sqlite3.Error) -> None:
        first = self.failure is None
        self.failure = f"cannot write the state database {self.path}: {exc}"
        if first:
            logger.error("%s; changes stay pending and nothing more is acknowledged until they are saved "
                         "(retrying every %.0f s)", self.failure, RETRY_SECONDS)
        self._wake(StoreUnavailable(self.failure))
        try:
            self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self.flush)
        except RuntimeError:
            pass

    def _wake(self, error: Optional[Exception]) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    async def settled(self) -> None:
        """Return once every change made so far is durable; raise StoreUnavailable if it cannot be."""
        if self.failure is not None:
            if not self.flush():
                raise StoreUnavailable(self.failure)
            return
        if not self.dirty:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule(soon=True)
        await waiter

    async def durable(self) -> None:
        """Like settled(), but wait through failures until the changes are on disk."""
        while True:
            try:
                return await self.settled()
            except StoreUnavailable:
                await asyncio.sleep(RETRY_SECONDS)

    def close(self) -> None:
        if not self.flush():
            logger.error("%s: the last changes could not be saved", self.failure)
        self._db.close()

