"""`label`'s text view on the Ray engine: the TF-IDF naive Bayes model of auditor/predict.py
(`text_views`), fitted from statistics reduced across workers, so both engines give one view.

The features are hashed word 1-2 grams (`hashed_counts`: stateless, so a range is featurised on
its own), and each text is hashed once:

1. terms (one task per range, before assign): the audited rows' hashed counts, kept in the work
   folder, and their document frequencies per bucket; the driver sums those and keeps the
   buckets and IDF `select_terms` chooses (those of the whole corpus, as the local engine);
2. assign (per range, engine/ray/audit_tasks.py): the rows' TF-IDF from the kept counts, their
   per-fold class x term sums (the nonzero cells) and class counts, written beside the assign
   meta, and each row's TF-IDF written with its vector for the search; the driver sums the
   cells and fits each fold's naive Bayes model (the all-rows sums minus the fold's; at most
   MAX_CELLS classes x terms each) and the all-rows model;
3. search (per group): each row scored by its fold's model (`text_logits`); the driver fits
   each smoothing's temperature on the rows auditor/predict.py fits it on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from ...store import schema as S
from .. import shards
from .cluster import fault_point, task_threads

if TYPE_CHECKING:
    from .audit import _Run
    from .graph import GraphRun


def text_column(ctx, cfgs: dict, runnable, folds: int) -> str | None:
    """The column `label`'s text view reads, or None when the view does not run (as the local
    auditor decides: a text column, `text_view` on, the stack fitted, cross-validation folds)."""
    c = cfgs.get("label")
    if "label" not in runnable or not ctx.text_column or folds < 2:
        return None
    if not c.get("text_view", True) or c.get("knn_weight") is not None:
        return None
    return ctx.text_column


# --- 1. terms -------------------------------------------------------------------------------------
def terms_job(out: str, index: int, rows_file: str, codes_file: str, column: str) -> dict:
    """A range's audited texts hashed (kept at `<out>.counts` for assign) and their document
    frequencies per bucket (`<out>.df`); the meta holds the number of texts."""
    from ...auditor.predict import doc_freq, hashed_counts
    from .audit_tasks import _codes

    task_threads(1)
    fault_point("text_terms", index, out)
    codes = _codes(codes_file)
    rid = codes[S.ROW_ID][codes["audited"].astype(bool)]
    f = pl.read_parquet(rows_file, columns=[S.ROW_ID, column])
    f = f.filter(pl.col(S.ROW_ID).is_in(rid.tolist())).sort(S.ROW_ID)
    if len(f) != len(rid):  # pragma: no cover - the export writes every row of its range
        raise RuntimeError(f"{rows_file}: {len(rid) - len(f)} audited rows missing")
    counts = hashed_counts(f[column].cast(pl.Utf8).fill_null(""))
    df = doc_freq(counts)
    nz = np.flatnonzero(df)
    shards.write_meta(f"{out}.df", {"buckets": nz.astype(np.int32), "df": df[nz]})
    shards.write_meta(
        f"{out}.counts",
        {
            "rid": rid,
            "indptr": counts.indptr.astype(np.int64),
            "indices": counts.indices.astype(np.int32),
            "data": counts.data,
        },
    )
    meta = {"docs": len(rid), "counts": f"{out}.counts"}
    shards.write_meta(out, meta)
    return meta


def text_terms(run: _Run, gr: GraphRun) -> dict | None:
    """Stage 1 and the driver's choice of terms: {"kept", "idf", "counts": the counts file of
    each range}, or None when no term is in two texts. Saved for a resumed run."""
    from ...auditor.predict import TEXT_BUCKETS, select_terms

    jobs = [
        (str(run.work / "text_terms" / f"t{i:06d}"), (i, rf, cf, gr.text_column))
        for i, (rf, cf) in enumerate(zip(gr.rows_files, gr.codes_files))
    ]

    def terms():
        metas = run.stage("text terms", terms_job, jobs)
        df = np.zeros(TEXT_BUCKETS, np.int64)
        for out, _ in jobs:
            part = shards.read_meta(f"{out}.df")
            df[part["buckets"]] += part["df"]
        chosen = select_terms(df, sum(int(m["docs"]) for m in metas), len(gr.classes))
        return chosen or {"kept": np.zeros(0, np.int64), "idf": np.zeros(0)}

    chosen = run.state("text_terms", terms)
    if not len(chosen["kept"]):
        return None
    return {**chosen, "counts": [f"{out}.counts" for out, _ in jobs]}


# --- 2. assign ------------------------------------------------------------------------------------
def range_tfidf(counts_file: str, terms: dict, row_ids: np.ndarray):
    """The TF-IDF rows [len(row_ids), kept] of `row_ids` (sorted) from a range's kept counts; a
    row that was not hashed (not audited) is a zero row."""
    import scipy.sparse as sp

    from ...auditor.predict import TEXT_BUCKETS, tfidf_rows

    c = shards.read_meta(counts_file)
    if not len(c["rid"]):  # no audited row in this range (an audit of other splits)
        return sp.csr_matrix((len(row_ids), len(terms["kept"])), dtype=np.float32)
    counts = sp.csr_matrix(
        (c["data"], c["indices"], c["indptr"]), shape=(len(c["rid"]), TEXT_BUCKETS)
    )
    tf = tfidf_rows(counts, terms)
    pos = np.minimum(np.searchsorted(c["rid"], row_ids), len(c["rid"]) - 1)
    has = c["rid"][pos] == row_ids
    return sp.diags(has.astype(np.float32)) @ tf[pos]


def range_nb_sums(out: str, tf, codes: dict, folds: int, num_classes: int) -> str:
    """A range's naive Bayes statistics written to `<out>.text`; returns that path: per fold,
    the class x term TF-IDF sums of its labelled audited rows, as their nonzero cells (flat
    positions in [folds, k, terms] and values: a range holds a fraction of the terms), and the
    class counts [folds, k]."""
    from ...auditor.predict import class_sum_matrix

    y = np.where(codes["audited"].astype(bool), codes["label"], -1).astype(np.int64)
    cells, values = [], []
    counts = np.zeros((folds, num_classes))
    for f in range(folds):
        rows = np.flatnonzero((y >= 0) & (codes["fold"] == f))
        if len(rows):
            m = class_sum_matrix(tf, y, rows, num_classes).tocoo()
            cells.append((f * num_classes + m.row.astype(np.int64)) * tf.shape[1] + m.col)
            values.append(m.data.astype(np.float64))
            counts[f] = np.bincount(y[rows], minlength=num_classes)
    shards.write_meta(
        f"{out}.text",
        {
            "cells": np.concatenate(cells) if cells else np.zeros(0, np.int64),
            "values": np.concatenate(values) if values else np.zeros(0),
            "counts": counts,
        },
    )
    return f"{out}.text"


def tfidf_columns(tf) -> dict:
    """TF-IDF rows as two list columns (term positions, values) for the search's group files."""
    offsets = pa.array(tf.indptr.astype(np.int64))
    return {
        "tf_idx": pa.LargeListArray.from_arrays(offsets, pa.array(tf.indices.astype(np.int32))),
        "tf_val": pa.LargeListArray.from_arrays(offsets, pa.array(tf.data.astype(np.float32))),
    }


