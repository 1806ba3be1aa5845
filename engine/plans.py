"""Row auditors split into map and reduce: what each shard computes, what is reduced globally.

The Ray engine runs an auditor in one of three ways:

- **unchanged on shards** (`SHARDED`): the auditor class itself, on a `ShardStore` holding one
  shard's rows, when its answer for a row depends on that row (and inputs every shard sees
  whole): `null`, `contamination` (the benchmark is read by every shard), and
  `exact_duplicate` on hash buckets (a hash shuffle on the auditor's own duplicate key puts
  every copy of a text in one bucket);
- **map and reduce** (this module): auditors whose flags use a statistic over all rows or whose
  rows reach across shards, computed from the partitioned kNN graph: `outlier` (median and
  quartiles of the mean neighbour distance), `near_duplicate` (median nearest-neighbour distance,
  then connected components of the near pairs), `label` (pred_probs from fold statistics reduced
  across workers and a calibration temperature fitted on the driver, with the neighbours' label
  vote), `leakage` (exact pairs from hash buckets, near pairs from the partitions). Each function
  here mirrors its auditor's formula on one shard's arrays; `tests/test_engine_ray.py` checks,
  on the same (exact) graph, that the flags, scores and details equal the auditor's own, so a
  change to an auditor that this module does not follow fails a test;
- **on a sample or reduced statistics** (everything else: `non_iid`, `drift`, `spurious_*`,
  `slice`, ...; `class_imbalance` on the label column alone): the auditor unchanged on a uniform
  sample of rows, and its `info.engine` says so.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..auditor import leakage as _leakage
from ..store import schema as S

EPS = 100 * np.finfo(np.float64).eps

# how each auditor runs under the Ray engine (anything not named runs on a sample)
MAP_REDUCE = ("outlier", "near_duplicate", "label", "leakage")
SHARDED = ("null", "contamination", "exact_duplicate")
REDUCED = ("class_imbalance",)


def mode_of(name: str) -> str:
    if name in MAP_REDUCE:
        return "map_reduce"
    if name in SHARDED:
        return "sharded"
    if name in REDUCED:
        return "reduced"
    return "sample"


def unsupported(name: str, params: dict) -> str | None:
    """Why the Ray engine cannot give this auditor's answer with these parameters (None: it
    can)."""
    rule = params.get("filter_by", "expected_f1")
    if name == "label" and rule not in ("expected_f1", "predicted_neq_given"):
        return (
            f"filter_by={rule} runs cleanlab's find_label_issues on every row at once, which the "
            "Ray engine does not do; use filter_by=expected_f1 (the default), "
            "predicted_neq_given or --engine local"
        )
    return None


# --- outlier --------------------------------------------------------------------------------------
def outlier_mean(neighbors: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Per row, the mean cosine distance to its valid neighbours (0 when none)."""
    dist = distances.astype(np.float64)
    mean = np.where(neighbors >= 0, dist, np.nan)
    with np.errstate(invalid="ignore"), _quiet():
        mean = np.nanmean(mean, axis=1) if mean.shape[1] else np.full(len(mean), np.nan)
    return np.nan_to_num(mean, nan=0.0)


def outlier_reduce(means: np.ndarray, threshold: float) -> dict:
    """The global scale and cut of `outlier` from every row's mean distance."""
    scale = max(float(np.median(means)), EPS) if len(means) else EPS
    q1, q3 = np.percentile(means, [25, 75]) if len(means) else (0.0, 0.0)
    cut = float(q3 + (1.0 / threshold - 1.0) * (q3 - q1))
    return {"scale": scale, "issue_distance": cut}


def outlier_rows(row_ids: np.ndarray, mean: np.ndarray, stats: dict) -> pl.DataFrame:
    score = np.exp(-mean / stats["scale"])
    return pl.DataFrame(
        {
            S.ROW_ID: row_ids,
            "is_issue": mean > stats["issue_distance"],
            "score": np.clip(score, 0.0, 1.0),
            "mean_distance": mean.astype(np.float32),
        }
    )


# --- near_duplicate -------------------------------------------------------------------------------
def nearest_same_split(neighbors, distances, nb_split, split):
    """(distance to the nearest same-split neighbour or NaN, its row_id or -1, has one)."""
    n = len(neighbors)
    valid = neighbors >= 0
    same = valid & (nb_split == split[:, None])
    first = np.argmax(same, axis=1) if same.shape[1] else np.zeros(n, np.int64)
    has = same.any(axis=1)
    rows = np.arange(n)
    dist = distances.astype(np.float64)
    nn = np.where(has, dist[rows, first] if dist.shape[1] else np.nan, np.nan)
    nn_row = np.where(has, neighbors[rows, first] if neighbors.shape[1] else -1, -1)
    return nn, nn_row, has


