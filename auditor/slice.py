"""Slice discovery: coherent groups of a class, in embedding space, where out-of-sample errors
concentrate, each tested against its class's error rate and described in words.

Method (error-aware clustering, after Domino, Eyuboglu et al. 2022): embeddings are normalised
and reduced by PCA once; within each class, k-means runs on the reduced vectors joined with the
row's out-of-sample loss (1 - P(true label)), weighted by `error_weight`, so clusters follow both
where rows lie and where the model fails. Each cluster of at least `min_size` rows is tested
against the error rate of the rest of its class (one-sided Fisher exact test, i.e. the
hypergeometric tail) with a Holm correction over all clusters tested; the significant ones with
an error rate at least `min_lift` times the class's are slices.

A slice is described by what sets it apart from the rest of its class: its distinguishing tokens
(mean TF-IDF in the slice minus the rest) for text, the attribute values over-represented in it
(metadata columns and derived properties), and, when `slice_prompts` is given in the context
options and the embedding's model can encode text (a CLIP model for images, the text model for
text), the prompts nearest the slice's direction (slice centroid minus class centroid).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..store import schema as S
from .base import FINDING, Auditor, AuditResult, Params, Requires, register
from .properties import context_properties, discretize
from .slice_evidence import (
    characteristic_values,
    distinguishing_tokens,
    load_prompts,
    nearest_prompts,
    text_encoder,
)


class SliceParams(Params):
    min_size: int = 20  # rows in a slice, at least
    max_clusters: int = 16  # k-means clusters per class, at most
    rows_per_cluster: int = 80  # k = class size / this (clipped to [2, max_clusters])
    error_weight: float = 1.0  # weight of the loss column against the unit-variance embedding
    n_components: int = 32  # PCA dimensions the clustering runs in
    alpha: float = 0.05  # Holm-corrected significance of a slice's excess errors
    min_lift: float = 1.5  # slice error rate / class error rate, at least
    max_tokens: int = 5  # distinguishing tokens in a description
    max_attributes: int = 3  # attribute values in a description
    max_prompts: int = 3  # nearest prompts in a description
    properties: bool = True  # describe with derived properties too (text length, colour, ...)
    # A slice is described (and, with `flag_rows`, flags rows) only when something distinguishes
    # it: a word (not a stopword) in at least `min_token_share` of its rows and
    # `min_token_ratio` times as often as in the rest of its class, or an over-represented
    # attribute value (see `characteristic_values`).
    min_token_share: float = 0.1
    min_token_ratio: float = 2.0
    # A slice is a finding about a group: its remedy (more data like it, `repair --rebalance-by
    # slice`) acts on the group, and whether one member's label is wrong is the label auditor's
    # call. So by default no row is flagged; every member carries `details.slice_id` and the
    # slice's score. True: flag the members of described slices the model gets wrong out of
    # sample (`flag_errors_only: false`: every member).
    flag_rows: bool = False
    flag_errors_only: bool = True


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1)."""
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def reduce_embeddings(
    x: np.ndarray, n_components: int = 32, seed: int = 0, fit_rows: int = 20_000
) -> np.ndarray:
    """L2-normalise and project onto the top principal components. The components come from
    the covariance of at most `fit_rows` rows (a seeded sample: the top directions of 100k
    embeddings are those of 20k), then every row is projected."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    mean = x.mean(0)
    k = int(min(n_components, x.shape[1], max(len(x) - 1, 1)))
    if k >= x.shape[1]:
        return x - mean
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), fit_rows, replace=False)] if len(x) > fit_rows else x
    pca = PCA(n_components=k, svd_solver="full").fit((sample - mean).astype(np.float64))
    return (x - mean) @ pca.components_.T.astype(np.float32)


def find_slices(
    z: np.ndarray,
    labels: np.ndarray,
    pred_probs: np.ndarray,
    min_size: int = 20,
    max_clusters: int = 16,
    rows_per_cluster: int = 80,
    error_weight: float = 1.0,
    alpha: float = 0.05,
    min_lift: float = 1.5,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Slices among labelled rows (labels >= 0) of reduced embeddings `z`.

    Returns (slices, stats): each slice has `label` (class code), `members` (positions into the
    rows), `size`, `errors`, `error_rate`, `class_error_rate`, `lift`, the held-out half's
    `held_out_size`, `held_out_error_rate` and `held_out_class_error_rate`, and the test's
    `p_value` and `p_adjusted`; `stats` holds per-class error rates and the number of clusters
    tested."""
    num_classes = pred_probs.shape[1]
    lab = labels >= 0
    pred = pred_probs.argmax(1)
    err = lab & (pred != labels)
    p_true = np.where(lab, pred_probs[np.arange(len(labels)), np.maximum(labels, 0)], 1.0)
    loss = 1.0 - p_true
    candidates = []
    class_rates = {}
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        n_c = len(rows)
        e_c = int(err[rows].sum())
        class_rates[c] = e_c / n_c if n_c else 0.0
        if n_c < 2 * min_size or e_c == 0 or e_c == n_c:
            continue
        k = int(np.clip(n_c // max(rows_per_cluster, 1), 2, max_clusters))
        fit, assign = _held_out_clusters(z[rows], error_weight * loss[rows], k, seed, seed + c)
        candidates += _tested_clusters(c, rows, assign, ~fit, err[rows], min_size)
    slices = _significant(candidates, alpha, min_lift)
    return slices, {"class_error_rates": class_rates, "clusters_tested": len(candidates)}


def _held_out_clusters(z: np.ndarray, loss: np.ndarray, k: int, seed: int, split_seed: int):
    """(fit, assign) of one class's rows: `k` centres fitted on a random half (`fit`) of the
    centred, scaled embeddings with the (weighted) loss as an extra column; each row then joins
    its nearest centre in embedding space alone."""
    from sklearn.cluster import KMeans

    zc = z - z.mean(0)
    scale = np.sqrt((zc**2).sum(1).mean()) or 1.0
    feats = np.hstack([zc / scale, loss[:, None]]).astype(np.float32)
    # Error-aware to find, error-blind and held-out to test. Centres are fitted on a random
    # half of the class with the loss column; every row then joins its nearest centre in
    # embedding space alone, and the test counts only the other half. A cluster the loss
    # column carved out of a region where errors are scattered at random dissolves back to
    # the class's error rate there; a coherent region where the model fails keeps them.
    fit = np.random.default_rng(split_seed).permutation(len(z)) % 2 == 0
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(feats[fit])
    cen = km.cluster_centers_[:, :-1]
    emb = feats[:, :-1]
    d2 = (emb**2).sum(1)[:, None] - 2 * emb @ cen.T + (cen**2).sum(1)[None, :]
    return fit, d2.argmin(1)


def _tested_clusters(c: int, rows, assign, held, err, min_size: int) -> list[dict]:
    """The clusters of class `c` (`rows`, their cluster `assign`ment and errors `err`) with at
    least `min_size` rows and one held-out row, each with its figures and the p-value of a
    one-sided Fisher exact test against its class on the held-out half."""
    from scipy.stats import hypergeom

    k = int(assign.max()) + 1  # a centre no row joined has no rows to test
    e_rows = err.astype(np.float64)
    n_c, e_c = len(rows), int(err.sum())
    sizes = np.bincount(assign, minlength=k)
    errs = np.bincount(assign, weights=e_rows, minlength=k)
    n_h, e_h = int(held.sum()), int(e_rows[held].sum())
    sizes_h = np.bincount(assign[held], minlength=k)
    errs_h = np.bincount(assign[held], weights=e_rows[held], minlength=k)
    # P(X >= errors) when the class's errors are spread at random (hypergeometric tail).
    pv = hypergeom.sf(errs_h - 1, n_h, e_h, sizes_h)
    return [
        {
            "label": c,
            "members": rows[assign == j],
            "size": int(sizes[j]),
            "errors": int(errs[j]),
            "error_rate": float(errs[j] / sizes[j]),
            "class_error_rate": e_c / n_c,
            "held_out_size": int(sizes_h[j]),
            "held_out_error_rate": float(errs_h[j] / sizes_h[j]),
            "held_out_class_error_rate": e_h / n_h if n_h else 0.0,
            "p_value": float(pv[j]),
        }
        for j in range(k)  # clusters of one class: a handful
        if sizes[j] >= min_size and sizes_h[j] > 0
    ]


def _significant(candidates: list[dict], alpha: float, min_lift: float) -> list[dict]:
    """The candidates significant after Holm's correction whose held-out error rate is at least
    `min_lift` times their class's, with `p_adjusted` and `lift`; most significant first."""
    padj = holm(np.array([cand["p_value"] for cand in candidates], dtype=np.float64))
    slices = []
    for cand, pa in zip(candidates, padj):
        rate, base = cand["held_out_error_rate"], cand["held_out_class_error_rate"]
        if pa < alpha and rate > base and rate >= min_lift * base:
            cand["p_adjusted"] = float(pa)
            cand["lift"] = cand["error_rate"] / max(cand["class_error_rate"], 1e-12)
            slices.append(cand)
    slices.sort(key=lambda s: (s["p_adjusted"], -s["error_rate"]))
    return slices


def _slice_entry(sid: str, desc: str, member_ids, s: dict, sinfo: dict) -> dict:
    """One slice as the audit result carries it (its members as row ids)."""
    return {
        "slice_id": sid,
        "description": desc,
        "members": member_ids,
        "error_rate": s["error_rate"],
        "info": sinfo,
    }


@register
class Slice(Auditor):
    """Underperforming slices: coherent groups of a class where out-of-sample errors concentrate.

    A slice is a finding about a group, not a decision about a row: it holds out of sample (the
    test runs on the half of the class the clustering did not see), and goes to the `slices`
    table (slice_id `<label>/<n>`, description, members, error rate, info with the test and the
    description's evidence: `distinguished_by`, `flags_rows`), where `repair --rebalance-by
    slice` and the report read it. Every member carries `details.slice_id` and score = 1 - the
    slice's error rate (1 for rows in no slice), so SQL over `issues` ranks them; by
    default no row is flagged (`is_issue` false), since the remedy acts on the group and a
    member's label is the label auditor's call. With `flag_rows: true`, a described slice flags
    its members the model gets wrong out of sample (`flag_errors_only: false`: every member).
    A slice is described when something distinguishes it: a word that is no stopword in at
    least `min_token_share` of its rows and `min_token_ratio` times as often as in the rest of
    its class, or an over-represented attribute value; a slice nothing describes (embeddings
    alone, or only stopwords set it apart) is listed in `info.undescribed_slices` and never
    flags rows."""

    name = "slice"
    kind = FINDING
    description = "groups of a class in embedding space where errors concentrate"
    requires = frozenset({Requires.LABELS, Requires.EMBEDDINGS, Requires.PRED_PROBS})
    Params = SliceParams

    def audit(self, ctx) -> AuditResult:
        p = self.params
        labels = ctx.labels
        probs = np.asarray(ctx.pred_probs, dtype=np.float64)
        found, stats = self._find(ctx, labels, probs)
        class_names = [str(c) for c in ctx.classes]
        notes = []
        slice_idx, score, is_issue, out_slices, listed = self._entries(ctx, found, probs, notes)
        ids = np.array([sl["slice_id"] for sl in out_slices] + [None], dtype=object)
        rows = pl.DataFrame(
            {
                S.ROW_ID: ctx.row_ids,
                "is_issue": is_issue,
                "score": np.clip(score, 0.0, 1.0),
                "slice_id": pl.Series(ids[slice_idx].tolist(), dtype=pl.Utf8),
            }
        )
        info = {
            "num_slices": len(out_slices),
            "slices": listed,
            "class_error_rates": {class_names[c]: r for c, r in stats["class_error_rates"].items()},
            "clusters_tested": stats["clusters_tested"],
            "rows_in_slices": int((slice_idx >= 0).sum()),
            "rows_flagged": int(is_issue.sum()),
            "flag_rows": p.flag_rows,
            "undescribed_slices": [x["slice_id"] for x in listed if not x["distinguished_by"]],
            "notes": notes,
        }
        # the dataset score: the share of labelled rows outside any slice (1: no slice)
        n_lab = max(int((labels >= 0).sum()), 1)
        in_any = int(((slice_idx >= 0) & (labels >= 0)).sum())
        return AuditResult(rows, score=1.0 - in_any / n_lab, info=info, slices=out_slices)

    def _entries(self, ctx, found: list[dict], probs, notes: list) -> tuple:
        """Each slice described (its evidence, a description, whether it flags rows): per row
        the index of its slice (-1: none), its score and flag; the slices' entries for the
        `slices` table and for `info` (in order). Notes on the prompts go to `notes`."""
        p = self.params
        labels = ctx.labels
        class_names = [str(c) for c in ctx.classes]
        groups = self._attribute_groups(ctx) if found else []
        prompts, encode = self._prompts(ctx, notes) if found else (None, None)
        prompt_vecs = encode(prompts) if encode is not None else None
        tfidf: dict[int, tuple] = {}  # per class, computed once

        n = len(labels)
        slice_idx = np.full(n, -1, dtype=np.int64)
        score = np.ones(n)
        out_slices, listed = [], []
        flag = np.zeros(n, dtype=bool)
        wrong = (labels >= 0) & (probs.argmax(1) != labels)
        counters: dict[int, int] = {}
        for s in found:
            c = s["label"]
            counters[c] = counters.get(c, 0) + 1
            sid = f"{class_names[c]}/{counters[c]}"
            members = s["members"]
            class_rows = np.flatnonzero(labels == c)
            in_slice = np.isin(class_rows, members)
            evidence = self._evidence(
                ctx, c, members, class_rows, in_slice, groups, (prompts, prompt_vecs), tfidf
            )
            described = self._distinguished_by(evidence)
            desc = self._describe(class_names[c], s, evidence)
            # validated but described by nothing that tells it apart: a finding to report, not
            # a group of rows a user can act on (its rows are not flagged)
            evidence["distinguished_by"] = described
            evidence["flags_rows"] = bool(described) and p.flag_rows
            slice_idx[members] = len(out_slices)
            if described and p.flag_rows:
                flag[members] = wrong[members] if p.flag_errors_only else True
            score[members] = 1.0 - s["error_rate"]
            sinfo = {
                "label": class_names[c],
                **{k: v for k, v in s.items() if k not in ("label", "members")},
                **evidence,
            }
            out_slices.append(_slice_entry(sid, desc, ctx.row_ids[members], s, sinfo))
            listed.append({"slice_id": sid, "description": desc, **sinfo})
        return slice_idx, score, flag, out_slices, listed

    def _find(self, ctx, labels, probs) -> tuple:
        """`find_slices` on the reduced embeddings, with this auditor's parameters."""
        p = self.params
        z = reduce_embeddings(ctx.embeddings, p.n_components, ctx.seed)
        return find_slices(
            z,
            labels,
            probs,
            min_size=p.min_size,
            max_clusters=p.max_clusters,
            rows_per_cluster=p.rows_per_cluster,
            error_weight=p.error_weight,
            alpha=p.alpha,
            min_lift=p.min_lift,
            seed=ctx.seed,
        )

    def _evidence(self, ctx, c, members, class_rows, in_slice, groups, prompted, tfidf) -> dict:
        """What tells a slice of class `c` apart from the class's other rows: its distinguishing
        tokens (text), characteristic attribute values, and nearest prompts (when given)."""
        p = self.params
        prompts, prompt_vecs = prompted
        rest = class_rows[~in_slice]
        evidence: dict = {}
        if ctx.texts is not None:
            if c not in tfidf:
                tfidf[c] = self._tfidf(ctx.texts[class_rows])
            X, vocab = tfidf[c]
            if X is not None:
                evidence["tokens"] = distinguishing_tokens(X, vocab, in_slice, p.max_tokens)
        if groups:
            evidence["attributes"] = characteristic_values(groups, members, rest, p.max_attributes)
        if prompt_vecs is not None:
            emb = ctx.embeddings
            evidence["prompts"] = nearest_prompts(
                emb[members], emb[class_rows], prompt_vecs, prompts, p.max_prompts
            )
        return evidence

    def _distinguished_by(self, evidence: dict) -> list[str]:
        """The tokens frequent enough in the slice, and more than in the rest of its class, and
        the characteristic attribute values (`attribute=value`)."""
        p = self.params
        return [
            t["token"]
            for t in evidence.get("tokens", [])
            if t["share"] >= p.min_token_share and t["share"] >= p.min_token_ratio * t["share_rest"]
        ] + [f"{a['attribute']}={a['value']}" for a in evidence.get("attributes", [])]

    @staticmethod
    def _tfidf(texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(
            token_pattern=r"(?u)\b\w+\b", min_df=min(3, len(texts)), sublinear_tf=True
        )
        try:
            return vec.fit_transform(texts).tocsr(), vec.get_feature_names_out()
        except ValueError:  # empty vocabulary
            return None, None

    def _attribute_groups(self, ctx) -> list:
        # (values, numeric): metadata columns by their data-definition type (identifier and
        # text columns name no population), then the computed properties by their dtype
        cols = [
            (ctx.frame[col].alias(col), ctx.column_type(col) == "numeric")
            for col in ctx.metadata_columns
            if ctx.column_type(col) not in ("identifier", "text")
        ]
        if self.params.properties:
            props = context_properties(ctx)
            cols += [
                (props[c].alias(c if c not in ctx.metadata_columns else f"property:{c}"), None)
                for c in props.columns
            ]
        out = []
        for s, numeric in cols:
            g = discretize(s, name=s.name, numeric=numeric)
            if g is not None:
                out.append(g)
        return out

    @staticmethod
    def _prompts(ctx, notes: list) -> tuple[list[str] | None, object]:
        spec = ctx.options.get("slice_prompts")
        if not spec:
            return None, None
        prompts = load_prompts(spec)
        model = next(
            (e["model"] for e in ctx.store.embedding_keys() if e["key"] == ctx.embedding_key), None
        )
        try:
            encode = text_encoder(ctx.options.get("slice_prompt_model") or model)
            dim = ctx.embeddings.shape[1]
            probe = encode(prompts[:1])
            if probe.shape[1] != dim:
                raise ValueError(f"prompt vectors have {probe.shape[1]} dimensions, not {dim}")
        except Exception as exc:  # noqa: BLE001 - descriptions are optional; say why they are off
            notes.append(f"prompt descriptions skipped: no text encoder for {model!r} ({exc})")
            return None, None
        return prompts, encode

    @staticmethod
    def _describe(label: str, s: dict, ev: dict) -> str:
        head = f"label {label}: {s['error_rate']:.0%} errors vs {s['class_error_rate']:.0%}"
        parts = [f"{head} in the class ({s['size']} rows)"]
        if ev.get("tokens"):
            parts.append(
                "tokens: "
                + ", ".join(
                    f"{t['token']} ({t['share']:.0%} vs {t['share_rest']:.0%})"
                    for t in ev["tokens"]
                )
            )
        if ev.get("attributes"):
            parts.append(
                "attributes: "
                + ", ".join(
                    f"{a['attribute']}={a['value']} ({a['share']:.0%} vs {a['share_rest']:.0%})"
                    for a in ev["attributes"]
                )
            )
        if ev.get("prompts"):
            parts.append("nearest prompts: " + ", ".join(repr(q["prompt"]) for q in ev["prompts"]))
        return "; ".join(parts)
