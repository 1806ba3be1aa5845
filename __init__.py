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

from typing import TYPE_CHECKING

from .store.errors import DatacureError, InputError, MissingDependencyError, StoreBusyError

if TYPE_CHECKING:
    from .api import AuditRun, RepairPlan, Store, open

_API = ("AuditRun", "RepairPlan", "Store", "open")


def __getattr__(name: str):
    # Resolved on first use, so `import datacure` loads neither the API's dependencies nor
    # importlib.metadata (which alone costs more than the rest of the import).
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("datacure")
        except metadata.PackageNotFoundError:  # a checkout that was never installed
            return "0+unknown"
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
