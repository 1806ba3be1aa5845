"""The contamination result per examined row: evidence mapped to scores, the rows' frame with
its details, and the flagged examples `info` shows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ...store import schema as S


def evidence_score(x: np.ndarray, threshold: float) -> np.ndarray:
    """Map evidence x in [0, 1] (1 = an exact copy) to a score in [0, 1] with the flag threshold
    at 0.5: 1 at no evidence, 0.5 at the threshold, 0 at x = 1."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    thr = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    above = 0.5 * (1.0 - x) / (1.0 - thr)
    below = 0.5 + 0.5 * (thr - x) / thr
    return np.clip(np.where(x >= thr, above, below), 0.0, 1.0)


def combined_score(ev1, thr1: float, sim, thr: float | None, lower, judged) -> np.ndarray:
    """Per row: the lower of the tier-1 evidence score and the tier-2 similarity score (rows
    with no similarity: 1); rows the judge confirmed below the threshold score 0.25 to 0.49 by
    where their similarity sits between the judge's lower bar and the threshold."""
    score = evidence_score(ev1, thr1)
    if thr is not None:
        score = np.minimum(score, np.where(~np.isnan(sim), evidence_score(sim, thr), 1.0))
    if judged.any() and lower is not None:
        band = np.clip((thr - sim) / max(thr - lower, 1e-6), 0.0, 1.0)
        score = np.where(judged, np.minimum(score, 0.25 + 0.24 * band), score)
    return score


def examples(rows: pl.DataFrame, with_row_ids: bool) -> list[dict]:
    """The first 20 flagged rows for `info.examples`."""
    return [
        {
            S.ROW_ID: r[S.ROW_ID],
            "tier": r["tier"],
            "benchmark_index": r["benchmark_index"],
            **({"benchmark_row_ids": r["benchmark_row_ids"]} if with_row_ids else {}),
        }
        for r in rows.filter(pl.col("is_issue")).head(20).to_dicts()
    ]


def result_rows(row_ids, bench, text, ev1, extra1, sim, named, judge, flags, score):
    """The examined rows' frame: flag, score, lowest flagging tier and all tiers, the named
    benchmark items (and their row ids when the benchmark is a split), each tier's evidence
    and the judge's answer."""
    flag1, flag2, flag3 = flags
    tier = np.where(flag1, 1, np.where(flag2, 2, np.where(flag3, 3, 0)))
    frame = pl.DataFrame(
        {
            S.ROW_ID: row_ids,
            "is_issue": tier > 0,
            "score": score.astype(np.float64),
            "tier": pl.Series(np.where(tier > 0, tier, -1)).replace(-1, None).cast(pl.Int8),
            "_f1": flag1,
            "_f2": flag2,
            "_f3": flag3,
            "benchmark_index": named,
        }
    )
    if bench.row_ids is not None:
        brid = np.asarray(bench.row_ids, dtype=np.int64)
        ex = frame.select(pl.col("benchmark_index")).with_row_index("_p")
        ex = ex.explode("benchmark_index")
        idx = ex["benchmark_index"].fill_null(-1).to_numpy()
        rid = np.where(idx >= 0, brid[np.maximum(idx, 0)], -1)
        mapped = (
            ex.with_columns(pl.Series("_r", rid))
            .group_by("_p", maintain_order=True)
            .agg(pl.col("_r").filter(pl.col("_r") >= 0))
        )
        frame = frame.with_columns(mapped["_r"].alias("benchmark_row_ids"))
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.List(pl.Int64)).alias("benchmark_row_ids"))
    evidence = (
        {"ngram_overlap": np.round(ev1, 6)}
        if text
        else {"phash_distance": pl.Series(np.where(extra1 <= 64, extra1, -1)).replace(-1, None)}
    )
    frame = frame.with_columns(
        pl.concat_list(
            pl.when(pl.col("_f1")).then(pl.lit(1)),
            pl.when(pl.col("_f2")).then(pl.lit(2)),
            pl.when(pl.col("_f3")).then(pl.lit(3)),
        )
        .list.drop_nulls()
        .alias("tiers"),
        **{k: pl.Series(v) for k, v in evidence.items()},
        similarity=pl.Series(np.round(sim, 6)).fill_nan(None),
        judge=pl.Series(judge.tolist(), dtype=pl.Boolean),
    )
    return frame.drop("_f1", "_f2", "_f3")