def near_radius(nn_all: np.ndarray, threshold: float, max_distance: float | None) -> dict:
    """auditor/duplicates.py's radius: `threshold` x the median nearest same-split distance of
    the rows that have one, exact copies left out (or `max_distance`)."""
    from ..auditor.duplicates import typical_nn_distance

    median = typical_nn_distance(nn_all)
    radius = float(max_distance) if max_distance is not None else threshold * median
    return {"median_nn_distance": median, "radius": radius}


def near_edges(row_ids, neighbors, distances, nb_split, split, radius: float):
    """(row_id, neighbour row_id) of the same-split pairs closer than `radius`."""
    same = (neighbors >= 0) & (nb_split == split[:, None])
    near = same & (distances.astype(np.float64) < radius)
    src, col = np.nonzero(near)
    return row_ids[src], neighbors[src, col]


def near_sets(src: np.ndarray, dst: np.ndarray) -> pl.DataFrame:
    """Connected components of the near pairs: per row in a set, its set_id (smallest row_id)
    and the other members (sorted). Rows in no pair are in no set."""
    from ..auditor.duplicates import components, set_frame

    if not len(src):
        return pl.DataFrame(
            schema={S.ROW_ID: pl.Int64, "set_id": pl.Int64, "members": pl.List(pl.Int64)}
        )
    nodes = np.unique(np.concatenate([src, dst]))
    comp = components(len(nodes), np.searchsorted(nodes, src), np.searchsorted(nodes, dst))
    in_set = np.bincount(comp, minlength=len(nodes))[comp] > 1
    sets = set_frame(nodes, comp, in_set)
    return pl.DataFrame({S.ROW_ID: nodes}).hstack(sets.select("set_id", "members"))


def near_rows(
    row_ids, nn, nn_row, has, median: float, sets: pl.DataFrame, reference: np.ndarray
) -> pl.DataFrame:
    """`reference`: every audited row's nearest same-split distance, sorted (for `tail_share`)."""
    from ..auditor.duplicates import tail_share

    score = np.where(has, 1.0 - np.exp(-np.nan_to_num(nn) / median), 1.0)
    base = pl.DataFrame({S.ROW_ID: row_ids, "score": np.clip(score, 0.0, 1.0)})
    joined = base.join(sets, on=S.ROW_ID, how="left", maintain_order="left")
    hasl = pl.lit(pl.Series(has))
    return joined.select(
        S.ROW_ID,
        pl.col("set_id").is_not_null().alias("is_issue"),
        "score",
        "set_id",
        pl.col("members").fill_null(pl.lit([], dtype=pl.List(pl.Int64))),
        pl.when(hasl).then(pl.lit(pl.Series(np.maximum(nn_row, 0)))).alias("nearest_row_id"),
        pl.when(hasl)
        .then(pl.lit(pl.Series(np.clip(1.0 - np.nan_to_num(nn), -1.0, 1.0))))
        .alias("similarity"),
        pl.when(hasl)
        .then(pl.lit(pl.Series(np.nan_to_num(tail_share(reference, nn), nan=1.0))))
        .alias("tail_share"),
    )


# --- label ----------------------------------------------------------------------------------------
def softmax_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """auditor/predict.py's last step: softmax(logits / T), -inf kept, NaN rows uniform."""
    k = logits.shape[1]
    z = np.where(np.isfinite(logits), logits / temperature, -np.inf)
    with np.errstate(invalid="ignore"):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
    return np.nan_to_num(p, nan=1.0 / k)


