"""`split_drift`: does each split come from the same distribution as the reference split?

Every audited split other than the reference (default `train`, `--reference`) is compared with
the reference on three fronts:

- each source column (`ctx.metadata_columns`, minus the column the split came from): the test is
  chosen by sample size and the column's type in the data definition (`store.datadef`: a number
  with few distinct values is categorical there, as Evidently has it). Reference of at most 1000
  rows: numeric (and datetime) columns get the two-sample Kolmogorov-Smirnov test, columns with
  3+ categories the chi-square test of homogeneity, binary ones the two-proportion
  z-test (p-values). Larger reference: numeric columns get the Wasserstein distance normalised by
  the reference's standard deviation, categorical ones the Jensen-Shannon distance (natural log)
  of the category shares; a distance above `distance_threshold` (Evidently's 0.1) is drift. The
  other statistics (KS, Wasserstein, chi-square, Jensen-Shannon) are reported too. Identifier
  and text columns are skipped and named in `info`, and so is a categorical column with more
  distinct values in the two splits than `max_unique_share` of the smaller split's rows.
- the label distribution, treated as a categorical column, where both splits have labels;
- the embedding, by a classifier two-sample test: a logistic regression tells reference rows
  from split rows (at most `embedding_sample` of each, balanced), its cross-validated AUC is the
  statistic, and the p-value comes from permuting the split labels against the out-of-fold
  scores (as Evidently's domain classifier does). Drift needs p below alpha and an AUC of at
  least `min_auc`, so a huge sample does not make a negligible shift "drift".

The p-values of one split (columns, label, embedding) are adjusted together by Benjamini-
Hochberg, so with twenty columns a random half of one file is not called drifting by chance.

Rows: one per row of the compared splits. `score` is a conformal p-value of how atypical the row
is for the reference: the share of reference rows whose mean cosine distance to their `k`
nearest reference neighbours is at least the row's mean distance to its `k` nearest reference
rows (reference subsampled to `reference_sample`). Without embeddings the definition's numeric
columns, standardised by the reference, stand in (Euclidean distance). A row is flagged when its
split drifted in that space (the embedding test, or a numeric column without embeddings) and its
score, Benjamini-Hochberg adjusted over the split's rows (conformal p-values allow it), is below
`row_alpha` (0.01), so at most about 1% of the flagged rows are ordinary rows.
`details`: `split`, `knn_distance`.

`info`: `drifted_columns` (a list over splits: split, column, test, statistic, p_value,
p_adjusted and the other statistics), `embedding` and `label` (the result of the most drifted
split; every split's full result is under `splits`), `drifted_splits`. Dataset score:
1 - the largest share of drifted tests in any split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import Field

from ..store import schema as S
from ..store.errors import InputError
from .base import FINDING, Auditor, AuditResult, Params, ReportSection, Requires, register
from .leakage import feature_columns, read_columns

if TYPE_CHECKING:
    from .context import AuditContext

SMALL_REFERENCE = 1000  # Evidently: p-value tests up to this many reference rows, distances above
EXACT_PAIRS = 500_000_000  # (row, reference row) pairs above which the row kNN is approximate


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy's `false_discovery_control`)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p, dtype=np.float64)
    return false_discovery_control(p, method="bh") if len(p) else p


def _present(col: pl.Series) -> pl.Series:
    """The column's values that are there: nulls dropped, and NaN or inf in a float column (a
    NaN would make the test's p-value NaN)."""
    col = col.drop_nulls()
    return col.filter(col.is_finite()) if col.dtype.is_float() else col


