"""The tasks of `audit --engine ray`, each run on a worker over files (see engine/ray/audit.py):
here those over one range of rows or one hash bucket; the search of a group of partitions in
engine/ray/search_tasks.py, the near pairs and the auditors' rows in engine/ray/finish_tasks.py.

Every task reads its inputs from Parquet, writes its output atomically, then its meta file
(`shards.write_meta`), and returns the meta: a rerun skips a task whose meta exists. A task owns
one CPU (`task_threads(1)`); its memory is bounded by the rows it is given (one vector file, one
group of partitions with its halo, or one hash bucket), never by the data set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ...auditor.base import result_table
from ...store import schema as S
from .. import partition as P
from .. import shards
from .cluster import fault_point, task_threads


class _Clock:
    """Seconds spent in each phase of a task, returned in its meta as `t_<phase>`."""

    def __init__(self):
        import time

        self._now = time.perf_counter
        self.t = self._now()
        self.out: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.out[f"t_{name}"] = self.out.get(f"t_{name}", 0.0) + now - self.t
        self.t = now


# --- helpers --------------------------------------------------------------------------------------
def _codes(path: str) -> dict:
    t = pq.read_table(path)
    return {c: t.column(c).to_numpy() for c in t.column_names}


def _vectors(files: list[str], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    if not files:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    t = pa.concat_tables(
        pq.read_table(
            f, columns=[S.ROW_ID, "vector"], filters=[(S.ROW_ID, ">=", lo), (S.ROW_ID, "<=", hi)]
        )
        for f in files
    )
    t = t.sort_by(S.ROW_ID) if len(files) > 1 else t
    ids = t.column(S.ROW_ID).to_numpy().astype(np.int64)
    if not len(ids):
        return ids, np.zeros((0, 0), np.float32)
    return ids, shards.list_column(t, "vector")


def _aligned(codes: dict, files: list[str]):
    """The codes of a range and the vectors of its rows that have one: (codes restricted to rows
    with a vector, raw vectors aligned with them, number of audited rows without a vector)."""
    rid = codes[S.ROW_ID]
    if not len(rid):
        return codes, np.zeros((0, 0), np.float32), 0
    vid, vec = _vectors(files, int(rid[0]), int(rid[-1]))
    pos = np.searchsorted(vid, rid)
    pos[pos >= len(vid)] = 0
    has = (vid[pos] == rid) if len(vid) else np.zeros(len(rid), bool)
    missing = int((~has & codes["audited"]).sum())
    kept = {k: v[has] for k, v in codes.items()}
    return kept, (vec[pos[has]] if len(vid) else np.zeros((0, 0), np.float32)), missing


# --- P1: statistics and samples -------------------------------------------------------------------
def stats_job(
    out: str,
    index: int,
    codes_file: str,
    vec_files: list[str],
    sample_ids: np.ndarray,
    query_ids: np.ndarray,
    fp_ids: np.ndarray,
) -> dict:
    """Labelled sums (for the mean of the pred_probs model), and the vectors of the rows chosen
    for the k-means sample, the recall queries and the vector fingerprint."""
    task_threads(1)
    fault_point("stats", index, out)
    codes = _codes(codes_file)
    codes, x, missing = _aligned(codes, vec_files)
    rid = codes[S.ROW_ID]
    lab = codes["audited"] & (codes["label"] >= 0)
    d = x.shape[1] if x.size else 0
    total = x[lab].sum(axis=0, dtype=np.float64) if d else np.zeros(0)
    take = np.isin(rid, sample_ids)
    q = np.isin(rid, query_ids)
    f = np.isin(rid, fp_ids)
    sample = pa.table({S.ROW_ID: pa.array(rid[take])}) if d else None
    if sample is not None:
        shards.write_table(shards.vectors_table(rid[take], x[take]), out)
    meta = {
        "rows": len(rid),
        "missing": missing,
        "dim": d,
        "sum": total,
        "count": int(lab.sum()),
        "sample_ids": rid[take],
        "query_ids": rid[q],
        "query_vec": x[q] if d else np.zeros((0, 0), np.float32),
        "fp_ids": rid[f],
        "fp_vec": x[f] if d else np.zeros((0, 0), np.float32),
    }
    shards.write_meta(out, meta)
    return meta


# --- P2: assignment, fold statistics, exact neighbours of the recall sample -----------------------
def assign_job(
    out: str,
    index: int,
    codes_file: str,
    vec_files: list[str],
    model: dict,
    group_dir: str,
    queries: np.ndarray,
    k: int,
    num_classes: int,
    folds: int,
    text_counts: str | None = None,
    text_terms: dict | None = None,
) -> dict:
    """Assign the rows of one vector range to partitions and write them, grouped, for the
    search; gather fold statistics; top-(k+1) of the recall queries among these rows. With
    `text_counts` (the range's hashed texts) and `text_terms` (the kept terms: `label`'s text
    view) the rows' TF-IDF goes with them, and the range's naive Bayes statistics beside the
    meta."""
    task_threads(1)
    fault_point("assign", index, out)
    clk = _Clock()
    codes = _codes(codes_file)
    codes, x, _ = _aligned(codes, vec_files)
    rid = codes[S.ROW_ID]
    clk.lap("read")
    xn = P.normalize(x) if len(rid) else x
    z = P.project(x, model["basis"]) if len(rid) else x
    # each row's nearest partitions: the first is its own, the rest say which partitions a
    # search of its group may probe
    pr = P.probes(z, model["centroids"], model["max_probes"])
    part = pr[:, 0] if len(rid) else np.zeros(0, np.int32)
    clk.lap("assign")
    group = model["group_of"][part] if len(rid) else np.zeros(0, np.int32)
    stats = _range_fold_stats(codes, x, model["mean"], num_classes, folds)
    clk.lap("fold_stats")
    # exact neighbours of the recall queries among this range's audited rows, and as many again:
    # the rows that tie with the k-th neighbour are as near as it is (P.tied_neighbours)
    aud = np.flatnonzero(codes["audited"])
    base = xn[aud] if len(aud) else np.zeros((0, queries.shape[1]), np.float32)
    sims, pos = P.exact_topk(queries, base, 2 * k + 1)
    ids, parts = _listed(pos, rid[aud]), _listed(pos, part[aud])
    z_lists = _projected_lists(queries, z, aud, rid, part, model["basis"], k)
    clk.lap("recall_sample")
    nparts = len(model["centroids"])
    present, rank = _probe_ranks(group, pr, nparts)
    clk.lap("probe_ranks")
    tf, text_file = None, None
    if text_counts is not None:
        from .text_view import range_nb_sums, range_tfidf

        tf = range_tfidf(text_counts, text_terms, rid)
        text_file = range_nb_sums(out, tf, codes, folds, num_classes)
        clk.lap("text")
    _write_groups(group_dir, index, codes, x, pr, group, present, tf)
    clk.lap("write")
    meta = {
        **clk.out,
        "rows": len(rid),
        "part_counts": np.bincount(part, minlength=nparts),
        "q_sims": sims,
        "q_ids": ids,
        "q_parts": parts,
        **z_lists,
        "rank_groups": present,
        "rank_min": rank,
    }
    if text_file:
        meta["text"] = text_file
    for f, (sc, sm, cn) in enumerate(stats):
        meta[f"scatter{f}"], meta[f"sums{f}"], meta[f"counts{f}"] = sc, sm, cn
    shards.write_meta(out, meta)
    return meta


def _projected_lists(queries, z, aud, rid, part, basis, k: int) -> dict:
    """The recall queries' nearest audited rows of this range in the projection (ids, sims,
    partitions; `partition.candidate_list_size` of them): from them the driver tells how many
    candidates the scan must re-rank (`partition.choose_candidates`). None without a basis."""
    if basis is None:
        return {}
    sims, pos = P.exact_topk(P.project(queries, basis), z[aud], P.candidate_list_size(k))
    return {"z_sims": sims, "z_ids": _listed(pos, rid[aud]), "z_parts": _listed(pos, part[aud])}


def _listed(pos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` at the positions `pos` of a top-k list, -1 where it has none (P.exact_topk's
    -1 where there are fewer rows; `pos` itself when there are none)."""
    return np.where(pos >= 0, values[np.maximum(pos, 0)], -1) if len(values) else pos


