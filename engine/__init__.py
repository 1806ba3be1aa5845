"""Engines: where the heavy steps of `ingest`, `embed` and `audit` run.

- `local` (the default): this process, the library functions as they are (`store.ingest`,
  `store.embed`, `auditor.runner`). Nothing here changes them.
- `ray`: a Ray cluster (`engine/ray/`). Sharded sources are read in parallel, embeddings are
  computed by an actor pool (Ray Data), the kNN graph is built in k-means partitions searched
  with FAISS on workers, and the row auditors run as tasks over shards, with global statistics
  reduced on the driver. Big per-row data (vectors, the kNN graph) lives as Parquet files beside
  the DuckDB file (`<db>.shards/`) and is attached to the store as views, so `sql`, `report`,
  `repair` and `export` read it unchanged. `address` joins a running cluster; without it a local
  one is started for the call and stopped after it.

Both engines take the same arguments and return the same reports (`IngestReport`,
`EmbedReport`, `RunReport`), so the CLI and the Python API stay thin: they pick an engine with
`get_engine(name, address)` and call it. Importing this package imports no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Store

ENGINES = ("local", "ray")


class Engine:
    """The three heavy entry points. Subclasses run them somewhere."""

    name = "engine"

    def ingest(self, store: Store, source: Any, **options: Any):
        raise NotImplementedError

    def embed(self, store: Store, **options: Any):
        raise NotImplementedError

    def audit(self, store: Store, **options: Any):
        raise NotImplementedError


class LocalEngine(Engine):
    """This process: the library functions, unchanged."""

    name = "local"

    def ingest(self, store: Store, source: Any, **options: Any):
        from ..store.ingest import ingest

        options.pop("progress", None)  # the local ingest is one bulk statement
        return ingest(store, source, **options)

    def embed(self, store: Store, **options: Any):
        from ..store.embed import embed

        options.pop("progress", None)  # the local embed draws its own progress bar
        return embed(store, **options)

    def audit(self, store: Store, **options: Any):
        from ..auditor.runner import run_audit

        return run_audit(store, **options)


def get_engine(name: str | None = "local", address: str | None = None, **options: Any) -> Engine:
    """The engine called `name` ("local" or "ray"). `address` (Ray only) joins an existing
    cluster ("auto", "ray://host:10001", "host:6379"); `options` are the Ray engine's settings
    (`num_cpus`, `object_store_memory`, `shard_rows`)."""
    name = (name or "local").strip().lower()
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}", f"use one of: {', '.join(ENGINES)}")
    if name == "local":
        if address:
            raise InputError(
                "--ray-address is given but the engine is local",
                "add --engine ray to run on that cluster, or drop --ray-address",
            )
        return LocalEngine()
    from .ray import RayEngine

    return RayEngine(address=address, **options)


__all__ = ["ENGINES", "Engine", "LocalEngine", "get_engine"]
