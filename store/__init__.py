"""datacure's storage layer: a DuckDB file with samples, embeddings, kNN graphs and results.

Imports nothing from `auditor`, `generators` or `cli` (imports point one way). Names are loaded
lazily so that `import store.errors` (used by the CLI before any work) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DatacureError, InputError, MissingDependencyError, StoreBusyError

if TYPE_CHECKING:
    from .db import DEFAULT_DB, Store, open_store


def __getattr__(name: str):
    if name in ("DEFAULT_DB", "Store", "open_store"):
        from . import db

        return getattr(db, name)
    raise AttributeError(name)


__all__ = [
    "DEFAULT_DB",
    "DatacureError",
    "InputError",
    "MissingDependencyError",
    "Store",
    "StoreBusyError",
    "open_store",
]
