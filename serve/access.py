"""How the browser app reaches the store: short-lived connections, one writer at a time.

DuckDB lets one process write a file, or many read it, never both. The app therefore holds no
connection while it is idle: a request opens the store, and the last read-only connection is
closed `linger` seconds (2) after the last request, so a `datacure audit` or `datacure repair` in a
terminal can take the file once the browser has been quiet that long. Inside the
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
from ..store.errors import InputError, StoreBusyError

LINGER_ENV = "DATACURE_SERVE_LINGER"
DEFAULT_LINGER = 2.0

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
    """Opens the store for one request at a time (see module doc).

    `linger` (seconds, default 2; `DATACURE_SERVE_LINGER`): keep one read-only connection open
    that long after the last read, so the requests of a burst (a page, its thumbnails, the next
    click) share DuckDB's warm buffers instead of each reading the file anew (bench/serve.py
    measures both). While it is open another process cannot write the store: it waits with
    DATACURE_LOCK_TIMEOUT, or fails at once saying so; a review here closes it first. 0 opens
    and closes the store for every request."""

    def __init__(self, db: str | os.PathLike, busy_wait: float = 2.0, linger: float | None = None):
        self.path = Path(db)
        self.busy_wait = float(busy_wait)
        if linger is None:
            raw = os.environ.get(LINGER_ENV, "").strip()
            try:
                linger = float(raw) if raw else DEFAULT_LINGER
            except ValueError:
                raise InputError(
                    f"{LINGER_ENV}={raw!r} is not a number of seconds",
                    f"set {LINGER_ENV} to e.g. 2, or unset it",
                ) from None
        self.linger = max(float(linger), 0.0)
        self._lock = RWLock()
        self._keeper: Store | None = None
        self._timer: threading.Timer | None = None
        self._keeper_lock = threading.Lock()

    def _hold(self) -> None:
        """Open the lingering connection (or keep it) while a read runs."""
        with self._keeper_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._keeper is None:
                self._keeper = self._open(read_only=True)

    def _release_later(self) -> None:
        with self._keeper_lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.linger, self._drop)
            self._timer.daemon = True
            self._timer.start()

    def _drop(self) -> None:
        with self._keeper_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None

    def close(self) -> None:
        self._drop()

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
            if self.linger:
                self._hold()
            st = self._open(read_only=True)
            try:
                yield st
            finally:
                st.close()
                if self.linger:
                    self._release_later()

    @contextlib.contextmanager
    def write(self) -> Iterator[Store]:
        with self._lock.writing():
            self._drop()  # DuckDB: no read-only and read-write connection in one process
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
