"""The finish tasks of `audit --engine ray` (stages 8-9, see engine/ray/audit.py): the
near-duplicate edges of a group's graph rows, the label views of the rows the stack is fitted on,
and each map-reduce auditor's result rows. Same contract as engine/ray/audit_tasks.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ...auditor.base import result_table
from ...store import schema as S
from .. import plans, shards
from .audit_tasks import _Clock
from .cluster import fault_point, task_threads


# --- P4: near pairs -------------------------------------------------------------------------------
def edges_job(out: str, graph: str, k: int, radius: float) -> dict:
    task_threads(1)
    t = pq.read_table(graph, columns=[S.ROW_ID, "split", "neighbors", "distances", "nb_split"])
    rid = t.column(S.ROW_ID).to_numpy()
    src, dst = plans.near_edges(
        rid,
        shards.list_column(t, "neighbors", np.int64)[:, :k],
        shards.list_column(t, "distances")[:, :k],
        shards.list_column(t, "nb_split", np.int16)[:, :k],
        t.column("split").to_numpy(),
        radius,
    )
    meta = {"src": src, "dst": dst}
    shards.write_meta(out, meta)
    return meta


# --- P5: the rows of the map-reduce auditors ------------------------------------------------------
def finish_job(out: str, index: int, graph: str, jobs: dict) -> dict:
    """Write this group's result rows for each map-reduce auditor, with what the driver sums."""
    task_threads(1)
    fault_point("finish", index, out)
    clk = _Clock()
    t = pq.read_table(graph)
    rid = t.column(S.ROW_ID).to_numpy().astype(np.int64)
    split = t.column("split").to_numpy()
    y = t.column("label").to_numpy().astype(np.int64)
    neighbors = shards.list_column(t, "neighbors", np.int64)
    distances = shards.list_column(t, "distances")
    nb_split = shards.list_column(t, "nb_split", np.int16)
    nb_label = shards.list_column(t, "nb_label", np.int32)
    meta: dict = {}
    clk.lap("read")
    for name, job in jobs.items():
        kk = job.get("k", neighbors.shape[1])
        if name == "outlier":
            mean = plans.outlier_mean(neighbors[:, :kk], distances[:, :kk])
            rows = plans.outlier_rows(rid, mean, job["stats"])
        elif name == "near_duplicate":
            nn, nn_row, has = plans.nearest_same_split(
                neighbors[:, :kk], distances[:, :kk], nb_split[:, :kk], split
            )
            rows = plans.near_rows(
                rid, nn, nn_row, has, job["median"], job["sets"], job["reference"]
            )
        elif name == "label":
            views = _label_views(t, nb_label, distances, job)
            rows, cut, sums = plans.label_rows(
                rid, y, views, job["classes"], job["stack"], job["cfg"]
            )
            for key, v in sums.items():
                meta[f"{name}_{key}"] = v
            if job["cfg"]["filter_by"] == "expected_f1":  # the driver makes the cut
                for key, v in zip(("cut_ids", "cut_y", "cut_score", "cut_q"), cut):
                    meta[f"{name}_{key}"] = v
        elif name == "leakage":
            rows, sums = _leakage_rows(t, rid, split, job)
            meta.update(sums)
        else:  # pragma: no cover - the driver sends only the names above
            raise ValueError(name)
        clk.lap(name)
        _check(name, rows)
        path = Path(out).parent / name / f"{Path(graph).stem}.parquet"
        shards.write_table(result_table(rows), path)
        clk.lap(f"{name}_write")
        meta[f"{name}_file"] = str(path)
        meta[f"{name}_rows"] = len(rows)
        meta[f"{name}_issues"] = int(rows["is_issue"].sum())
        meta[f"{name}_score_sum"] = float(rows["score"].sum())
    meta.update(clk.out)
    shards.write_meta(out, meta)
    return meta


