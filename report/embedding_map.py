"""The report's embedding map: a seeded sample of rows projected on their top two principal
axes, each point coloured by the rarest flag on its row (serve/ draws the same map)."""

from __future__ import annotations

import numpy as np

from ..store import schema as S
from ..store.db import Store

NOT_FLAGGED = "not flagged"


def embedding_map(store: Store, run_id: int | None, points: int, seed: int) -> dict | None:
    """A 2-D PCA projection of a sample of rows, each coloured by its rarest flag."""
    key = store.default_embedding()
    if key is None:
        return None
    table = S.quote(S.embedding_table(key))
    if not store.table_exists(S.embedding_table(key)):
        return None
    total = int(store.scalar(f"SELECT count(*) FROM {table}") or 0)
    if total < 3:
        return None
    rid, x = _sample_vectors(store, table, total, points, seed)
    xy, explained = pca2(x - x.mean(0), seed)
    if run_id is not None:
        group = _rarest_flags(store, run_id, rid)
    else:
        group = np.full(len(rid), "", dtype=object)
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    unit = np.round((xy - lo) / span, 4)
    legend, gidx = _legend(group)
    return {
        "embedding": S.embedding_table(key),
        "sampled": len(rid),
        "total": total,
        "explained_variance": explained,
        "legend": legend,
        "x": unit[:, 0].tolist(),
        "y": unit[:, 1].tolist(),
        "group": gidx.tolist(),
        S.ROW_ID: rid.tolist(),
    }


def _sample_vectors(store: Store, table: str, total: int, points: int, seed: int):
    """(row ids in order, their vectors [n, d] as float64) of a seeded sample of `points` rows."""
    # A seeded reservoir sample in SQL: only `points` vectors ever leave DuckDB.
    sample = (
        f"SELECT row_id, vector FROM {table}"
        if total <= points
        else f"SELECT row_id, vector FROM {table} USING SAMPLE reservoir({points} ROWS) "
        f"REPEATABLE ({seed})"
    )
    tbl = store.arrow(f"SELECT * FROM ({sample}) ORDER BY row_id")
    rid = tbl.column(S.ROW_ID).to_numpy().astype(np.int64)
    col = tbl.column("vector").combine_chunks()
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(rid), -1)
    return rid, x


def _rarest_flags(store: Store, run_id: int, rid: np.ndarray) -> np.ndarray:
    """Per row of `rid` (sorted), the auditor of its rarest flag in the run ("" if none)."""
    group = np.full(len(rid), "", dtype=object)
    store.con.register("_dc_map_ids", {S.ROW_ID: rid})
    try:
        # A row flagged by several auditors takes the colour of the one that flags the
        # fewest rows: the rarer flag says more (an auditor flagging most rows would paint
        # the whole map otherwise).
        worst = store.fetchall(
            f"""WITH share AS (
                    SELECT auditor, avg(is_issue::INT) AS share FROM {S.ISSUES}
                    WHERE run_id = ? GROUP BY 1)
                SELECT i.row_id, arg_min(i.auditor, (s.share, i.score)) FROM {S.ISSUES} i
                JOIN _dc_map_ids m USING (row_id) JOIN share s USING (auditor)
                WHERE i.run_id = ? AND i.is_issue GROUP BY 1""",
            [run_id, run_id],
        )
    finally:
        store.con.unregister("_dc_map_ids")
    if worst:
        pos = np.searchsorted(rid, np.array([w[0] for w in worst], dtype=np.int64))
        group[pos] = [w[1] for w in worst]
    return group


def _legend(group: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """The legend (not flagged first, then by count) and each point's index into it."""
    names, counts = np.unique(group.astype(str), return_counts=True)
    legend = [{"group": n or NOT_FLAGGED, "count": int(c)} for n, c in zip(names, counts)]
    legend.sort(key=lambda d: (d["group"] != NOT_FLAGGED, -d["count"]))
    order = {d["group"]: i for i, d in enumerate(legend)}
    gidx = np.array([order[g or NOT_FLAGGED] for g in group.astype(str)], dtype=np.int64)
    return legend, gidx


def pca2(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Projection of centred rows `x` on their top two principal axes (sklearn's randomized
    PCA: a few [n, d] x [d, k] products, not a full SVD that can dominate the report on a busy
    machine). Returns (xy [n, 2], share of the variance along each axis)."""
    from sklearn.decomposition import PCA

    k = min(2, x.shape[1], len(x))
    if k == 0 or not np.any(x):
        return np.zeros((len(x), 2)), [0.0, 0.0]
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(x)
    xy = pca.transform(x)
    explained = [float(v) for v in pca.explained_variance_ratio_]
    if k < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - k))])
        explained += [0.0] * (2 - k)
    return xy, explained