def tfidf_from_columns(table: pa.Table, num_terms: int):
    """The CSR TF-IDF rows of `tfidf_columns`' columns in `table`."""
    import scipy.sparse as sp

    idx = table.column("tf_idx").combine_chunks()
    val = table.column("tf_val").combine_chunks()
    offsets = idx.offsets.to_numpy()
    lo = int(offsets[0]) if len(offsets) else 0
    indices = idx.values.to_numpy()[lo : offsets[-1]] if len(offsets) else np.zeros(0, np.int32)
    data = val.values.to_numpy()[lo : offsets[-1]] if len(offsets) else np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, offsets - lo), shape=(len(table), num_terms))


# --- the model on the driver, and the search ------------------------------------------------------
def text_model(terms: dict, assigned: list[dict], folds: int, num_classes: int) -> dict:
    """The naive Bayes models the search scores with, from the assign tasks' sums: {"kept",
    "idf", "log_theta" [folds + 1, smoothings, k, terms] float32 and "bias" [folds + 1, k]: one
    model per fold (the all-rows sums minus the fold's, auditor/predict.py's
    `cross_val_nb_logits`) and, last, the model of all labelled rows}. Fitted once here, so a
    search task only multiplies (at most MAX_CELLS x smoothings x (folds + 1) floats)."""
    from ...auditor.predict import nb_model

    t = len(terms["kept"])
    sums = np.zeros(folds * num_classes * t)
    counts = np.zeros((folds, num_classes))
    for m in assigned:
        if m.get("text"):
            part = shards.read_meta(m["text"])
            sums += np.bincount(part["cells"], part["values"], minlength=len(sums))
            counts += part["counts"]
    sums = sums.reshape(folds, num_classes, t)
    total, total_counts = sums.sum(axis=0), counts.sum(axis=0)
    models = [nb_model(total - sums[f], total_counts - counts[f]) for f in range(folds)]
    models.append(nb_model(total, total_counts))
    return {
        "kept": terms["kept"],
        "idf": terms["idf"],
        "log_theta": np.stack([lt for lt, _ in models]).astype(np.float32),
        "bias": np.stack([b for _, b in models]),
    }


def text_logits(tf, y: np.ndarray, fold: np.ndarray, nb: dict) -> np.ndarray:
    """Naive Bayes log-scores [rows, k x smoothings] of TF-IDF rows: a labelled row by its
    fold's out-of-fold model, an unlabelled one by the model of all labelled rows
    (auditor/predict.py's `cross_val_nb_logits`)."""
    from ...auditor.predict import nb_apply

    lt, bias = nb["log_theta"], nb["bias"]
    folds = len(lt) - 1
    out = np.zeros((len(y), lt.shape[1] * lt.shape[2]))
    for f in range(folds + 1):
        sel = np.flatnonzero((y >= 0) & (fold == f) if f < folds else y < 0)
        if len(sel):
            out[sel] = nb_apply(tf[sel], lt[f], bias[f])
    return out
