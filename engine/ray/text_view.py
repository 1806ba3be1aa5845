"""`label`'s text view on the Ray engine: the TF-IDF naive Bayes model of auditor/predict.py
(`text_views`), fitted from statistics reduced across workers, so both engines give one view.

The features are hashed word 1-2 grams (`hashed_counts`: stateless, a shard is featurised on
its own), so the model needs two passes over the rows' text, one task per range each:

1. terms: each range's document frequencies per bucket; the driver sums them and keeps the
   buckets and IDF `select_terms` chooses (those of the whole corpus, as the local engine);
2. sums: each range's per-fold class x kept-term TF-IDF sums and class counts; the driver sums
   them into the per-fold naive Bayes statistics (at most MAX_CELLS classes x terms per fold).

The search tasks then score their own rows out of fold (`text_logits`: each fold's model is the
all-rows sums minus the fold's) from the text assign wrote beside the rows' vectors, and the
driver fits each smoothing's temperature on the rows auditor/predict.py fits it on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ...store import schema as S
from .. import shards
from .audit_tasks import _codes
from .cluster import fault_point, put, task_threads

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


def range_texts(rows_file: str, column: str, row_ids: np.ndarray) -> np.ndarray:
    """The texts of `row_ids` (sorted) from a range's rows file, null as "" (AuditContext.texts)."""
    f = pl.read_parquet(rows_file, columns=[S.ROW_ID, column])
    f = f.filter(pl.col(S.ROW_ID).is_in(row_ids.tolist())).sort(S.ROW_ID)
    got = f[S.ROW_ID].to_numpy()
    if len(got) != len(row_ids) or (got != row_ids).any():  # pragma: no cover - export invariant
        raise RuntimeError(f"{rows_file}: the rows file lacks rows of its range")
    return f[column].cast(pl.Utf8).fill_null("").to_numpy()


def _audited_texts(rows_file: str, codes_file: str, column: str):
    codes = _codes(codes_file)
    aud = codes["audited"].astype(bool)
    return codes, aud, range_texts(rows_file, column, codes[S.ROW_ID][aud])


def terms_job(out: str, index: int, rows_file: str, codes_file: str, column: str) -> dict:
    """A range's document frequencies per hashed bucket (the audited rows' texts), written
    beside the meta; the meta holds the number of texts."""
    from ...auditor.predict import doc_freq, hashed_counts

    task_threads(1)
    fault_point("text terms", index, out)
    _, aud, texts = _audited_texts(rows_file, codes_file, column)
    df = doc_freq(hashed_counts(texts))
    nz = np.flatnonzero(df)
    shards.write_meta(f"{out}.df", {"buckets": nz.astype(np.int32), "df": df[nz]})
    meta = {"docs": int(aud.sum())}
    shards.write_meta(out, meta)
    return meta


def sums_job(
    out: str,
    index: int,
    rows_file: str,
    codes_file: str,
    column: str,
    terms: dict,
    folds: int,
    num_classes: int,
) -> dict:
    """A range's naive Bayes statistics: per fold, the class x kept-term TF-IDF sums and the
    class counts of its labelled audited rows, written beside the meta."""
    from ...auditor.predict import hashed_counts, nb_class_sums, tfidf_rows

    task_threads(1)
    fault_point("text sums", index, out)
    codes, aud, texts = _audited_texts(rows_file, codes_file, column)
    tf = tfidf_rows(hashed_counts(texts), terms)
    y = codes["label"][aud].astype(np.int64)
    fold = codes["fold"][aud]
    sums = np.zeros((folds, num_classes, len(terms["kept"])))
    counts = np.zeros((folds, num_classes))
    for f in range(folds):
        rows = np.flatnonzero((y >= 0) & (fold == f))
        if len(rows):
            sums[f] = nb_class_sums(tf, y, rows, num_classes)
            counts[f] = np.bincount(y[rows], minlength=num_classes)
    shards.write_meta(f"{out}.sums", {"sums": sums, "counts": counts})
    meta = {"labelled": int((y >= 0).sum())}
    shards.write_meta(out, meta)
    return meta


def text_model(run: _Run, gr: GraphRun) -> dict | None:
    """The driver's side of both passes: the kept terms and IDF, then the per-fold naive Bayes
    statistics ({"kept", "idf", "fold_sums" [folds, k, terms], "fold_counts" [folds, k]}), or
    None when no term is in two texts. Saved in the work folder for a resumed run."""
    from ...auditor.predict import TEXT_BUCKETS, select_terms

    k = len(gr.classes)
    column = gr.text_column

    def terms():
        jobs = [
            (str(run.work / "text_terms" / f"t{i:06d}"), (i, rf, cf, column))
            for i, (rf, cf) in enumerate(zip(gr.rows_files, gr.codes_files))
        ]
        metas = run.stage("text terms", terms_job, jobs)
        df = np.zeros(TEXT_BUCKETS, np.int64)
        for out, _ in jobs:
            part = shards.read_meta(f"{out}.df")
            df[part["buckets"]] += part["df"]
        chosen = select_terms(df, sum(int(m["docs"]) for m in metas), k)
        return chosen or {"kept": np.zeros(0, np.int64), "idf": np.zeros(0)}

    chosen = run.state("text_terms", terms)
    if not len(chosen["kept"]):
        return None

    def model():
        ref = put(chosen)
        jobs = [
            (str(run.work / "text_sums" / f"n{i:06d}"), (i, rf, cf, column, ref, gr.folds, k))
            for i, (rf, cf) in enumerate(zip(gr.rows_files, gr.codes_files))
        ]
        run.stage("text sums", sums_job, jobs)
        sums = np.zeros((gr.folds, k, len(chosen["kept"])))
        counts = np.zeros((gr.folds, k))
        for out, _ in jobs:
            part = shards.read_meta(f"{out}.sums")
            sums += part["sums"]
            counts += part["counts"]
        return {**chosen, "fold_sums": sums, "fold_counts": counts}

    return run.state("text_model", model)


def text_logits(texts, y: np.ndarray, fold: np.ndarray, nb: dict) -> np.ndarray:
    """Naive Bayes log-scores [rows, k x smoothings] of rows by text: a labelled row by its
    fold's out-of-fold model, an unlabelled one by the model of all labelled rows
    (auditor/predict.py's `cross_val_nb_logits`)."""
    from ...auditor.predict import NB_ALPHAS, hashed_counts, nb_scores, tfidf_rows

    tf = tfidf_rows(hashed_counts(texts), nb)
    fs, fc = nb["fold_sums"], nb["fold_counts"]
    total, counts = fs.sum(axis=0), fc.sum(axis=0)
    out = np.zeros((len(y), fs.shape[1] * len(NB_ALPHAS)))
    for f in range(len(fs)):
        sel = np.flatnonzero((y >= 0) & (fold == f))
        if len(sel):
            out[sel] = nb_scores(tf[sel], total - fs[f], counts - fc[f])
    sel = np.flatnonzero(y < 0)
    if len(sel):
        out[sel] = nb_scores(tf[sel], total, counts)
    return out