def _range_fold_stats(codes: dict, x: np.ndarray, mean, num_classes: int, folds: int) -> list:
    """Fold statistics of a range's audited labelled rows (raw vectors, as auditor/predict.py):
    one (scatter, sums, counts) per fold; none without two classes and two folds."""
    from ...auditor.predict import _fold_stats

    stats = []
    lab = np.flatnonzero(codes["audited"] & (codes["label"] >= 0))
    if num_classes >= 2 and folds >= 2 and len(codes[S.ROW_ID]):
        y = np.where(codes["label"] >= 0, codes["label"], 0).astype(np.int64)
        for f in range(folds):
            rows = lab[codes["fold"][lab] == f]
            stats.append(_fold_stats(x, rows, y, num_classes, mean))
    return stats


def _probe_ranks(group: np.ndarray, pr: np.ndarray, nparts: int):
    """(the groups present, the probe rank at which each first reaches each partition [groups,
    partitions], 255: never): a group's halo for any number of probes."""
    present = np.unique(group)
    rank = np.full((len(present), nparts), 255, np.uint8)
    if len(group):
        gi = np.searchsorted(present, group)
        for r in range(pr.shape[1] - 1, -1, -1):  # the smallest rank is written last
            rank[gi, pr[:, r]] = r
    return present, rank


