"""datacure: audit a labelled text or image dataset before training, repair it, and generate the
missing data.

    import datacure as dc

    ds = dc.open("my.duckdb")             # a Store; the file is created by the first ingest
    ds.ingest(df, split="train", label="label", text="text")
    ds.embed()
    run = ds.audit()
    run.summary()                         # polars DataFrame, one row per auditor
    run.issues("label", top=20)           # flagged rows, worst first, with their columns
    ds.sql("SELECT label, count(*) FROM samples GROUP BY 1")
    plan = ds.repair(rebalance_by="color", strategy="oversample")
    ds.export("out/", format="parquet")
    ds.report("report.html")

The command line (`datacure ...`) calls the same functions. Importing this package is light:
heavy libraries (torch, FAISS, transformers) load when a step needs them.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from .store.errors import DatacureError, InputError, MissingDependencyError, StoreBusyError

if TYPE_CHECKING:
    from .api import AuditRun, RepairPlan, Store, open

try:
    __version__ = metadata.version("datacure")
except metadata.PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
    __version__ = "0+unknown"

_API = ("AuditRun", "RepairPlan", "Store", "open")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'datacure' has no attribute {name!r}")


__all__ = [
    "AuditRun",
    "DatacureError",
    "InputError",
    "MissingDependencyError",
    "RepairPlan",
    "Store",
    "StoreBusyError",
    "__version__",
    "open",
]