def _leakage_rows(t: pa.Table, rid: np.ndarray, split: np.ndarray, job: dict):
    """`leakage`'s rows of a group's examined rows, and what the driver sums: the pairs by
    split pair (Arrow IPC bytes), the rows with an exact partner, the rows flagged near only."""
    ex = np.isin(split, job["examined"])
    names = job["split_names"]
    examined = pl.DataFrame(
        {
            S.ROW_ID: rid[ex],
            "_best": t.column("leak_best").to_numpy()[ex]
            if "leak_best" in t.column_names
            else np.full(int(ex.sum()), np.nan),
            "split": np.asarray(names, dtype=object)[split[ex]].astype(str),
        }
    )
    near = _near_pairs(t, ex, rid, names)
    exact = job["exact"].filter(pl.col(S.ROW_ID).is_in(rid[ex].tolist()))
    rows, by_pair = plans.leakage_rows(
        examined, exact, near, job["max_partners"], job["calibration"]
    )
    any_exact = rows["kind"].to_numpy() == "exact"
    return rows, {
        "leakage_pairs": np.frombuffer(by_pair.write_ipc(None).getvalue(), np.uint8),
        "leakage_exact": int(any_exact.sum()),
        "leakage_near_only": int((rows["is_issue"].to_numpy() & ~any_exact).sum()),
    }


def view_names(job: dict) -> list[str]:
    """The label views a group's tasks compute: the model, the neighbours' vote when used,
    one text view per naive Bayes smoothing when the text view runs."""
    from ...auditor.predict import NB_ALPHAS

    names = ["model"] + (["knn"] if job["use_knn"] else [])
    if job["text_t"] is not None:
        names += [f"text:{a}" for a in NB_ALPHAS]
    return names


def _label_views(t: pa.Table, nb_label, distances, job: dict) -> dict:
    """The views of a group's rows: the chosen shrinkage's out-of-fold probabilities at the
    fitted temperature, the neighbours' vote (when used), and the text view at each
    smoothing's temperature (when it runs)."""
    from ...auditor.predict import nb_views

    k = len(job["classes"])
    logits = shards.list_column(t, "logits", np.float64)
    block = job["block"]
    views = {
        "model": plans.softmax_probs(logits[:, block * k : (block + 1) * k], job["temperature"])
    }
    if job["use_knn"]:
        kk = job["k"]
        views["knn"] = plans.knn_vote(nb_label[:, :kk], distances[:, :kk], job["prior"])
    if job["text_t"] is not None:
        z = shards.list_column(t, "text_logits", np.float64)
        for alpha, probs in nb_views(z, job["text_t"], k):
            views[f"text:{alpha}"] = probs
    return views


def label_views_job(out: str, graph: str, ids: np.ndarray, job: dict) -> dict:
    """The label views of the rows `ids` in this group (the rows the stack's fit draws)."""
    task_threads(1)
    cols = [S.ROW_ID, "label", "logits", "distances", "nb_label"]
    if job["text_t"] is not None:
        cols.append("text_logits")
    t = pq.read_table(graph, columns=cols)
    rid = t.column(S.ROW_ID).to_numpy().astype(np.int64)
    take = np.isin(rid, ids)
    t = t.filter(pa.array(take))
    views = _label_views(
        t, shards.list_column(t, "nb_label", np.int32), shards.list_column(t, "distances"), job
    )
    meta = {"ids": rid[take], **views}
    shards.write_meta(out, meta)
    return meta


def _near_pairs(t: pa.Table, ex: np.ndarray, rid: np.ndarray, names: list[str]) -> pl.DataFrame:
    if "leak_ids" not in t.column_names:
        return pl.DataFrame(schema=plans.PAIR_SCHEMA)
    f = pl.from_arrow(t.select([S.ROW_ID, "leak_ids", "leak_sims", "leak_splits"]))
    f = f.filter(pl.Series(ex)).explode(["leak_ids", "leak_sims", "leak_splits"]).drop_nulls()
    lut = pl.Series(names)
    return f.select(
        pl.col(S.ROW_ID).cast(pl.Int64),
        pl.col("leak_ids").cast(pl.Int64).alias("partner"),
        pl.col("leak_splits")
        .map_batches(lambda s: lut.gather(s.cast(pl.Int64)), return_dtype=pl.Utf8)
        .alias("partner_split"),
        pl.col("leak_sims").cast(pl.Float64).alias("similarity"),
        pl.lit(False).alias("exact"),
    )


def _check(name: str, rows: pl.DataFrame) -> None:
    from ...auditor.base import AuditResult, validate_result

    validate_result(name, AuditResult(rows, score=1.0), None)