def knn_vote(nb_label, distances, prior: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """`auditor.predict.knn_class_distribution` with the class prior of all audited rows (a
    shard sees only its own rows' labels)."""
    n, k = len(nb_label), len(prior)
    w = np.clip(1.0 - distances.astype(np.float64), 0.0, None) * (nb_label >= 0)
    flat = (np.arange(n)[:, None] * k + np.maximum(nb_label, 0)).ravel()
    votes = np.bincount(flat, weights=w.ravel(), minlength=n * k).reshape(n, k)
    return (votes + alpha * prior) / (votes.sum(axis=1, keepdims=True) + alpha)


def label_stack(views: dict, y: np.ndarray, cfg: dict, seed: int) -> dict:
    """The `label` auditor's fits (auditor/label.py's `combine_views` and `fit_noise`) from the
    views of the rows its log-pool fit draws (`views`: "model", "knn" when used, "text:<alpha>"
    when the text view runs, each [m, k]; `y` their labels): the views kept and their weights,
    the noise matrix (the confident joint of these rows) and the weights of the views behind
    that noisy channel. Every labelled row is then scored with `label_rows`."""
    from ..auditor.label import combine_views, fit_noise

    names, weights, combined = combine_views(views, y, cfg.get("knn_weight"), seed)
    noise, noise_rate, clean_weights = fit_noise(views, names, weights, y, combined, seed)
    return {
        "names": names,
        "weights": weights,
        "noise": noise,
        "noise_rate": noise_rate,
        "clean_weights": clean_weights,
    }


def label_rows(row_ids, y, views: dict, classes: list, stack: dict, cfg: dict):
    """The `label` auditor's rows for the labelled rows `y >= 0` of a shard (`views` as
    `label_stack` takes them, for these rows): (rows, their labels, scores and error
    probabilities for the expected-F1 cut, sums to reduce). With `filter_by: expected_f1` the
    flags are set after the cut (the driver's), here False."""
    from cleanlab.rank import get_label_quality_scores

    from ..auditor.label import clean_distribution, error_probabilities, label_rows, pool_views

    lab = np.flatnonzero(y >= 0)
    y = y[lab]
    views = {n: v[lab] for n, v in views.items() if v is not None}
    model, vote = views["model"], views.get("knn")
    combined = pool_views(views, stack["names"], stack["weights"], cfg.get("knn_weight"))
    if len(y):
        score = get_label_quality_scores(y, combined, method=cfg["score_method"])
    else:
        score = np.zeros(0)
    score = np.clip(score, 0.0, 1.0)
    noise = stack["noise"]
    clean = clean_distribution(views, stack["names"], stack["clean_weights"], noise, combined)
    qs, prior = error_probabilities(
        y, combined, clean, noise, cfg["noise_model"], cfg["random_noise_prior"]
    )
    q = qs @ prior  # the row's error probability (mixed: averaged over the models)
    if cfg["filter_by"] == "predicted_neq_given":
        is_issue = combined.argmax(axis=1) != y
    else:
        is_issue = np.zeros(len(y), dtype=bool)
    frame = label_rows(row_ids[lab], classes, y, is_issue, score, q, clean, model, vote)
    k = len(classes)
    text = next((n for n in stack["names"] if n.startswith("text:")), None)

    def correct(probs) -> int:
        return int((probs.argmax(axis=1) == y).sum()) if probs is not None else 0

    sums = {
        "num_labelled": len(y),
        "flagged": np.bincount(y[is_issue], minlength=k),
        "model_correct": correct(model),
        "knn_correct": correct(vote),
        "text_correct": correct(views[text] if text else None),
        "combined_correct": correct(combined),
        "expected_errors": float(q.sum()),
    }
    return frame, (row_ids[lab], y, score, qs), sums


def label_cut(row_ids, y, score, q, k: int, prior=None) -> dict:
    """auditor/label.py's expected-F1 cut over every labelled row (in row-id order, as the
    local engine holds them): the m lowest scores, ties to the lower row id; returned as the
    last flagged (score, row_id), so a row is flagged when (score, row_id) is at most that.
    `q` [n, models] and `prior` as auditor/label.py `expected_f1_cut` takes them (noise_model
    mixed: both error models' probabilities, weighted by the prior)."""
    from ..auditor.label import expected_f1_cut

    order = np.argsort(row_ids, kind="stable")
    row_ids, y, score, q = row_ids[order], y[order], score[order], q[order]
    m, f1 = expected_f1_cut(score, q, prior)
    flagged = np.argsort(score, kind="stable")[:m]
    last = flagged[-1] if m else None
    return {
        "m": int(m),
        "expected_f1": f1,
        "score": float(score[last]) if m else None,
        S.ROW_ID: int(row_ids[last]) if m else None,
        "flagged": np.bincount(y[flagged], minlength=k),
    }


# --- leakage --------------------------------------------------------------------------------------
PAIR_SCHEMA = _leakage.PAIR_SCHEMA


def leakage_calibration(
    nn: np.ndarray, nn_split: np.ndarray, examined: list[int], names: list[str], cfg: dict
) -> dict:
    """auditor/leakage.py's near bar per examined split, from every audited row's nearest
    same-split distance `nn` (split codes `nn_split`): `threshold` x the median of the rows of
    the other splits (exact copies left out), or 1 - `near_threshold`; with the sorted reference
    distances for `tail_share`."""
    nt = cfg.get("near_threshold")
    out = {}
    for s in examined:
        ref, median, radius = _leakage.near_radius(
            nn, nn_split != s, float(cfg["threshold"]), None if nt is None else float(nt)
        )
        out[names[s]] = {
            "median": median,
            "radius": radius,
            "reference": np.sort(ref[np.isfinite(ref)]),
        }
    return out


def leakage_rows(
    examined: pl.DataFrame,
    exact: pl.DataFrame,
    near: pl.DataFrame,
    max_partners: int,
    calibration: dict | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `leakage` auditor's assembly (auditor/leakage.py) for one shard's examined rows.

    examined: row_id, split, _best (the highest similarity to another split, NaN if none);
    exact / near: pairs (row_id, partner, partner_split, similarity, exact), the near pairs
    not yet cut: a pair is near when its distance is below its split's radius in
    `calibration` (`leakage_calibration`; None: no near search).
    Returns (rows, pairs joined with the row's split, for the by-split-pair counts)."""
    from ..auditor.duplicates import tail_share

    best = 1.0 - examined["_best"].to_numpy().astype(np.float64)  # distance, NaN if none
    split = examined["split"].to_numpy()
    scale = np.full(len(best), np.nan)
    tail = np.full(len(best), np.nan)
    if calibration:
        radius = {s: c["radius"] for s, c in calibration.items()}
        for s, c in calibration.items():
            at = split == s
            scale[at] = c["median"]
            tail[at] = tail_share(c["reference"], best[at])
        near = near.join(examined.select(S.ROW_ID, "split"), on=S.ROW_ID, how="inner")
        near = near.filter(
            (1.0 - pl.col("similarity"))
            < pl.col("split").replace_strict(radius, default=-1.0, return_dtype=pl.Float64)
        ).drop("split")
    else:
        near = near.clear()
    pairs = _leakage.merge_pairs(exact.select(list(PAIR_SCHEMA)), near.select(list(PAIR_SCHEMA)))
    rows, _, _ = _leakage.leak_rows(
        examined.select(S.ROW_ID), pairs, best, scale, tail, max_partners
    )
    rows = rows.select(
        S.ROW_ID,
        "is_issue",
        "score",
        "partners",
        "partner_splits",
        "similarity",
        "kind",
        "tail_share",
        "nearest_similarity",
    )
    by_pair = pairs.join(examined.select(S.ROW_ID, "split"), on=S.ROW_ID)
    return rows, by_pair


# --- info of auditors run unchanged on shards -----------------------------------------------------
def merge_info(name: str, infos: list[dict], counts: list[int]) -> dict:
    """One `info` from the per-shard infos of an auditor run unchanged on shards: counts add
    up, settings are the same in every shard (the first is kept)."""
    infos = [i for i in infos if i is not None]
    if not infos:
        return {}
    out = dict(infos[0])
    if name == "null":
        total: dict[str, int] = {}
        for i in infos:
            for c, v in i.get("null_counts", {}).items():
                total[c] = total.get(c, 0) + int(v)
        out["null_counts"] = total
        out["empty_content"] = sum(int(i.get("empty_content", 0)) for i in infos)
    elif name == "exact_duplicate":
        for key in ("num_sets", "num_rows_in_sets", "removable"):
            out[key] = sum(int(i.get(key, 0)) for i in infos)
    elif name == "contamination":
        for key in ("num_examined", "num_flagged"):
            out[key] = sum(int(i.get(key, 0)) for i in infos)
        tiers: dict[str, int] = {}
        for i in infos:
            for t, v in i.get("flagged_by_tier", {}).items():
                tiers[t] = tiers.get(t, 0) + int(v)
        out["flagged_by_tier"] = tiers
        out["examples"] = [e for i in infos for e in i.get("examples", [])][:20]
        seconds: dict[str, float] = {}
        for i in infos:
            for t, v in i.get("seconds", {}).items():
                seconds[t] = round(seconds.get(t, 0.0) + float(v), 3)
        out["seconds"] = seconds
    out["engine"] = {"ran_on": "shards", "shards": len(infos), "rows": int(sum(counts))}
    return out


class _quiet:
    """Silence numpy's all-NaN-slice warning (rows without any neighbour)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
