"""Ingest: read a source into `samples` in one transaction.

(Minimal core; formats, inference, validation and re-ingest stability are built on this.)
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from store import schema as S
from store.db import Store
from store.errors import InputError


@dataclass
class IngestReport:
    split_counts: dict
    source: str
    columns: list

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v} rows" for k, v in self.split_counts.items())
        return f"ingested {self.source} -> {parts}"


def ingest_frame(
    store: Store,
    frame: pl.DataFrame,
    split: str | None = "train",
    split_column: str | None = None,
    label: str | None = None,
    text: str | None = None,
    image: str | None = None,
    replace: bool = False,
    source: str = "<frame>",
) -> IngestReport:
    """Add the rows of `frame` to `samples` (one transaction). Used by every reader."""
    if split_column:
        frame = frame.with_columns(pl.col(split_column).cast(pl.Utf8).alias(S.SPLIT))
    else:
        frame = frame.with_columns(pl.lit(split or "train").alias(S.SPLIT))
    if label and label != S.LABEL:
        frame = frame.with_columns(pl.col(label).alias(S.LABEL))
    elif not label and S.LABEL not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias(S.LABEL))
    with store.transaction():
        splits = frame[S.SPLIT].unique().to_list()
        existing = set(store.splits())
        clash = sorted(set(splits) & existing)
        if clash and not replace:
            raise InputError(
                f"split(s) {', '.join(clash)} already in the store",
                "pass --replace to replace them, or --split NAME for a new split",
            )
        for sp in clash:
            store.execute(f"DELETE FROM {S.SAMPLES} WHERE split = ?", [sp])
        start = store.reserve_row_ids(len(frame))
        frame = frame.with_columns(
            pl.int_range(start, start + len(frame), dtype=pl.Int64).alias(S.ROW_ID),
            pl.lit(None, dtype=pl.UInt64).alias(S.CONTENT_HASH),
        )
        lead = [S.ROW_ID, S.SPLIT, S.LABEL]
        frame = frame.select(lead + [c for c in frame.columns if c not in lead])
        store.con.register("_dc_in", frame.to_arrow())
        try:
            if not store.table_exists(S.SAMPLES):
                store.execute(f"CREATE TABLE {S.SAMPLES} AS SELECT * FROM _dc_in")
            else:
                store.execute(f"INSERT INTO {S.SAMPLES} BY NAME SELECT * FROM _dc_in")
        finally:
            store.con.unregister("_dc_in")
        if text:
            store.meta_set("text_column", text)
        if image:
            store.meta_set("image_column", image)
        if label and label != S.LABEL:
            store.meta_set("label_source_columns", [label])
    return IngestReport({s: int((frame[S.SPLIT] == s).sum()) for s in splits}, source, frame.columns)