def _shares(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of each category (union of both) in ref and cur."""
    cats, inv = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    rc = np.bincount(inv[: len(ref)], minlength=len(cats))
    cc = np.bincount(inv[len(ref) :], minlength=len(cats))
    return cats, rc, cc


def categorical_stats(ref: np.ndarray, cur: np.ndarray) -> dict:
    """Chi-square test of homogeneity, two-proportion z-test (two categories) and the
    Jensen-Shannon distance of the category shares."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency, norm

    cats, rc, cc = _shares(ref, cur)
    out: dict = {"n_categories": len(cats)}
    if len(cats) < 2:
        return out | {"chi2": 0.0, "chi2_p": 1.0, "js": 0.0, "z": 0.0, "z_p": 1.0}
    chi2, chi2_p, _, _ = chi2_contingency(np.vstack([rc, cc]), correction=False)
    out |= {"chi2": float(chi2), "chi2_p": float(chi2_p)}
    out["js"] = float(jensenshannon(rc / rc.sum(), cc / cc.sum()))
    if len(cats) == 2:
        n1, n2 = rc.sum(), cc.sum()
        p1, p2 = rc[0] / n1, cc[0] / n2
        pooled = (rc[0] + cc[0]) / (n1 + n2)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z = 0.0 if se == 0 else float((p1 - p2) / se)
        out |= {"z": z, "z_p": float(2 * norm.sf(abs(z)))}
    top = np.argsort(-np.abs(rc / rc.sum() - cc / cc.sum()))[:3]
    out["largest_share_changes"] = {
        str(cats[i]): [round(float(rc[i] / rc.sum()), 4), round(float(cc[i] / cc.sum()), 4)]
        for i in top
    }
    return out


def numeric_stats(ref: np.ndarray, cur: np.ndarray) -> dict:
    """Two-sample KS test and Wasserstein distance normalised by the reference's std."""
    from scipy.stats import ks_2samp, wasserstein_distance

    ks = ks_2samp(ref, cur)
    norm = max(float(np.std(ref)), 1e-3)  # Evidently's floor, so a constant column is not inf
    return {
        "ks": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "wasserstein_norm": float(wasserstein_distance(ref, cur) / norm),
        "mean": [float(np.mean(ref)), float(np.mean(cur))],
    }


def column_test(ref: np.ndarray, cur: np.ndarray, numeric: bool, threshold: float) -> dict:
    """Statistics of one column and the test Evidently would choose for it.

    Returns a dict with `test`, `statistic`, `p_value` (None for distance tests), `threshold`
    (distance tests) and every statistic computed."""
    if numeric:
        st = numeric_stats(ref.astype(np.float64), cur.astype(np.float64))
        if len(ref) <= SMALL_REFERENCE:
            return st | {"test": "ks", "statistic": st["ks"], "p_value": st["ks_p"]}
        return st | {
            "test": "wasserstein_norm",
            "statistic": st["wasserstein_norm"],
            "p_value": None,
            "threshold": threshold,
        }
    st = categorical_stats(ref.astype(str), cur.astype(str))
    if len(ref) <= SMALL_REFERENCE:
        if len(np.unique(np.concatenate([ref.astype(str), cur.astype(str)]))) > 2:
            return st | {"test": "chi_square", "statistic": st["chi2"], "p_value": st["chi2_p"]}
        return st | {"test": "z", "statistic": st["z"], "p_value": st["z_p"]}
    return st | {
        "test": "jensen_shannon",
        "statistic": st["js"],
        "p_value": None,
        "threshold": threshold,
    }


def classifier_two_sample(
    ref: np.ndarray,
    cur: np.ndarray,
    sample: int = 2000,
    folds: int = 5,
    permutations: int = 1000,
    seed: int = 0,
) -> dict:
    """Classifier two-sample test: cross-validated AUC of a logistic regression telling `ref`
    rows from `cur` rows, with a permutation p-value over the out-of-fold scores."""
    from scipy.stats import rankdata
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ..store.knn import normalize

    rng = np.random.default_rng(seed)
    m = int(min(sample, len(ref), len(cur)))
    if m < 2 * folds:
        return {"skipped": f"too few rows for a classifier test ({m} per side)"}
    a = ref[rng.choice(len(ref), m, replace=False)]
    b = cur[rng.choice(len(cur), m, replace=False)]
    x = normalize(np.vstack([a, b]))
    y = np.r_[np.zeros(m, np.int8), np.ones(m, np.int8)]
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = LogisticRegression(C=1.0, max_iter=300)
    scores = cross_val_predict(clf, x, y, cv=cv, method="decision_function")
    ranks = rankdata(scores)
    n1, n0 = m, m

    def auc_of(rank_sum):
        return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)

    auc = float(auc_of(ranks[y == 1].sum()))
    # null: the same scores, split labels shuffled (B x 2m boolean masks, one matrix product)
    perm = rng.permuted(np.tile(y, (permutations, 1)), axis=1).astype(np.float64)
    null = auc_of(perm @ ranks)
    p = float((1 + np.sum(null >= auc)) / (1 + permutations))
    return {"auc": auc, "p_value": p, "sample_per_side": m, "permutations": permutations}


