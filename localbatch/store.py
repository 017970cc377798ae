"""Persistence: every entity is one JSON row in SQLite, written behind in small batches.

The domain keeps its objects in memory and calls `put`/`delete` whenever one changes; the
store coalesces the changes made during one turn of the event loop and commits them in a
single transaction shortly after. `flush()` commits at once (used on shutdown).
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from typing import Iterator, Optional

FLUSH_DELAY_SECONDS = 0.05
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = "1"


class Store:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "localbatch.sqlite3")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif found[0] != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has state schema {found[0]}; this localbatch reads {SCHEMA_VERSION}")
        self._pending: dict[tuple[str, str], Optional[dict]] = {}
        self._flush_handle: Optional[asyncio.TimerHandle] = None

    def load(self, kind: str) -> Iterator[dict]:
        for (body,) in self._db.execute("SELECT body FROM entities WHERE kind=? ORDER BY key", (kind,)):
            yield json.loads(body)

    def put(self, kind: str, key: str, body: dict) -> None:
        self._pending[(kind, key)] = body
        self._schedule()

    def delete(self, kind: str, key: str) -> None:
        self._pending[(kind, key)] = None
        self._schedule()

    def delete_prefix(self, kind: str, key_prefix: str) -> None:
        """Delete every row of `kind` whose key starts with `key_prefix` (e.g. a job's tasks)."""
        self.flush()
        escaped = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        self._db.execute("DELETE FROM entities WHERE kind=? AND key LIKE ? ESCAPE '\\'", (kind, escaped + "%"))

    def _schedule(self) -> None:
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_DELAY_SECONDS, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        upserts = [(kind, key, json.dumps(body, separators=(",", ":")))
                   for (kind, key), body in pending.items() if body is not None]
        deletes = [(kind, key) for (kind, key), body in pending.items() if body is None]
        with self._db:
            self._db.execute("BEGIN")
            if deletes:
                self._db.executemany("DELETE FROM entities WHERE kind=? AND key=?", deletes)
            if upserts:
                self._db.executemany("INSERT OR REPLACE INTO entities VALUES (?, ?, ?)", upserts)

    def close(self) -> None:
        self.flush()
        self._db.close()
