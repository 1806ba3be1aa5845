"""How the browser app reaches the store: short-lived connections, one writer at a time.

DuckDB lets one process write a file, or many read it, never both. The app therefore holds no
connection between requests: each request opens the store, does its work and closes it, so a
`datacure audit` or `datacure sql` in a terminal can take the file between two clicks. Inside the
app, reads share the file (read-only connections, with DuckDB's external access off: the SQL
console cannot read or write other files, attach databases or load extensions) and a write
(a review decision) waits for the reads in flight and holds the file alone; a readers-writer
lock keeps the two kinds of connection from meeting in this process, which DuckDB refuses.

When another process holds the file (an audit writing it), opening is retried for `busy_wait`
seconds and then fails with `StoreBusyError`: the app answers 503 with `Retry-After`, shows the
last page it rendered for that address (marked stale), and the browser retries a review until it
is stored, so a decision is never dropped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from ..store.db import Store
from ..store.errors import StoreBusyError

# Read-only connections of the app: no file system outside the store, no extensions, and no
# `SET` that could undo that (DuckDB refuses to re-enable external access anyway).
READ_CONFIG = {"enable_external_access": False, "lock_configuration": True}


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class StoreAccess:
    """Opens the store for one request at a time (see module doc)."""

    def __init__(self, db: str | os.PathLike, busy_wait: float = 2.0):
        self.path = Path(db)
        self.busy_wait = float(busy_wait)
        self._lock = RWLock()

    def _open(self, read_only: bool) -> Store:
        deadline = time.monotonic() + self.busy_wait
        delay = 0.02
        while True:
            try:
                return Store(
                    self.path,
                    read_only=read_only,
                    create=False,
                    config=READ_CONFIG if read_only else None,
                )
            except StoreBusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    @contextlib.contextmanager
    def read(self) -> Iterator[Store]:
        with self._lock.reading():
            st = self._open(read_only=True)
            try:
                yield st
            finally:
                st.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[Store]:
        with self._lock.writing():
            st = self._open(read_only=False)
            try:
                yield st
            finally:
                st.close()

    def version(self) -> tuple:
        """Changes whenever the store's files change (a cache key for slow summaries)."""
        out = []
        for p in (self.path, Path(f"{self.path}.wal")):
            try:
                s = p.stat()
                out.append((s.st_mtime_ns, s.st_size))
            except OSError:
                out.append(None)
        return tuple(out)


class LastGood:
    """The last successful answer per address (bounded), shown while the store is busy."""

    def __init__(self, entries: int = 256, max_bytes: int = 2_000_000):
        self._items: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._entries = entries
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def put(self, key: str, body: bytes, media_type: str) -> None:
        if len(body) > self._max_bytes:
            return
        with self._lock:
            self._items[key] = (body, media_type)
            self._items.move_to_end(key)
            while len(self._items) > self._entries:
                self._items.popitem(last=False)

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._items.get(key)


class Memo:
    """Slow, bounded results (overview summary, embedding map) kept while the store is unchanged.

    Keyed by name and the store's version; a store change recomputes on the next request."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[tuple, object]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, version: tuple):
        with self._lock:
            hit = self._items.get(name)
        return hit[1] if hit and hit[0] == version else None

    def put(self, name: str, version: tuple, value) -> None:
        with self._lock:
            self._items[name] = (version, value)