@register
class SplitDrift(Auditor):
    name = "split_drift"
    report = ReportSection(view="drift_table", own_section=("drift", "Drift between splits"))
    kind = FINDING
    description = "Distribution shift of each split against the reference split."
    requires = frozenset({Requires.REFERENCE})

    class Params(Params):
        alpha: float = Field(0.05, gt=0.0, lt=1.0)
        distance_threshold: float = Field(0.1, gt=0.0)
        min_auc: float = Field(0.52, ge=0.5, le=1.0)
        embedding_sample: int = Field(2000, ge=10)
        permutations: int = Field(1000, ge=10)
        k: int = Field(10, ge=1, le=200)
        reference_sample: int = Field(20_000, ge=10)
        row_alpha: float = Field(0.01, gt=0.0, lt=1.0)
        max_unique_share: float = Field(0.5, gt=0.0, le=1.0)

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if not [s for s in ctx.splits if s != ctx.reference]:
            return f"the audited splits hold only the reference {ctx.reference!r}"
        return None

    def audit(self, ctx: AuditContext) -> AuditResult:
        p = self.params
        compared = [s for s in ctx.splits if s != ctx.reference]
        cols = feature_columns(ctx)
        frame = read_columns(ctx, cols + [S.LABEL], [ctx.reference, *compared])
        ref = frame.filter(pl.col(S.SPLIT) == ctx.reference)
        split_of = frame[S.SPLIT].to_numpy()
        # vectors are needed for a sample of the reference and every compared row only
        rng = np.random.default_rng(ctx.seed)
        ref_pos = np.flatnonzero(split_of == ctx.reference)
        ref_pos = np.sort(rng.choice(ref_pos, min(len(ref_pos), p.reference_sample), replace=False))
        need = split_of != ctx.reference
        need[ref_pos] = True
        vectors, metric = self._vectors(ctx, frame, need)
        at = np.cumsum(need) - 1  # position of a needed frame row in `vectors`
        ref_vec = None if vectors is None else vectors[at[ref_pos]]

        splits_info: dict = {}
        row_parts = []
        calib = None
        if ref_vec is not None and len(ref_vec) > 1:
            calib = _reference_calibration(ref_vec, p.k, metric)
        for s in compared:
            cur = frame.filter(pl.col(S.SPLIT) == s)
            cur_vec = None if vectors is None else vectors[at[split_of == s]]
            emb_pair = (ref_vec, cur_vec) if metric == "cosine" else (None, None)
            res = self._compare(ctx, ref, cur, cols, *emb_pair)
            splits_info[s] = res
            rows = pl.DataFrame({S.ROW_ID: cur[S.ROW_ID], "split": [s] * len(cur)})
            if calib is not None and cur_vec is not None:
                pval, dist = _atypicality(calib, ref_vec, cur_vec, p.k, metric)
            else:
                pval, dist = np.ones(len(cur)), np.full(len(cur), np.nan)
            rows = rows.with_columns(
                pl.Series("score", pval.astype(np.float64)),
                # conformal p-values under Benjamini-Hochberg: the flagged rows of a drifted
                # split hold at most `row_alpha` in-distribution rows on average
                pl.Series(
                    "is_issue",
                    _space_drifted(res, metric) & (benjamini_hochberg(pval) < p.row_alpha),
                ),
                pl.Series("knn_distance", np.round(dist, 6)).fill_nan(None),
            )
            row_parts.append(rows)

        info = self._info(ctx, splits_info, metric)
        score = 1.0 - max(r["share_drifted"] for r in splits_info.values())
        return AuditResult(pl.concat(row_parts), score=score, info=info)

    def _info(self, ctx: AuditContext, splits_info: dict, metric: str | None) -> dict:
        """The run's info: the drifted splits and columns, the embedding and label tests of the
        splits that drifted most, what the row scores measure, and every split's tests."""
        p = self.params
        drifted_columns = [
            {"split": s, "column": c, **st}
            for s, r in splits_info.items()
            for c, st in r["columns"].items()
            if st.get("drifted")
        ]
        worst = max(splits_info, key=lambda s: splits_info[s]["share_drifted"])
        emb_worst = max(
            splits_info, key=lambda s: splits_info[s]["embedding"].get("auc", 0.0) or 0.0
        )
        return {
            "reference": ctx.reference,
            "alpha": p.alpha,
            "correction": "benjamini-hochberg",
            "drifted_splits": [s for s, r in splits_info.items() if r["drifted"]],
            "drifted_columns": drifted_columns,
            "embedding": {"split": emb_worst, **splits_info[emb_worst]["embedding"]},
            "label": {"split": worst, **splits_info[worst]["label"]},
            "rows": {
                "cosine": "conformal p-value of the mean kNN distance to the reference (embedding)",
                "euclidean": "conformal p-value of the mean kNN distance to the reference "
                "(numeric columns standardised by the reference; no embedding)",
                None: "no embedding and no numeric column: per-row atypicality not computed",
            }[metric],
            "splits": splits_info,
        }

    # ------------------------------------------------------------------------------------------
    def _vectors(self, ctx: AuditContext, frame: pl.DataFrame, need: np.ndarray):
        """(vectors of the `need` rows of `frame`, in its order, metric): the embedding
        ("cosine"), else the numeric columns standardised by the reference ("euclidean"), else
        (None, None)."""
        rid = frame[S.ROW_ID].to_numpy()[need]
        if ctx.embedding_key is not None:
            try:
                return ctx.vectors_for(rid), "cosine"  # both ordered by row_id
            except InputError:
                pass
        num = [c for c in feature_columns(ctx) if ctx.column_type(c) == "numeric"]
        if not num:
            return None, None
        x = frame.select([pl.col(c).cast(pl.Float64) for c in num]).to_numpy(writable=True)
        x[~np.isfinite(x)] = np.nan  # NaN and inf are missing, like null
        ref = frame[S.SPLIT].to_numpy() == ctx.reference
        mu = np.nanmean(x[ref], axis=0)
        sd = np.nanstd(x[ref], axis=0)
        sd[~(sd > 0)] = 1.0
        z = (x[need] - mu) / sd
        return np.nan_to_num(z, nan=0.0).astype(np.float32), "euclidean"

    def _compare(self, ctx, ref, cur, cols, ref_vec, cur_vec) -> dict:
        """One split against the reference: a test per column, the label, the embedding (one
        Benjamini-Hochberg family), and the share of tests that drifted."""
        columns, skipped = self._column_tests(ctx, ref, cur, cols)
        label = self._label_test(ref, cur)
        emb = self._embedding_test(ctx, ref_vec, cur_vec)
        ran = self._decide([columns[c] for c in columns] + [label, emb], emb)
        n_drift = sum(t["drifted"] for t in ran)
        return {
            "n": len(cur),
            "n_reference": len(ref),
            "columns": columns,
            "skipped_columns": skipped,
            "label": label,
            "embedding": emb,
            "num_tests": len(ran),
            "num_drifted": int(n_drift),
            "share_drifted": n_drift / len(ran) if ran else 0.0,
            "drifted": bool(n_drift),
        }

    def _column_tests(self, ctx, ref, cur, cols) -> tuple[dict, dict]:
        """(test of each column with its null shares, reason each skipped column was not
        tested): identifiers, text, too few values, or too many categories."""
        p = self.params
        columns: dict = {}
        skipped: dict = {}
        for c in cols:
            kind = ctx.column_type(c)  # the data definition's type: no second classification
            if kind in ("identifier", "text"):
                skipped[c] = f"type {kind} in the data definition"
                continue
            numeric = kind in ("numeric", "datetime")
            r, q = _present(ref[c]), _present(cur[c])
            if kind == "datetime":
                r, q = r.to_physical(), q.to_physical()
            if len(r) < 2 or len(q) < 2:
                skipped[c] = "fewer than 2 values in a split"
                continue
            n_unique = pl.concat([r.cast(pl.Utf8), q.cast(pl.Utf8)]).n_unique()
            if not numeric and n_unique > p.max_unique_share * min(len(r), len(q)):
                skipped[c] = f"{n_unique} categories in these splits: too sparse to compare"
                continue
            columns[c] = column_test(r.to_numpy(), q.to_numpy(), numeric, p.distance_threshold)
            columns[c]["null_share"] = [  # null, NaN or inf: missing
                float(1 - len(r) / max(len(ref), 1)),
                float(1 - len(q) / max(len(cur), 1)),
            ]
        return columns, skipped

    def _label_test(self, ref, cur) -> dict:
        """The label distribution's test, or why it was skipped."""
        rl, cl = ref[S.LABEL].drop_nulls(), cur[S.LABEL].drop_nulls()
        if len(rl) < 2 or len(cl) < 2:
            return {"skipped": "no labels in the reference or in this split"}
        return column_test(
            rl.cast(pl.Utf8).to_numpy(),
            cl.cast(pl.Utf8).to_numpy(),
            False,
            self.params.distance_threshold,
        )

    def _embedding_test(self, ctx, ref_vec, cur_vec) -> dict:
        """The classifier two-sample test on the embedding, or why it was skipped."""
        if ref_vec is None or cur_vec is None:
            return {"skipped": "no embedding covering both splits"}
        p = self.params
        emb = classifier_two_sample(
            ref_vec,
            cur_vec,
            p.embedding_sample,
            max(2, min(ctx.cv_folds, 5)),
            p.permutations,
            ctx.seed,
        )
        if "auc" in emb:
            emb["test"] = "classifier_auc"
        return emb

    def _decide(self, tests: list[dict], emb: dict) -> list[dict]:
        """Set `p_adjusted` and `drifted` on each test that ran; returns those. One
        Benjamini-Hochberg family per split: every p-value based decision; distance tests by
        their threshold; the embedding also needs an AUC of at least `min_auc`."""
        p = self.params
        pv = [t for t in tests if t.get("p_value") is not None and "skipped" not in t]
        adj = benjamini_hochberg(np.array([t["p_value"] for t in pv]))
        for t, a in zip(pv, adj):
            t["p_adjusted"] = float(a)
        for t in tests:
            if "skipped" in t:
                continue
            if t.get("p_value") is not None:
                t["drifted"] = bool(t["p_adjusted"] < p.alpha)
            else:
                t["drifted"] = bool(t["statistic"] > t["threshold"])
        if "auc" in emb:
            emb["drifted"] = bool(emb["drifted"] and emb["auc"] >= p.min_auc)
        return [t for t in tests if "drifted" in t]