def _write_groups(group_dir: str, index: int, codes: dict, x, pr, group, present, tf) -> None:
    """A range's rows written per group for the search (with each row's nearest partitions,
    and its TF-IDF row when `tf` is given)."""
    rid, part = codes[S.ROW_ID], pr[:, 0]  # a row's own partition is its nearest
    # rows grouped for the search, sorted by partition; each file lists where its partitions
    # start, so a search reads only the partitions it probes (memory-mapped, no decoding)
    order = np.argsort(part, kind="stable")
    for g in present:
        sel = order[group[order] == g]
        pg, starts = np.unique(part[sel], return_index=True)
        tbl = pa.table(
            {
                "part": pa.array(part[sel].astype(np.int32)),
                S.ROW_ID: pa.array(rid[sel]),
                "split": pa.array(codes["split"][sel].astype(np.int16)),
                "label": pa.array(codes["label"][sel].astype(np.int32)),
                "fold": pa.array(codes["fold"][sel].astype(np.int8)),
                "audited": pa.array(codes["audited"][sel]),
                "x": shards.fixed_list(x[sel], pa.float32()),
                # the row's nearest partitions, kept: a search reads its probes, not recomputes
                "probes": shards.fixed_list(pr[sel].astype(np.int32), pa.int32()),
            }
        )
        if tf is not None:
            from .text_view import tfidf_columns

            for name, col in tfidf_columns(tf[sel]).items():
                tbl = tbl.append_column(name, col)
        shards.write_ipc(
            tbl,
            f"{group_dir}/g{int(g):05d}/s{index:06d}.arrow",
            {"parts": pg.tolist(), "starts": starts.tolist() + [len(sel)]},
        )


# --- hash shuffle: exact duplicates and exact leakage ---------------------------------------------
def hash_job(
    out: str,
    index: int,
    rows_file: str,
    content: str,
    kind: str,
    buckets: int,
    audited_splits: list[str],
    want: list[str],
) -> dict:
    """Key every row of one range by content and write it to its hash bucket: the auditor's
    own duplicate key (`exact_duplicate`, audited rows) and leakage's key (every row)."""
    from ...auditor.duplicates import _image_keys, normalize_text

    task_threads(1)
    fault_point("hash", index, out)
    cols = [S.ROW_ID, S.SPLIT, content]
    t = pl.from_arrow(shards.read_parquet([rows_file], cols))
    base = Path(out).parent
    if "exact_duplicate" in want:
        a = t.filter(pl.col(S.SPLIT).is_in(audited_splits))
        if kind == "text":
            key = a.select(normalize_text(pl.col(content)).alias("k"))["k"]
            key = key.set(key == "", None) if len(key) else key
        else:
            bkeys, pkeys = _image_keys(a[content].to_numpy())
            key = pl.Series([p or b for b, p in zip(bkeys, pkeys)], dtype=pl.Utf8)
        h = key.hash(seed=11).to_numpy()
        empty = key.is_null().to_numpy()
        bucket = np.where(empty, a[S.ROW_ID].to_numpy() % buckets, h % buckets)
        for b in np.unique(bucket):
            shards.write_table(
                a.filter(pl.Series(bucket == b)).to_arrow(),
                base / "dup" / f"b{int(b):05d}" / f"r{index:06d}.parquet",
            )
    if "leakage" in want:
        if kind == "text":
            from ...auditor.textnorm import text_hashes

            texts = t[content].cast(pl.Utf8)
            usable = (texts.fill_null("").str.strip_chars().str.len_bytes() > 0).to_numpy()
            keys = text_hashes(texts)
        else:
            from ...auditor.contamination import image_hashes

            keys, _, _, usable = image_hashes(t[content].to_numpy())
        keys = np.asarray(keys, dtype=np.uint64)
        bucket = (keys % np.uint64(buckets)).astype(np.int64)
        kf = pl.DataFrame(
            {S.ROW_ID: t[S.ROW_ID], "split": t[S.SPLIT], "key": keys, "bucket": bucket}
        ).filter(pl.Series(usable))
        for b in kf["bucket"].unique().to_list():
            shards.write_table(
                kf.filter(pl.col("bucket") == b).drop("bucket").to_arrow(),
                base / "leak" / f"b{int(b):05d}" / f"r{index:06d}.parquet",
            )
    meta = {"rows": len(t)}
    shards.write_meta(out, meta)
    return meta


