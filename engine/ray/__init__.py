"""The Ray engine: `ingest`, `embed` and `audit` on a Ray cluster (see `engine/__init__.py`).

Ray is imported when a method runs, not when this package is imported. Each call joins the
cluster at `address`, or starts a local one and stops it when the call returns (a cluster
already initialised in this process is used as it is).
"""

from __future__ import annotations

from typing import Any

from .. import Engine


class RayEngine(Engine):
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
        **settings: Any,
    ):
        self.address = address
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        # shard_rows (embed); group_rows, sample_rows, partition_rows, export_rows (rows per
        # Parquet file when an embedding held in a DuckDB table is exported), keep_work (audit)
        self.settings = settings

    def _session(self):
        from .cluster import session

        return session(self.address, self.num_cpus, self.object_store_memory)

    def ingest(self, store, source, **options):
        from .ingest import ray_ingest

        with self._session():
            return ray_ingest(store, source, **options)

    def embed(self, store, **options):
        from .embed import ray_embed

        opts = dict(options)
        if "shard_rows" in self.settings:
            opts.setdefault("shard_rows", self.settings["shard_rows"])
        with self._session() as cluster:
            return ray_embed(store, cluster=cluster, **opts)

    def audit(self, store, **options):
        from .audit import ray_audit

        opts = dict(options)
        for key in ("group_rows", "sample_rows", "partition_rows", "export_rows", "keep_work"):
            if key in self.settings:
                opts.setdefault(key, self.settings[key])
        with self._session() as cluster:
            return ray_audit(store, cluster=cluster, **opts)


__all__ = ["RayEngine"]