def _space_drifted(res: dict, metric: str | None) -> bool:
    """Did the split drift in the space the row scores are measured in? (Rows are flagged only
    then: an atypical row of an undrifted split is the outlier auditor's business.)"""
    if metric == "cosine":
        return bool(res["embedding"].get("drifted", False))
    if metric == "euclidean":
        return any(st.get("drifted") for st in res["columns"].values() if "wasserstein_norm" in st)
    return False


def _knn_mean_distance(
    base: np.ndarray, queries: np.ndarray | None, k: int, metric: str
) -> np.ndarray:
    """Mean distance from each query to its k nearest rows of `base` (queries None: base to
    itself, self excluded). Cosine through store.knn for embeddings; Euclidean (sklearn) for
    standardised numeric columns, where cosine would ignore magnitude."""
    if metric == "cosine":
        from ..store.knn import build_knn, search

        if queries is None:
            return build_knn(base, k).distances.mean(axis=1)
        # past EXACT_PAIRS, store.knn's adaptive IVF (recall checked against exact on a sample)
        kind = "ivf" if len(base) * len(queries) > EXACT_PAIRS else "flat"
        return search(base, queries, k, index=kind)[1].mean(axis=1)
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + (queries is None)).fit(base)
    d, _ = nn.kneighbors(base if queries is None else queries)
    return (d[:, 1:] if queries is None else d).mean(axis=1)


def _reference_calibration(ref_vec: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Sorted mean kNN distances of reference rows to other reference rows (self excluded)."""
    k = min(k, len(ref_vec) - 1)
    return np.sort(_knn_mean_distance(ref_vec, None, k, metric))


def _atypicality(calib, ref_vec, cur_vec, k: int, metric: str):
    """(conformal p-value, mean kNN distance to the reference) of each row of `cur_vec`."""
    k = min(k, len(ref_vec) - 1)
    d = _knn_mean_distance(ref_vec, cur_vec, k, metric)
    at_least = len(calib) - np.searchsorted(calib, d, side="left")
    return (1.0 + at_least) / (1.0 + len(calib)), d