def dup_bucket_job(
    out: str, files: list[str], meta_store: dict, params: dict, content: str
) -> dict:
    """One hash bucket of `exact_duplicate`: the auditor unchanged on a store over it."""
    from ...auditor.base import get_auditor
    from ...auditor.context import AuditContext

    task_threads(1)
    sql = (
        f"SELECT row_id, split, {S.quote(content)}, NULL::UBIGINT AS {S.CONTENT_HASH} "
        f"FROM read_parquet({shards.sql_list(files)})"
    )
    if content == S.IMAGE_PATH:
        meta_store = dict(meta_store)
    st = shards.ShardStore(sql, meta_store)
    try:
        ctx = AuditContext(st)
        res = get_auditor("exact_duplicate")(**params).audit(ctx)
    finally:
        st.close()
    shards.write_table(result_table(res.rows), out)
    meta = {
        "rows": len(res.rows),
        "issues": res.num_issues,
        "score_sum": float((res.rows["score"]).sum()),
        "info": res.info,
    }
    shards.write_meta(out, meta)
    return meta


def leak_bucket_job(out: str, files: list[str], examined: list[str]) -> dict:
    """One hash bucket of leakage's exact pairs: same key, different split."""
    task_threads(1)
    kf = pl.from_arrow(shards.read_parquet(files))
    pairs = (
        kf.filter(pl.col("split").is_in(examined))
        .join(kf, on="key", suffix="_p")
        .filter(pl.col("split") != pl.col("split_p"))
        .select(
            pl.col(S.ROW_ID).cast(pl.Int64),
            pl.col("row_id_p").cast(pl.Int64).alias("partner"),
            pl.col("split_p").cast(pl.Utf8).alias("partner_split"),
            pl.lit(1.0).alias("similarity"),
            pl.lit(True).alias("exact"),
        )
    )
    shards.write_table(pairs.to_arrow(), out)
    meta = {"pairs": len(pairs)}
    shards.write_meta(out, meta)
    return meta


# --- auditors unchanged on one range of rows ------------------------------------------------------
def shard_audit_job(
    out: str,
    index: int,
    name: str,
    params: dict,
    samples_sql: str,
    meta_store: dict,
    embeddings: list[dict],
    emb_files: dict,
    ctx_args: dict,
) -> dict:
    """An auditor unchanged on a `ShardStore` over one range of rows (null, contamination)."""
    from ...auditor.base import get_auditor, validate_result
    from ...auditor.context import AuditContext

    task_threads(1)
    fault_point(name, index, out)
    st = shards.ShardStore(samples_sql, meta_store, embeddings, emb_files)
    try:
        present = set(st.splits())
        splits = [s for s in ctx_args["splits"] if s in present]
        if not splits or (ctx_args.get("reference") and ctx_args["reference"] not in present):
            shards.write_meta(out, {"rows": 0, "skipped": True})
            return {"rows": 0, "skipped": True}
        args = dict(ctx_args, splits=splits)
        ctx = AuditContext(st, **args)
        aud = get_auditor(name)(**params)
        reason = aud.skip_reason(ctx)
        if reason:
            shards.write_meta(out, {"rows": 0, "skipped": True, "reason": reason})
            return {"rows": 0, "skipped": True}
        res = validate_result(name, aud.audit(ctx), None)
    finally:
        st.close()
    shards.write_table(result_table(res.rows), out)
    meta = {
        "rows": len(res.rows),
        "issues": res.num_issues,
        "score": float(res.score),
        "info": res.info,
    }
    shards.write_meta(out, meta)
    return meta
